"""Compiling and launching r2n's CUDA sources (owner: GPU engineer A).

Every op in r2n/gpu launches its kernels through an *executor*, never through
CuPy directly, so that the same launcher runs

* on a GPU, through :class:`CupyExecutor` (``cupy.RawModule``, NVRTC), and
* on the CPU, through the test emulator ``tests/cuda_emu`` (``EmuExecutor``:
  the same .cu text compiled by g++, launched on NumPy arrays).

The executor protocol::

    ex.xp                          # the array module: cupy or numpy
    ex.empty(shape, dtype)         # new uninitialised array
    ex.launch(file, name_expr, grid, block, args, shared_mem=0)
    ex.zeros(shape, dtype)         # optional: new array of zeros (else empty + fill(0))
    ex.stream()                    # optional: the stream launches go to (else one,
                                   # in call order: the emulator)

``file`` names a source in ``r2n/gpu/kernels``; the text compiled is
``common.cuh`` followed by that file, with the ``.cuh`` headers it names in
``#include "..."`` lines pasted in (:func:`kernel_source`). Each op module
registers the name expressions it launches (``register("pool.cu",
["max_pool2d_kernel<float>", ...])``) so that the compile test can enumerate
every kernel (:data:`KERNELS`).

Kernel arguments are arrays (passed as device pointers) and NumPy scalars
(``np.int32``, ``np.int64``, ``np.uint32``, ``np.float32``, ``np.float64``,
passed by value). A Python int or float is a TypeError: CuPy would pass it as
a 64-bit value whatever the kernel's parameter type is.

Importing this module never imports CuPy; :func:`executor` does.
"""

from __future__ import annotations

import functools
import pathlib
import re
import threading

import numpy as np

KERNEL_DIR = pathlib.Path(__file__).with_name("kernels")

#: NVRTC options, shared by CupyExecutor and the compile test (tests/test_gpu_compile.py).
NVRTC_OPTIONS: tuple[str, ...] = ("-std=c++17",)

#: file -> name expressions launched from it (filled by the op modules' register calls).
KERNELS: dict[str, list[str]] = {}

#: (file, name expression) pairs allowed to spill registers to local memory
#: (naive variants only; the compile test fails on spills anywhere else).
ALLOWED_TO_SPILL: set[tuple[str, str]] = set()

#: The scalar types a kernel argument may have, and the C type each matches.
SCALAR_TYPES = {
    np.dtype(np.int32): "int",
    np.dtype(np.int64): "long long",
    np.dtype(np.uint32): "unsigned int",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}

# Launch limits of every CUDA GPU r2n targets (sm_80 and later).
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2**31 - 1, 65535, 65535)
#: Dynamic shared memory above this needs an opt-in (done by CupyExecutor).
DEFAULT_SHARED_LIMIT = 48 * 1024
#: The most shared memory one block may have on any target (sm_80: 163 KiB; sm_90 allows
#: 227 KiB); a launch is also checked against its device's own limit.
MAX_SHARED_PER_BLOCK = 163 * 1024


def register(file: str, names) -> None:
    """Declare that ``file`` is compiled with the name expressions ``names``.

    Parameters
    ----------
    file : a file name in r2n/gpu/kernels, e.g. ``"pool.cu"``
    names : iterable of name expressions, e.g. ``["max_pool2d_kernel<float>"]``
    """
    if not (KERNEL_DIR / file).is_file():
        raise ValueError(f"r2n.gpu: no kernel source {file!r} in {KERNEL_DIR}")
    known = KERNELS.setdefault(file, [])
    for name in names:
        if name not in known:
            known.append(name)


def names_of(file: str) -> list[str]:
    """The name expressions registered for ``file`` (a copy)."""
    if file not in KERNELS:
        raise ValueError(f"r2n.gpu: kernel source {file!r} was never registered")
    return list(KERNELS[file])


@functools.cache  # a source file of the installed package: constant while r2n runs
def _read(path: str) -> str:
    return pathlib.Path(path).read_text()


_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.MULTILINE)


def expand_includes(text: str, name: str = "<source>", _done: set | None = None) -> str:
    """``text`` with each ``#include "X.cuh"`` line replaced by the text of
    r2n/gpu/kernels/X.cuh (its own includes expanded too), each header at most
    once (later lines of an included header become a comment).

    NVRTC (through CuPy) compiles one string, and CuPy's compile cache is keyed
    on that string: pasting the headers in keeps the cache key complete, where
    an include path would not. ``<...>`` includes are left alone.

    Raises
    ------
    ValueError : a quoted include of a file that is not in r2n/gpu/kernels.
    """
    done = set() if _done is None else _done

    def paste(match):
        header = match.group(1)
        path = KERNEL_DIR / header
        if "/" in header or not path.is_file():
            raise ValueError(f"r2n.gpu: {name} includes {header!r}, not a file in {KERNEL_DIR}")
        if header in done:
            return f'// (#include "{header}": already included)'
        done.add(header)
        body = expand_includes(_read(str(path)), header, done)
        return f"// ---- {header} ----\n{body}\n// ---- end of {header} ----"

    return _INCLUDE.sub(paste, text)


def kernel_source(file: str) -> str:
    """The text compiled for ``file``: common.cuh, then kernels/<file> with the
    headers it includes pasted in (:func:`expand_includes`)."""
    common = _read(str(KERNEL_DIR / "common.cuh"))
    body = expand_includes(_read(str(KERNEL_DIR / file)), file, {"common.cuh"})
    return f"{common}\n// ---- {file} ----\n{body}"


def dtype_name(dtype) -> str:
    """The C type of a float dtype: ``"float"`` or ``"double"`` (TypeError otherwise)."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return "float"
    if dtype == np.float64:
        return "double"
    raise TypeError(f"r2n.gpu: kernels are compiled for float32 and float64, got {dtype}")


def int32_or_error(op: str, what: str, value: int) -> np.int32:
    """``np.int32(value)``, or a ValueError naming ``what`` when it does not fit."""
    value = int(value)
    if not -(2**31) <= value < 2**31:
        raise ValueError(f"r2n.{op}: {what} = {value} does not fit the kernel's 32-bit int")
    return np.int32(value)


def check_config(name_expr, grid, block, shared_mem) -> tuple:
    """Validate a launch configuration; returns (grid, block) as 3-tuples of ints.

    Raises
    ------
    ValueError : an empty or oversized grid, block or shared memory.
    TypeError : a grid or block that is not 1 to 3 ints.
    """

    def dims(what, value, limits):
        value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if not 1 <= len(value) <= 3:
            raise ValueError(f"r2n.gpu: {what} must be 1 to 3 ints, got {value!r}")
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
            raise TypeError(f"r2n.gpu: {what} must be 1 to 3 ints, got {value!r}")
        value = tuple(int(v) for v in value) + (1,) * (3 - len(value))
        for v, limit in zip(value, limits, strict=True):
            if not 1 <= v <= limit:
                raise ValueError(
                    f"r2n.gpu: launching {name_expr}: {what} {value} outside 1..{limits}"
                )
        return value

    grid = dims("grid", grid, MAX_GRID_DIM)
    block = dims("block", block, MAX_BLOCK_DIM)
    if block[0] * block[1] * block[2] > MAX_THREADS_PER_BLOCK:
        raise ValueError(f"r2n.gpu: launching {name_expr}: block {block} has > 1024 threads")
    if (
        not isinstance(shared_mem, (int, np.integer))
        or isinstance(shared_mem, bool)
        or not (0 <= shared_mem <= MAX_SHARED_PER_BLOCK)
    ):
        raise ValueError(
            f"r2n.gpu: launching {name_expr}: shared_mem must be an int in "
            f"0..{MAX_SHARED_PER_BLOCK}, got {shared_mem!r}"
        )
    return grid, block


#: The classes of the allowed scalar arguments (a set lookup on the hot path).
_SCALAR_CLASSES = frozenset(dtype.type for dtype in SCALAR_TYPES)


def check_args(name_expr, args, is_array) -> None:
    """Validate a launch's arguments: C-contiguous arrays and NumPy scalars of
    :data:`SCALAR_TYPES` only (ValueError / TypeError otherwise)."""
    if not isinstance(args, tuple):
        raise TypeError(f"r2n.gpu: launching {name_expr}: args must be a tuple")
    for i, a in enumerate(args):
        if type(a) in _SCALAR_CLASSES:
            continue
        if is_array(a):
            if not a.flags.c_contiguous:
                raise ValueError(
                    f"r2n.gpu: launching {name_expr}: argument {i} is not C-contiguous"
                )
        else:
            raise TypeError(
                f"r2n.gpu: launching {name_expr}: argument {i} must be an array or a NumPy "
                f"scalar of type {', '.join(map(str, SCALAR_TYPES))}, got {type(a).__name__}"
            )


def check_launch(name_expr, grid, block, args, shared_mem, is_array) -> tuple:
    """Validate a launch before it happens (:func:`check_config` and
    :func:`check_args`); shared by both executors.

    Returns
    -------
    (grid, block) as 3-tuples of ints.
    """
    grid, block = check_config(name_expr, grid, block, shared_mem)
    check_args(name_expr, args, is_array)
    return grid, block


class CupyExecutor:
    """Compiles sources with ``cupy.RawModule`` and launches on CuPy's current stream.

    One instance per device; modules are compiled once per (device, file) and
    memoized (CuPy also caches the binary on disk), and so are the kernel
    objects and their shared-memory opt-ins, so a launch does no lookups.

    What it keeps, and why that is safe across calls and threads: each cache
    is keyed on everything its value is computed from (a module on its file,
    whose source is constant; a kernel on (file, name); a checked launch
    configuration on the configuration as passed, types included) and holds
    no array; compiles and opt-ins happen under ``_lock``; other entries are
    plain dict get / set (atomic), so two threads at most compute one twice.
    """

    def __init__(self, device_id: int, cupy_module=None):
        """``cupy_module``: CuPy itself (None), or a stand-in for tests without a GPU."""
        if cupy_module is None:
            import cupy as cupy_module

        self.xp = cupy_module
        self.device_id = device_id
        self._modules: dict[str, object] = {}
        # (file, name expression) -> [RawKernel, dynamic shared memory opted in to]
        self._functions: dict[tuple[str, str], list] = {}
        # (file, name, grid, block, shared_mem) as passed -> (grid, block) checked
        self._checked_configs: dict[tuple, tuple] = {}
        self._lock = threading.Lock()

    def empty(self, shape, dtype):
        """New uninitialised CuPy array on the current device."""
        return self.xp.empty(shape, dtype)

    def zeros(self, shape, dtype):
        """New CuPy array of zeros on the current device (set on the current stream)."""
        return self.xp.zeros(shape, dtype)

    def stream(self):
        """CuPy's current stream, which :meth:`launch` launches on (split-K's
        scratch arrays belong to it: r2n.gpu.conv.split_k_scratch)."""
        return self.xp.cuda.get_current_stream()

    def max_shared_per_block(self) -> int:
        """The opt-in shared memory limit of this device (99 KiB on sm_86/89,
        163 KiB on sm_80, 227 KiB on sm_90), read once."""
        limit = getattr(self, "_max_shared", None)
        if limit is None:
            attributes = getattr(self.xp.cuda.Device(self.device_id), "attributes", {})
            limit = int(attributes.get("MaxSharedMemoryPerBlockOptin", MAX_SHARED_PER_BLOCK))
            self._max_shared = limit
        return limit

    @property
    def sm_count(self) -> int:
        """The device's streaming multiprocessors (r2n.gpu.conv.split_k_for), read once."""
        count = getattr(self, "_sm_count", None)
        if count is None:
            attributes = getattr(self.xp.cuda.Device(self.device_id), "attributes", {})
            count = self._sm_count = int(attributes.get("MultiProcessorCount", 0)) or None
        return count

    def module(self, file: str):
        """The compiled RawModule of ``file`` for this executor's device."""
        with self._lock:
            mod = self._modules.get(file)
            if mod is None:
                mod = self.xp.RawModule(
                    code=kernel_source(file),
                    options=NVRTC_OPTIONS,
                    name_expressions=names_of(file),
                )
                self._modules[file] = mod
            return mod

    def _function(self, file: str, name_expr: str) -> list:
        """[the RawKernel of ``name_expr``, its shared-memory opt-in], looked up once."""
        entry = self._functions.get((file, name_expr))
        if entry is None:
            entry = [self.module(file).get_function(name_expr), DEFAULT_SHARED_LIMIT]
            with self._lock:
                entry = self._functions.setdefault((file, name_expr), entry)
        return entry

    def launch(self, file, name_expr, grid, block, args, shared_mem=0):
        """Launch ``name_expr`` from ``file`` on the current stream.

        Parameters
        ----------
        file : source in r2n/gpu/kernels
        name_expr : a registered name expression, e.g. ``"relu_kernel<float>"``
        grid, block : 1 to 3 ints each
        args : tuple of CuPy arrays (C-contiguous, on this device) and NumPy scalars
        shared_mem : bytes of dynamic shared memory
        """
        cupy = self.xp
        # The key holds the types too: (1.0,) == (1,) and True == 1 must not pass
        # for a checked int configuration.
        try:
            config = (file, name_expr, grid, block, shared_mem, type(shared_mem))
            config += (tuple(map(type, grid)), tuple(map(type, block)))
            checked = self._checked_configs.get(config)
        except TypeError:  # unhashable or not iterable: check_config says what is wrong
            config, checked = None, None
        if checked is None:  # first launch of this configuration: the full checks
            if name_expr not in KERNELS.get(file, ()):
                raise ValueError(f"r2n.gpu: {name_expr!r} is not registered for {file!r}")
            checked = check_config(name_expr, grid, block, shared_mem)
            if config is not None and len(self._checked_configs) < 4096:  # shapes vary
                self._checked_configs[config] = checked
        grid, block = checked
        check_args(name_expr, args, lambda a: isinstance(a, cupy.ndarray))
        for i, a in enumerate(args):
            if type(a) not in _SCALAR_CLASSES and a.device.id != self.device_id:
                raise ValueError(
                    f"r2n.gpu: launching {name_expr} on device {self.device_id}: "
                    f"argument {i} is on device {a.device.id}"
                )
        with cupy.cuda.Device(self.device_id):
            entry = self._function(file, name_expr)
            func = entry[0]
            if shared_mem > entry[1]:
                limit = self.max_shared_per_block()
                if shared_mem > limit:
                    raise ValueError(
                        f"r2n.gpu: launching {name_expr}: {shared_mem} bytes of shared "
                        f"memory, but device {self.device_id} allows at most {limit} per block"
                    )
                # Opt in to more than 48 KiB of dynamic shared memory. get_function
                # returns a cupy.RawKernel (it has no ``ptr``, cupy.cuda.Function has);
                # this setter calls cuFuncSetAttribute on its current-device function.
                # The opt-in only grows (under the lock), so no launch lowers another's.
                with self._lock:
                    if shared_mem > entry[1]:
                        func.max_dynamic_shared_size_bytes = int(shared_mem)
                        entry[1] = int(shared_mem)
            func(grid, block, args, shared_mem=int(shared_mem))


_executors: dict[int, CupyExecutor] = {}  # device id -> its executor (under the lock)
_executors_lock = threading.Lock()


def executor() -> CupyExecutor:
    """The :class:`CupyExecutor` of CuPy's current device.

    Raises
    ------
    RuntimeError : CuPy is not installed, or it sees no GPU.
    """
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(
            f"r2n: backend 'gpu' needs CuPy (pip install 'r2n[gpu]'); importing cupy failed: {e}"
        ) from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError without a driver
        raise RuntimeError(f"r2n: backend 'gpu' needs a CUDA GPU; CuPy sees none ({e})") from e
    if count == 0:
        raise RuntimeError("r2n: backend 'gpu' needs a CUDA GPU; CuPy sees none")
    device_id = cupy.cuda.Device().id
    with _executors_lock:
        ex = _executors.get(device_id)
        if ex is None:
            ex = _executors[device_id] = CupyExecutor(device_id)
        return ex


#: Threads per block of the 1-D elementwise launches.
THREADS_1D = 256
#: Threads per warp on every NVIDIA GPU.
WARP_SIZE = 32
#: Grid-stride kernels run at most this many blocks; each thread then loops.
MAX_BLOCKS_1D = 1 << 20


def grid_1d(total: int, threads: int = THREADS_1D) -> tuple[int]:
    """The grid of a 1-D grid-stride launch over ``total`` > 0 elements."""
    return (max(1, min(-(-int(total) // threads), MAX_BLOCKS_1D)),)


def ctype_scalar(dtype, value):
    """``value`` as the NumPy scalar of ``dtype`` (float32 -> np.float32): a kernel's T."""
    dtype_name(dtype)  # float32 or float64 only
    return np.dtype(dtype).type(value)


def contiguous(ex, a):
    """``a`` C-contiguous through the executor (the same array if it already is)."""
    return ex.xp.ascontiguousarray(a)
