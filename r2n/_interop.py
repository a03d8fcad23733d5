"""DLPack at the public boundary: any array with ``__dlpack__`` in, the caller's kind out.

r2n computes on NumPy arrays (host backends) and CuPy arrays (the GPU backend).
The public ops and models also take every other array that implements the
DLPack protocol (``__dlpack__`` and ``__dlpack_device__``): PyTorch tensors on
the CPU or a CUDA device, JAX arrays, or any object with those two methods.
:func:`accepts_dlpack` wraps a public function so that

1. each argument that is neither NumPy nor CuPy but has ``__dlpack__`` (also
   inside lists, tuples and dataclass instances such as ``FoldedConv`` and
   ``Bottle2neckParams``) is imported
   without a copy, by ``numpy.from_dlpack`` when ``__dlpack_device__()`` says
   host memory (CPU, CUDA-pinned) and by ``cupy.from_dlpack`` when it says
   CUDA device memory (CuPy is imported only then, and the call runs with that
   array's GPU as CuPy's current device). Strides come along, so transposed
   and other non-contiguous views need no copy either; the ops make their own
   contiguous copies where their kernels need them, as for NumPy input;
2. the wrapped function runs on the imported arrays and applies its own
   checks (shapes, dtypes: a float16 or integer tensor is a TypeError naming
   the argument, its type and dtype);
3. the result goes back to the kind of the *first* array argument (x for the
   ops, conv_weight for ``fold_batch_norm``): through
   ``type(x).__array_namespace__().from_dlpack`` for array-API arrays (JAX),
   ``torch.from_dlpack`` for PyTorch tensors (found in ``sys.modules``: this
   module never imports a framework), and unchanged (NumPy or CuPy) for any
   other DLPack object. A result on the host is shared with the returned
   tensor, not copied; a CUDA result stays on its GPU.

Streams, as the DLPack protocol says: ``cupy.from_dlpack`` passes CuPy's
current stream to the producer's ``__dlpack__``, and the producer (PyTorch
does) makes that stream wait for the work it has queued on the tensor, so r2n
reads a CUDA tensor written on PyTorch's current stream only once it is ready.
``torch.from_dlpack`` does the same in the other direction: PyTorch's current
stream waits for r2n's kernels before it reads the result. A PyTorch user on
one stream needs no ``synchronize``.

Arguments that are NumPy or CuPy arrays (or not arrays) pass through unchanged,
and a call without any other array costs a type check per argument.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable

import numpy as np

from . import _checks

# DLPack device types (dlpack.h, DLDeviceType) r2n can compute on.
_HOST_DEVICES = {1: "cpu", 3: "cuda pinned host"}
_CUDA_DEVICES = {2: "cuda", 13: "cuda managed"}
_DEVICE_NAMES = {4: "opencl", 7: "vulkan", 8: "metal", 10: "rocm", 11: "rocm host", 14: "oneapi"}
_DEVICE_NAMES.update(_HOST_DEVICES)
_DEVICE_NAMES.update(_CUDA_DEVICES)


def _is_record(value) -> bool:
    """A dataclass instance (``r2n.FoldedConv``, ``r2n.Bottle2neckParams``): its
    fields are searched for arrays and it is rebuilt with the imported ones.
    Recognised by shape, not by class, so that r2n.params (whose
    ``FoldedConv.from_conv_bn`` calls the wrapped ``fold_batch_norm``) can sit
    above this module without an import cycle."""
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def is_foreign(a) -> bool:
    """True for an array r2n imports through DLPack: it has ``__dlpack__`` but is
    neither a NumPy nor a CuPy array (nor a NumPy scalar)."""
    return (
        type(a) is not np.ndarray
        and hasattr(a, "__dlpack__")
        and not isinstance(a, np.generic)
        and _checks.array_kind(a) is None
    )


def _holds_foreign(values) -> bool:
    """Whether any value (or any array inside a list, tuple or record, see
    :func:`_is_record`) is a foreign DLPack array. The fast path: NumPy arrays,
    numbers and strings cost one type check each."""
    for v in values:
        t = type(v)
        if t is np.ndarray or v is None or t in (int, float, str, bool):
            continue
        if isinstance(v, (list, tuple)):
            if _holds_foreign(v):
                return True
        elif _is_record(v):
            if _holds_foreign(vars(v).values()):
                return True
        elif is_foreign(v):
            return True
    return False


def describe(a) -> str:
    """``a``'s type, dtype and device for messages, e.g. "torch.Tensor of dtype
    torch.float16 on cuda:0"."""
    text = _checks.type_name(a)
    dtype = getattr(a, "dtype", None)
    if dtype is not None:
        text += f" of dtype {dtype}"
    device = getattr(a, "device", None)
    if device is None or callable(device):
        try:
            kind, index = a.__dlpack_device__()
            device = f"{_DEVICE_NAMES.get(int(kind), f'DLPack device type {int(kind)}')}:{index}"
        except Exception:  # noqa: BLE001 - only for a message
            device = None
    return text if device is None else f"{text} on {device}"


def import_array(a, where: str, name: str):
    """A NumPy (host memory) or CuPy (CUDA memory) view of the DLPack array ``a``.

    Parameters
    ----------
    a : an object with ``__dlpack__`` and ``__dlpack_device__``
    where, name : the function (e.g. "r2n.conv2d") and argument, for messages

    Returns
    -------
    (array, cuda_device) : the imported array, and the CUDA device index for
    CuPy arrays (None for NumPy).

    Raises
    ------
    TypeError when the device is neither host nor CUDA memory, the producer
    refuses to export (e.g. a torch tensor that requires grad), or the dtype
    cannot be imported (e.g. bfloat16).
    """
    try:
        device_type, device_index = (int(v) for v in a.__dlpack_device__())
    except Exception as e:
        raise TypeError(
            f"{where}: {name} is a {describe(a)} with __dlpack__ but no usable "
            f"__dlpack_device__() ({e})"
        ) from e
    if device_type not in _HOST_DEVICES and device_type not in _CUDA_DEVICES:
        raise TypeError(
            f"{where}: {name} is a {describe(a)}; r2n computes on host (NumPy) or CUDA "
            f"(CuPy) memory, move it there first"
        )
    try:
        if device_type in _HOST_DEVICES:
            return np.from_dlpack(a), None
        import cupy  # only now: a CUDA array arrived, so the caller has a GPU stack

        with cupy.cuda.Device(device_index):  # its stream is the one the producer waits on
            return cupy.from_dlpack(a), device_index
    except (BufferError, RuntimeError, TypeError, ValueError) as e:
        raise TypeError(
            f"{where}: {name} is a {describe(a)}, which cannot be imported through DLPack: {e}"
        ) from e


def exporter(a) -> Callable | None:
    """The function that turns r2n's NumPy/CuPy result into ``a``'s kind, or
    None to return NumPy/CuPy as they are."""
    namespace = getattr(a, "__array_namespace__", None)
    if namespace is not None:  # array-API arrays (JAX): their namespace's from_dlpack
        return namespace().from_dlpack
    if type(a).__module__.partition(".")[0] == "torch":
        return sys.modules["torch"].from_dlpack
    return None


class _Import:
    """Imports the foreign arrays of one call and remembers what came."""

    def __init__(self, where: str):
        self.where = where
        self.first = None  # the first array argument, as the caller passed it
        self.seen = []  # (name, original, kind, foreign)
        self.cuda_device = None

    def tree(self, value, name: str):
        """``value`` with each foreign array inside it imported (structure kept)."""
        if isinstance(value, (list, tuple)):
            return type(value)(self.tree(v, f"{name}[{i}]") for i, v in enumerate(value))
        if _is_record(value):
            return type(value)(**{k: self.tree(v, f"{name}.{k}") for k, v in vars(value).items()})
        kind = _checks.array_kind(value)
        foreign = kind is None and is_foreign(value)
        if kind is None and not foreign:
            return value
        if self.first is None:
            self.first = value
        imported = value
        if foreign:
            imported, device = import_array(value, self.where, name)
            kind = _checks.array_kind(imported)
            if device is not None and self.cuda_device is None:
                self.cuda_device = device
            if np.dtype(imported.dtype) not in _checks.FLOAT_DTYPES:
                raise TypeError(
                    f"{self.where}: {name} is a {_checks.type_name(value)} of dtype "
                    f"{np.dtype(imported.dtype)}; expected float32 or float64"
                )
        self.seen.append((name, value, kind, foreign))
        return imported

    def check_one_memory(self) -> None:
        """Host and CUDA arrays in one call: a TypeError naming both, as they came."""
        kinds = {kind for _, _, kind, _ in self.seen}
        if len(kinds) < 2:
            return
        name1, array1, kind1, _ = self.seen[0]
        name2, array2 = next((n, a) for n, a, k, _ in self.seen if k != kind1)
        where1, where2 = ("host", "CUDA") if kind1 == "numpy" else ("CUDA", "host")
        raise TypeError(
            f"{self.where}: cannot mix host and CUDA arrays: {name1} is a {describe(array1)} "
            f"({where1} memory) but {name2} is a {describe(array2)} ({where2} memory); r2n never "
            f"copies between host and device, move them to one place first"
        )


def _export(result, to: Callable | None):
    if to is None:
        return result
    if isinstance(result, tuple):
        return tuple(_export(r, to) for r in result)
    if _checks.array_kind(result) is None:
        return result
    if isinstance(result, np.ndarray) and not result.flags.writeable:
        result = result.copy()  # NumPy exports only writeable arrays through DLPack
    return to(result)


def accepts_dlpack(func: Callable | None = None, *, where: str | Callable | None = None):
    """Decorate a public function so that it takes any DLPack array (module docstring).

    Parameters
    ----------
    func : the function; its arguments are found by name through its signature
    where : how messages name it: a string (default ``"r2n.<func name>"``) or a
        callable of the positional arguments (for methods, e.g. a model's name)
    """
    if func is None:
        return functools.partial(accepts_dlpack, where=where)
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if not (_holds_foreign(args) or (kwargs and _holds_foreign(kwargs.values()))):
            return func(*args, **kwargs)  # NumPy / CuPy: nothing to import
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return func(*args, **kwargs)  # Python's own message for a bad call
        label = where(args) if callable(where) else (where or f"r2n.{func.__name__}")
        imports = _Import(label)
        for name, value in bound.arguments.items():
            bound.arguments[name] = imports.tree(value, name)
        imports.check_one_memory()
        if imports.cuda_device is None:
            result = func(*bound.args, **bound.kwargs)
        else:
            import cupy

            with cupy.cuda.Device(imports.cuda_device):
                result = func(*bound.args, **bound.kwargs)
        return _export(result, exporter(imports.first))

    return wrapper
