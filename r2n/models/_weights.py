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
import re
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

    def __reduce__(self):
        # Pickled with its lists (Exception's default would pass only the message
        # to __init__): a Dask worker's error reaches the client whole.
        return type(self), (self.model, self.missing, self.unexpected, self.mismatched)

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
        ``.pth`` / ``.pt`` / ``.bin`` (``torch.save`` files, e.g. the Hugging
        Face Hub's ``pytorch_model.bin``). A torch checkpoint that wraps its
        weights in ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.

    Returns
    -------
    dict key -> numpy.ndarray (float arrays keep their dtype; bfloat16 and
    float16 tensors from torch become float32).

    Raises
    ------
    FileNotFoundError; ValueError, in one line naming the file, for an unknown
    extension, an unreadable file, an ``.npz`` member that is not a numeric
    array (named by its key), or a torch file that needs pickled code to load
    (which r2n never runs); ImportError (a torch file without torch).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"r2n.load_state_dict: no such file: {path!r}")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".safetensors":
            return _load_safetensors(path)
        if ext == ".npz":
            return _load_npz(path)
        if ext in TORCH_EXTENSIONS:
            return _load_torch(path, ext)
    except (ImportError, FileNotFoundError, _RefusedError):
        raise
    except Exception as e:  # a corrupt file: say which and why, in one line
        why = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"r2n.load_state_dict: cannot read {path!r}: {why}") from e
    raise ValueError(
        f"r2n.load_state_dict: unknown checkpoint format {ext!r} ({path!r}); "
        f"expected .safetensors, .npz, {', '.join(TORCH_EXTENSIONS[:-1])} or "
        f"{TORCH_EXTENSIONS[-1]}"
    )


#: Extensions read with torch.load(weights_only=True).
TORCH_EXTENSIONS = (".pth", ".pt", ".bin")

#: dtype kinds an .npz member may have: bool, ints, floats, complex (numbers).
_NUMERIC_KINDS = "biufc"


class _RefusedError(ValueError):
    """A file r2n refuses on purpose (its message is final, one line)."""


def _load_npz(path):
    """Every member as a numeric array; object (pickled), string or structured
    members are refused by key, before any is used."""
    out = {}
    with np.load(path, allow_pickle=False) as archive:
        for key in archive.files:
            try:
                a = archive[key]
            except ValueError as e:  # "Object arrays cannot be loaded when allow_pickle=False"
                raise _RefusedError(
                    f"r2n.load_state_dict: {path!r}: member {key!r} is not a numeric array "
                    f"({' '.join(str(e).split())}); a state_dict holds arrays of numbers only"
                ) from None
            if a.dtype.kind not in _NUMERIC_KINDS:
                raise _RefusedError(
                    f"r2n.load_state_dict: {path!r}: member {key!r} has dtype {a.dtype}, "
                    f"not a number type; a state_dict holds arrays of numbers only"
                )
            out[key] = a
    return out


def _load_torch(path, ext):
    """torch.load(weights_only=True): tensors and plain containers only."""
    import pickle

    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"r2n.load_state_dict: reading {ext} files needs torch; convert the "
            f"checkpoint to .safetensors or .npz, or install torch"
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message spans lines and advises weights_only=False, which
        # would run the file's code; say what the file needs, in one line.
        needs = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" ({needs.group(1)})" if needs else ""
        raise _RefusedError(
            f"r2n.load_state_dict: {path!r} needs pickled code to load{what}, which r2n "
            f"never runs; save only the tensors (torch.save(model.state_dict(), path)) "
            f"or convert the file to .safetensors"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise _RefusedError(
            f"r2n.load_state_dict: {path!r} holds a {type(obj).__name__}, not a state_dict"
        )
    return {str(k): _torch_to_numpy(v) for k, v in obj.items() if hasattr(v, "shape")}


def _load_safetensors(path):
    """NumPy's loader; for dtypes NumPy lacks (bfloat16) torch's, when installed.

    Newer safetensors return bfloat16 as ml_dtypes' type (NumPy kind "V", not
    a float to NumPy); those become float32, as torch's bfloat16 does.
    """
    from safetensors.numpy import load_file

    try:
        arrays = dict(load_file(path))
    except TypeError:  # e.g. "data type 'bfloat16' not understood"
        try:
            from safetensors.torch import load_file as load_torch
        except ImportError:
            raise
        return {k: _torch_to_numpy(v) for k, v in load_torch(path).items()}
    return {k: _as_standard_dtype(a) for k, a in arrays.items()}


def _as_standard_dtype(a: np.ndarray) -> np.ndarray:
    """ml_dtypes' floats (bfloat16, float8_*) as float32; others unchanged."""
    if a.dtype.kind == "V" and a.dtype.names is None and "float" in a.dtype.name:
        return a.astype(np.float32)
    return a


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

    The returned arrays are the model's own copies: a model never shares
    memory with the caller's arrays (NumPy arrays, or torch tensors whose
    ``.numpy()`` would be a view), so editing them after ``create`` cannot
    change its logits, on any backend, however late it is prepared.

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
            arrays[key] = np.array(a, order="C")  # a copy, never the caller's memory
    if missing or unexpected or mismatched:
        raise StateDictError(model, missing, unexpected, mismatched)
    return arrays
