"""Reading checkpoints and checking them against a model's keys.

A state_dict here is a mapping from key (PyTorch's names, e.g.
``"layer1.0.conv1.weight"``) to an array: a NumPy array, a CuPy array, a torch
tensor, or anything with ``__array__`` or ``__dlpack__``. Nothing is ever
unpickled: ``.safetensors`` and ``.npz`` (``allow_pickle=False``) are read
directly, and ``.pth`` / ``.pt`` only through ``torch.load(weights_only=True)``
when torch is installed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from .._checks import array_kind

#: Keys of BatchNorm's training counter: not weights, ignored everywhere.
IGNORED_SUFFIXES = ("num_batches_tracked",)


class StateDictError(ValueError):
    """A state_dict that does not fit the model: missing or unexpected keys,
    or arrays of the wrong shape (every problem listed in one message).

    Attributes ``missing``, ``unexpected`` and ``mismatched`` hold the lists.
    """

    def __init__(self, model, missing, unexpected, mismatched):
        self.model = model
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        super().__init__(f"state_dict does not fit {model}: " + self._parts(None))

    def _parts(self, limit):
        parts = []
        for title, items in (
            ("missing keys", self.missing),
            ("unexpected keys", self.unexpected),
            ("shape mismatches", self.mismatched),
        ):
            if items:
                shown = items if limit is None else items[:limit]
                more = f", ... ({len(items) - len(shown)} more)" if len(shown) < len(items) else ""
                parts.append(f"{len(items)} {title}: {', '.join(shown)}{more}")
        return "; ".join(parts)

    def summary(self, limit: int = 3) -> str:
        """One short line: counts and the first ``limit`` items of each list."""
        return self._parts(limit)


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Read a checkpoint file into a dict of NumPy arrays.

    Parameters
    ----------
    path : str or os.PathLike; ``.safetensors``, ``.npz``, or (torch installed)
        ``.pth`` / ``.pt``. A torch checkpoint that wraps its weights in
        ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.

    Returns
    -------
    dict key -> numpy.ndarray (float arrays keep their dtype; bfloat16 and
    float16 tensors from torch become float32).

    Raises
    ------
    FileNotFoundError, ValueError (unknown extension or unreadable file),
    ImportError (.pth without torch).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"r2n.load_state_dict: no such file: {path!r}")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".safetensors":
            return _load_safetensors(path)
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {k: archive[k] for k in archive.files}
        if ext in (".pth", ".pt"):
            try:
                import torch
            except ImportError as e:
                raise ImportError(
                    f"r2n.load_state_dict: reading {ext} files needs torch; convert the "
                    f"checkpoint to .safetensors or .npz, or install torch"
                ) from e
            obj = torch.load(path, map_location="cpu", weights_only=True)
            for wrapper in ("state_dict", "model"):
                if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
                    obj = obj[wrapper]
            if not isinstance(obj, Mapping):
                raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state_dict")
            return {str(k): _torch_to_numpy(v) for k, v in obj.items() if hasattr(v, "shape")}
    except (ImportError, FileNotFoundError):
        raise
    except Exception as e:  # a corrupt file: say which and why, in one line
        raise ValueError(f"r2n.load_state_dict: cannot read {path!r}: {e}") from e
    raise ValueError(
        f"r2n.load_state_dict: unknown checkpoint format {ext!r} ({path!r}); "
        f"expected .safetensors, .npz, .pth or .pt"
    )


def _load_safetensors(path):
    """NumPy's loader; for dtypes NumPy lacks (bfloat16) torch's, when installed."""
    from safetensors.numpy import load_file

    try:
        arrays = dict(load_file(path))
    except TypeError:  # e.g. "data type 'bfloat16' not understood"
        try:
            from safetensors.torch import load_file as load_torch
        except ImportError:
            raise
        return {k: _torch_to_numpy(v) for k, v in load_torch(path).items()}
    # With ml_dtypes installed (onnx, jax, tensorflow bring it) NumPy's loader
    # returns bfloat16 arrays of ml_dtypes' type: float32, as torch's path gives.
    return {
        k: a.astype(np.float32) if a.dtype.name == "bfloat16" else a for k, a in arrays.items()
    }


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy()


def to_numpy(value, key: str) -> np.ndarray:
    """One state_dict entry as a host NumPy array (a copy only when needed)."""
    if isinstance(value, np.ndarray):
        return value
    if array_kind(value) == "cupy":
        return value.get()
    if type(value).__module__.partition(".")[0] == "torch":
        return _torch_to_numpy(value)
    if hasattr(value, "__array__"):
        return np.asarray(value)
    if hasattr(value, "__dlpack__"):
        return np.from_dlpack(value)
    raise TypeError(
        f"state_dict[{key!r}] must be an array (NumPy, or with __array__ or __dlpack__), "
        f"got {type(value).__name__}"
    )


def check_state_dict(state_dict, expected: Mapping[str, tuple], model: str) -> dict:
    """Check keys and shapes; return {key: numpy array} for the expected keys.

    Parameters
    ----------
    state_dict : mapping key -> array
    expected : key -> shape, the model's complete list
    model : the model's name, for the message

    Raises
    ------
    StateDictError listing every missing key, unexpected key and shape mismatch.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"r2n.models.create: state_dict must be a mapping of key -> array, "
            f"got {type(state_dict).__name__}"
        )
    given = {k: v for k, v in state_dict.items() if not str(k).endswith(IGNORED_SUFFIXES)}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    arrays, mismatched = {}, []
    for key, shape in expected.items():
        if key not in given:
            continue
        a = to_numpy(given[key], key)
        if tuple(a.shape) != tuple(shape):
            mismatched.append(f"{key}: checkpoint {tuple(a.shape)}, model {tuple(shape)}")
        elif not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            mismatched.append(f"{key}: dtype {a.dtype} is not a number type")
        else:
            arrays[key] = a
    if missing or unexpected or mismatched:
        raise StateDictError(model, missing, unexpected, mismatched)
    return arrays
