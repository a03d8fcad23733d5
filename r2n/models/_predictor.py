"""A picklable classifier: model name, weights path and options in, top-k out.

:class:`Predictor` holds only what it takes to build a model (the name or
Hub checkpoint directory, the weights path, the options), so it pickles in a
few hundred bytes and can be shipped to other processes (Dask workers, Ray
actors, ``multiprocessing``). Each process builds and prepares the model on
its first call and keeps it in a per-process cache, keyed on everything that
decides the model's contents (name, weights path and the file's size and
modification time, or the directory's files', backend, dtype, number of
classes, seed): later calls and later pickled copies of an equal Predictor
reuse it, and a rewritten weights file is read again.

``r2n classify`` runs on a Predictor, in its own process or (``--dask``) on
a cluster through :func:`r2n.models.classify_on_dask`. Images are decoded and
preprocessed by ``r2n.models._preprocess`` (timm's eval transform, with the
model's config: a tag's or a directory's); probabilities are the softmax of
the logits in float64, and the top-k classes are sorted by probability
(ties: the lower class index first).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from .. import _backends
from . import _hub, _preprocess
from ._weights import load_state_dict
from ._zoo import arch_of, create, directory_of, hub_checkpoint, num_classes_in

# Per-process cache: Predictor._identity() -> (weights file stamp, prepared model,
# the lock serialising its calls).
_MODELS: dict[tuple, tuple] = {}
_MODELS_LOCK = threading.Lock()


class Prediction(NamedTuple):
    """The top-k classes of one image.

    Attributes
    ----------
    path : the image as given
    classes : (k,) int64 class indices, most probable first (None on error)
    probabilities : (k,) float64 softmax probabilities of those classes
    error : None, or why the image could not be classified (missing file,
        undecodable image); the other images of its batch are unaffected
    """

    path: str
    classes: np.ndarray | None
    probabilities: np.ndarray | None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Predictor:
    """Top-k classification with an r2n model, built lazily once per process.

    Parameters
    ----------
    name : one of :func:`r2n.models.list_models`, timm's tagged name of one
        (``"tresnet_m.miil_in1k_448"``: the tag's input size and classes), or a
        Hub checkpoint directory (a path, ``pathlib.Path`` or
        ``"local-dir:PATH"``; config.json gives the architecture, classes,
        preprocessing and class names, and the directory holds the weights),
        readable where the Predictor runs; stored as ``"local-dir:PATH"``,
        absolute when the directory exists here.
    weights : path of a checkpoint :func:`r2n.load_state_dict` reads, readable
        where the Predictor runs (on a cluster: a shared filesystem); a path
        that exists here is made absolute. None: a directory's own weights, or
        for a name deterministic random weights (``seed``), for demos and tests.
    backend : None (host: "cpu", or "reference" without Numba), "reference",
        "cpu" or "gpu" (images are moved to the GPU, results come back)
    batch_size : images per model call
    threads : CPU kernel threads per call (``r2n.set_num_threads``); None keeps
        the calling thread's setting (``classify_on_dask`` then picks one per
        worker so that the workers of a machine share its cores)
    topk : classes returned per image (at most num_classes)
    num_classes : None: from the checkpoint's classifier (a directory's
        config.json; without weights the tag's, 1000 for most)
    dtype : "float32" or "float64"
    seed : random weights' seed when ``weights`` is None
    max_pixels : images with more pixels are refused before they are decoded
        (an error in their :class:`Prediction`)

    Examples
    --------
    >>> predictor = Predictor("res2net50_26w_4s", "w.safetensors", batch_size=16)
    >>> classes, probabilities = predictor(["a.jpg", "b.jpg"])   # (2, 5) each
    """

    name: str
    weights: str | None
    backend: str | None = None
    batch_size: int = 32
    threads: int | None = None
    topk: int = 5
    num_classes: int | None = None
    dtype: str = "float32"
    seed: int | None = None
    max_pixels: int = _preprocess.DEFAULT_MAX_PIXELS
    _params: tuple = ()  # scaled-down variants for tests: create(..., _params=dict(...))

    def __post_init__(self):
        directory = directory_of(self.name)
        if directory is None:
            arch_of(self.name)  # an unknown name or tag: ValueError now, not on a worker
        else:
            if self.weights is not None:
                raise ValueError(
                    f"r2n.models.Predictor: {directory!r} is a checkpoint directory, which "
                    f"holds its own weights; pass weights=None"
                )
            if os.path.isdir(directory):
                directory = os.path.abspath(directory)  # workers may start elsewhere
            # The prefix keeps it a directory on a machine where it does not exist.
            object.__setattr__(self, "name", _hub.LOCAL_DIR_PREFIX + directory)
        if self.weights is not None:
            weights = os.fspath(self.weights)
            if os.path.exists(weights):
                weights = os.path.abspath(weights)  # workers may start in another directory
            object.__setattr__(self, "weights", weights)
        if self.backend is not None and self.backend not in _backends.BACKENDS:
            raise ValueError(
                f"r2n.models.Predictor: backend must be None or one of "
                f"{', '.join(map(repr, _backends.BACKENDS))}, got {self.backend!r}"
            )
        for field, minimum in (("batch_size", 1), ("topk", 1), ("threads", 1), ("max_pixels", 1)):
            value = getattr(self, field)
            if field == "threads" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"r2n.models.Predictor: {field} must be an int >= {minimum}, got {value!r}"
                )
        if isinstance(self._params, Mapping):
            object.__setattr__(self, "_params", tuple(sorted(self._params.items())))

    # ------------------------------------------------------------------ #
    # The model, once per process
    # ------------------------------------------------------------------ #

    def _identity(self) -> tuple:
        """What decides the prepared model, besides the weights file's contents."""
        return (
            self.name,
            self.weights,
            self.backend,
            self.num_classes,
            self.dtype,
            self.seed,
            self._params,
        )

    def model(self):
        """This process's prepared model (built on the first call)."""
        return self._cached()[0]

    def _cached(self):
        identity, stamp = self._identity(), _file_stamp(self._directory() or self.weights)
        with _MODELS_LOCK:  # one build per process, even with several task threads
            entry = _MODELS.get(identity)
            if entry is None or entry[0] != stamp:  # new, or the file was rewritten
                entry = _MODELS[identity] = (stamp, self._build(), threading.Lock())
        return entry[1:]

    def _build(self):
        state, num_classes = None, self.num_classes
        if self.weights is not None:
            state = load_state_dict(self.weights)
            if num_classes is None:
                num_classes = num_classes_in(self.name, state)
        return create(
            self.name,
            state,
            num_classes=num_classes,  # None: the directory's, the tag's or 1000
            backend=self.backend,
            dtype=self.dtype,
            seed=self.seed,
            _params=dict(self._params) or None,
        )

    def _directory(self) -> str | None:
        return _hub.hub_dir_of(self.name)

    def labels(self) -> list[str] | None:
        """Class names by index: a Hub directory's ``label_names``, else the
        ImageNet-1k names when the model has 1000 classes, else None. Builds
        the model (in this process) when it is not built yet."""
        directory = self._directory()
        names = hub_checkpoint(directory).label_names if directory else None
        if names is None and self.model().num_classes == 1000:
            names = _preprocess.class_names()
        return names

    def release(self) -> None:
        """Drop this process's cached model (the next call builds it again)."""
        with _MODELS_LOCK:
            _MODELS.pop(self._identity(), None)

    # ------------------------------------------------------------------ #
    # Classifying
    # ------------------------------------------------------------------ #

    def load(self, image) -> np.ndarray:
        """One image (a path or a PIL image) -> (3, S, S) float32, timm's eval
        transform with the model's config (building the model if needed)."""
        return self._load(image, self.model().preprocess)

    def _load(self, image, config) -> np.ndarray:
        if not hasattr(image, "convert"):  # a path, not a PIL image
            image = _preprocess.load_image(image, self.max_pixels)
        return _preprocess.preprocess(image, config)

    def __call__(self, images) -> tuple[np.ndarray, np.ndarray]:
        """Top-k classes of a batch of images.

        Parameters
        ----------
        images : a sequence of paths or PIL images, or an (N, 3, S, S) array
            already preprocessed (NumPy, or anything the model takes)

        Returns
        -------
        (classes, probabilities) : (N, k) int64 and (N, k) float64, k = min(topk,
        num_classes), most probable first; computed ``batch_size`` images per
        model call.
        """
        if isinstance(images, (str, os.PathLike)):
            raise TypeError("r2n.models.Predictor: pass a sequence of images, not one path")
        model, lock = self._cached()
        n = len(images)
        k = min(self.topk, model.num_classes)
        classes = np.empty((n, k), np.int64)
        probabilities = np.empty((n, k), np.float64)
        for start in range(0, n, self.batch_size):
            chunk = images[start : start + self.batch_size]
            if not hasattr(chunk, "shape"):
                chunk = np.stack([self._load(image, model.preprocess) for image in chunk])
            with lock:  # a model's buffers serve one call at a time
                logits = self._run(model, chunk)
            c, p = top_k(logits, k)
            classes[start : start + len(c)] = c
            probabilities[start : start + len(c)] = p
        return classes, probabilities

    def _run(self, model, x):
        """Logits as float64 NumPy, with this Predictor's device and threads."""
        if self.backend == "gpu":
            x = _backends.as_kind(x, "cupy")
        # Threads are the cpu backend's (Numba's): leave them alone where it is absent.
        host_threads = self.backend != "gpu" and _backends.implements("cpu", "conv2d")
        if self.threads is None or not host_threads:
            logits = model(x)
        else:
            # r2n.set_num_threads is Numba's, set here directly: this package
            # reaches backends only through r2n._backends, never imports upward.
            import numba

            previous = numba.get_num_threads()
            numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
            try:
                logits = model(x)
            finally:
                numba.set_num_threads(previous)
        if hasattr(logits, "get"):  # CuPy
            logits = logits.get()
        return np.asarray(logits, np.float64)

    def predict_paths(self, paths: Sequence) -> list[Prediction]:
        """One :class:`Prediction` per path, in order; an image that cannot be
        read or decoded gets its ``error`` set and the others still run."""
        config = self.model().preprocess
        images, good = [], []
        results: list[Prediction | None] = [None] * len(paths)
        for i, path in enumerate(paths):
            try:
                images.append(self._load(path, config))
                good.append(i)
            except (OSError, _preprocess.ImageError) as e:  # OSError: e.g. no permission
                results[i] = Prediction(os.fspath(path), None, None, str(e))
        if images:
            classes, probabilities = self(np.stack(images))
            for row, i in enumerate(good):
                results[i] = Prediction(os.fspath(paths[i]), classes[row], probabilities[row])
        return results

    def predict_batch(self, batch: Mapping) -> dict:
        """For table-shaped batches (Ray Data ``map_batches``, pandas): a
        ``"path"`` column in; ``"path"``, ``"classes"`` (N, k), ``"probabilities"``
        (N, k) and ``"error"`` ("" when none; classes -1, probabilities NaN) out."""
        paths = [os.fspath(p) for p in batch["path"]]
        k = min(self.topk, self.model().num_classes)
        classes = np.full((len(paths), k), -1, np.int64)
        probabilities = np.full((len(paths), k), np.nan)
        errors = []
        for i, p in enumerate(self.predict_paths(paths)):
            if p.error is None:
                classes[i], probabilities[i] = p.classes, p.probabilities
            errors.append(p.error or "")
        return {
            "path": np.array(paths, dtype=object),
            "classes": classes,
            "probabilities": probabilities,
            "error": np.array(errors, dtype=object),
        }


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax (float64) of (N, num_classes) logits and its k largest entries per row.

    Returns (classes (N, k) int64, probabilities (N, k) float64), most probable
    first; equal probabilities keep the lower class index first.
    """
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    classes = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return classes.astype(np.int64), np.take_along_axis(p, classes, axis=1)


def _file_stamp(path):
    """Size and modification time of a weights file (of each file, for a folder),
    so that a rewritten checkpoint is never served from the cache."""
    if path is None:
        return None
    try:
        if os.path.isdir(path):
            return tuple(
                sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path))
            )
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns)
    except OSError:
        return None  # load_state_dict reports the missing file
