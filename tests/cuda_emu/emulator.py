"""Run r2n's CUDA kernels on the CPU: compile the .cu text with g++, launch on NumPy.

See README.md in this folder for how it works and what it cannot see. In short:

* :func:`compile_module` compiles CUDA C++ text with g++ and ``prelude.h``
  (which emulates threads, shared memory, barriers and warp calls) into a
  shared library, cached on disk by the hash of everything that goes in;
* :meth:`EmuModule.launch` runs one launch on NumPy arrays: every array is
  copied into a buffer with guard bytes (canaries) on both sides and an
  inaccessible page right after its end (first run) or right before its start
  (second run), the launch runs twice, threads and blocks in ascending then
  descending order, and the launch fails if the kernel touched a guard page
  (out-of-bounds read or write), if a canary changed (out-of-bounds write),
  if the two runs
  disagree (a race: a missing ``__syncthreads``, two threads writing one
  element, a read of uninitialised shared memory), or if the kernel wrote to
  a read-only array;
* :class:`EmuExecutor` is the executor protocol of ``r2n.gpu._runtime`` on
  NumPy arrays, so r2n's launchers run unchanged:
  ``r2n.gpu.pool.max_pool2d(x, ..., executor=EmuExecutor())``.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

import numpy as np

from r2n.gpu import _runtime

PRELUDE = pathlib.Path(__file__).with_name("prelude.h")
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = (
    "-std=c++17",
    "-O1",
    "-fPIC",
    "-shared",
    "-fno-strict-aliasing",  # kernels reinterpret shared memory, as CUDA allows
    "-DR2N_EMULATE=1",
    "-Wno-unknown-pragmas",  # #pragma unroll
)
#: Least bytes of canary on the side of an array copy away from its guard page.
GUARD_BYTES = 1024
#: Canary fill: 0xFF bytes are NaN in float32 and float64, so an out-of-bounds
#: read usually shows up in the output too.
CANARY = 0xFF
#: Bytes of a memory page: the unit of the inaccessible guard pages.
PAGE = mmap.PAGESIZE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.restype = ctypes.c_int
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_PROT_NONE = 0  # <sys/mman.h>; the mmap module has PROT_READ and PROT_WRITE only

# r2n_emu_launch's fault kinds (prelude.h's FaultKind).
_FAULT_KINDS = {1: "read of", 2: "write to", 3: "access to"}

# One launch at a time in the whole process: the SIGSEGV handler that turns a
# guard-page fault into an error is process-wide while a launch runs.
_LAUNCH_LOCK = threading.Lock()


class EmuError(RuntimeError):
    """A launch failed under the emulator (compile error, divergence, deadlock, assert)."""


class EmuOutOfBoundsError(EmuError):
    """A kernel read or wrote outside an array argument (guard page or canary)."""


class EmuRaceError(EmuError):
    """The forward and reverse runs of a launch gave different results."""


def cache_dir() -> pathlib.Path:
    """Where compiled kernels live: $R2N_EMU_CACHE, else a per-user temp folder."""
    root = os.environ.get("R2N_EMU_CACHE")
    if root:
        path = pathlib.Path(root)
    else:
        path = pathlib.Path(tempfile.gettempdir()) / f"r2n_cuda_emu_{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


_DTYPE_CODE = {"f": "f", "i": "i", "u": "u", "b": "b"}


def _code_of(dtype: np.dtype) -> str:
    """The prelude's type code of a NumPy dtype: float32 -> "f4"."""
    return f"{_DTYPE_CODE.get(dtype.kind, '?')}{dtype.itemsize}"


class _GuardedCopy:
    """Memory for one region's copy in one run, between two inaccessible pages.

    The mapping is ``[PROT_NONE page][read-write pages][PROT_NONE page]``; the
    read-write pages hold the region's bytes and at least ``GUARD_BYTES`` of
    canary. With ``flush_end`` the bytes end exactly where the page after
    begins, so reading one byte past the end faults; otherwise they start
    exactly where the page before ends, so reading one byte before the start
    faults. The other side is canary, checked after the run.

    Parameters
    ----------
    nbytes : bytes of the region
    flush_end : place the bytes against the page after (True) or before (False)
    """

    def __init__(self, nbytes: int, flush_end: bool):
        self.nbytes = nbytes
        rw_bytes = -(-(nbytes + GUARD_BYTES) // PAGE) * PAGE
        self.size = rw_bytes + 2 * PAGE
        # The mmap object owns the memory: it is unmapped only when the last
        # NumPy view of it is gone, so no view can outlive it.
        whole = np.frombuffer(
            mmap.mmap(
                -1,
                self.size,
                flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            ),
            np.uint8,
        )
        self.base = whole.ctypes.data
        for page in (self.base, self.base + PAGE + rw_bytes):
            if _libc.mprotect(page, PAGE, _PROT_NONE) != 0:
                raise OSError(ctypes.get_errno(), "mprotect of a guard page failed")
        #: the read-write pages (never a view that includes a guard page)
        self.rw = whole[PAGE : PAGE + rw_bytes]
        self.rw[...] = CANARY
        #: offset of the region's first byte in ``rw``: flush against a guard
        #: page. Flush at the end, the start is aligned to the largest power of
        #: two that divides nbytes (at least the item size; 256 when nbytes is
        #: a multiple of 256); flush at the start, to the page.
        self.start = rw_bytes - nbytes if flush_end else 0
        self.address = self.base + PAGE + self.start

    def data(self, offset: int, nbytes: int) -> np.ndarray:
        """The bytes ``offset .. offset + nbytes`` of the region (a view)."""
        return self.rw[self.start + offset : self.start + offset + nbytes]

    def canaries(self) -> tuple[np.ndarray, np.ndarray]:
        """The canary bytes before and after the region (views)."""
        return self.rw[: self.start], self.rw[self.start + self.nbytes :]

    def contains(self, address: int) -> bool:
        return self.base <= address < self.base + self.size


def _describe(members) -> str:
    """'argument 2', or 'arguments [0, 1] (one buffer)' for a shared region."""
    if len(members) == 1:
        return f"argument {members[0][0]}"
    return f"arguments {[m for m, _ in members]} (one buffer)"


class EmuModule:
    """A compiled source: its kernels by name expression, launchable on NumPy arrays."""

    def __init__(self, library_path: pathlib.Path, names: list[str]):
        self.path = library_path
        self.names = list(names)
        self._lib = ctypes.CDLL(str(library_path))
        self._lib.r2n_emu_launch.restype = ctypes.c_int
        self._lib.r2n_emu_launch.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_longlong),
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_ulonglong),
        ]
        self._thunks = {}
        self.signatures = {}
        for i, name in enumerate(self.names):
            thunk = getattr(self._lib, f"r2n_emu_thunk_{i}")
            self._thunks[name] = ctypes.cast(thunk, ctypes.c_void_p).value
            sig = getattr(self._lib, f"r2n_emu_sig_{i}")
            sig.restype = ctypes.c_char_p
            self.signatures[name] = sig().decode().split(",") if sig() else []

    def _check_args(self, name, args):
        params = self.signatures[name]
        if len(params) != len(args):
            raise TypeError(f"{name} takes {len(params)} arguments, got {len(args)}")
        for i, (param, arg) in enumerate(zip(params, args, strict=True)):
            if isinstance(arg, np.ndarray):
                if not param.startswith("p"):
                    raise TypeError(f"{name}: argument {i} is an array, the kernel wants {param}")
                if param != "p?" and param[1:] != _code_of(arg.dtype):
                    raise TypeError(
                        f"{name}: argument {i} is a {arg.dtype} array, the kernel wants a "
                        f"pointer to {param[1:]}"
                    )
            elif param != _code_of(arg.dtype):
                raise TypeError(
                    f"{name}: argument {i} is {arg.dtype}, the kernel's parameter is {param}"
                )

    @staticmethod
    def _regions(args):
        """Group the array arguments by the memory they share.

        Returns a list of regions ``(start address, nbytes, [(arg index, offset), ...])``:
        arrays that overlap (the same array passed twice, or views of one
        buffer) share one guarded copy, so writes through one are seen through
        the other, as on the GPU.
        """
        spans = sorted(
            (a.ctypes.data, a.ctypes.data + a.nbytes, i)
            for i, a in enumerate(args)
            if isinstance(a, np.ndarray)
        )
        regions = []
        for lo, hi, i in spans:
            if regions and lo < regions[-1][1] and hi > regions[-1][0]:
                region = regions[-1]
                region[1] = max(region[1], hi)
                region[2].append((i, lo - region[0]))
            else:
                regions.append([lo, hi, [(i, 0)]])
        return [(lo, hi - lo, members) for lo, hi, members in regions]

    def _run(self, name, grid, block, args, shared_mem, reverse, regions, copies):
        """One run on fresh guarded copies, appended to ``copies`` (one per region).

        The forward run places each region against the guard page after it,
        the reverse run against the guard page before it, so between them a
        read or write one element outside either end faults.
        """
        holders = []  # keep ctypes values alive
        pointers = (ctypes.c_void_p * max(len(args), 1))()
        for _, nbytes, members in regions:
            copy = _GuardedCopy(nbytes, flush_end=not reverse)
            copies.append(copy)
            for i, offset in members:
                a = args[i]
                copy.data(offset, a.nbytes)[...] = a.reshape(-1).view(np.uint8)
                ptr = ctypes.c_void_p(copy.address + offset)
                holders.append(ptr)
                pointers[i] = ctypes.addressof(ptr)
        for i, a in enumerate(args):
            if not isinstance(a, np.ndarray):
                scalar = np.array(a)  # a 0-d copy holds the value's bytes
                holders.append(scalar)
                pointers[i] = scalar.ctypes.data
        cfg = (ctypes.c_longlong * 7)(*grid, *block, shared_mem)
        err = ctypes.create_string_buffer(2048)
        fault = (ctypes.c_ulonglong * 2)()
        with _LAUNCH_LOCK:
            rc = self._lib.r2n_emu_launch(
                self._thunks[name], pointers, cfg, int(reverse), err, len(err), fault
            )
        order = "reverse" if reverse else "forward"
        if rc == 3:
            raise self._fault_error(
                f"{name} ({order} run)",
                fault[0],
                fault[1],
                err.value.decode(),
                args,
                regions,
                copies,
            )
        if rc != 0:
            raise EmuError(f"{name} ({order} run): {err.value.decode()}")
        for (_, nbytes, members), copy in zip(regions, copies, strict=True):
            itemsize = args[members[0][0]].itemsize
            which = _describe(members)
            before, after = copy.canaries()
            bad = np.flatnonzero(before != CANARY)
            if bad.size:
                count = (before.size - bad[0] + itemsize - 1) // itemsize
                raise EmuOutOfBoundsError(
                    f"{name}: out-of-bounds write to {which} before the array: "
                    f"{count} element(s) before"
                )
            bad = np.flatnonzero(after != CANARY)
            if bad.size:
                raise EmuOutOfBoundsError(
                    f"{name}: out-of-bounds write to {which} after the array: at element "
                    f"{(nbytes + bad[0]) // itemsize} (size {nbytes // itemsize})"
                )

    @staticmethod
    def _fault_error(what, address, kind, where, args, regions, copies):
        """The error for a memory fault at ``address`` in a kernel thread (``where``)."""
        access = _FAULT_KINDS.get(kind, "access to")
        for (_, nbytes, members), copy in zip(regions, copies, strict=True):
            if not copy.contains(address):
                continue
            itemsize = args[members[0][0]].itemsize
            which = _describe(members)
            offset = address - copy.address
            if offset < 0:
                count = (-offset + itemsize - 1) // itemsize
                return EmuOutOfBoundsError(
                    f"{what}: out-of-bounds {access} {which} before the array: "
                    f"{count} element(s) before (size {nbytes // itemsize}); {where}"
                )
            return EmuOutOfBoundsError(
                f"{what}: out-of-bounds {access} {which} after the array: at element "
                f"{offset // itemsize} (size {nbytes // itemsize}); {where}"
            )
        return EmuError(
            f"{what}: invalid memory {access.split()[0]} at address {address:#x}, not next "
            f"to any array argument; {where}"
        )

    def launch(self, name, grid, block, args, shared_mem=0, check_order=True):
        """Run ``name`` on NumPy arrays, like a CUDA launch; arrays are updated in place.

        Parameters
        ----------
        name : a name expression compiled into this module
        grid, block : 1 to 3 ints each (CUDA's limits apply)
        args : tuple of C-contiguous NumPy arrays and NumPy scalars
        shared_mem : bytes of dynamic shared memory
        check_order : run twice (ascending and descending thread and block
            order) and require bit-identical results; the second run is also
            the one that catches reads before the start of an array

        Raises
        ------
        EmuError : a failure while running (message says which)
        EmuOutOfBoundsError, EmuRaceError : see the classes
        """
        if name not in self._thunks:
            raise ValueError(f"{name!r} is not compiled into this module ({self.names})")
        grid, block = _runtime.check_launch(
            name, grid, block, args, shared_mem, lambda a: isinstance(a, np.ndarray)
        )
        self._check_args(name, args)
        regions = self._regions(args)
        first, second = [], []
        self._run(name, grid, block, args, shared_mem, False, regions, first)
        if check_order:
            self._run(name, grid, block, args, shared_mem, True, regions, second)
            self._compare_runs(name, args, regions, first, second)
        for (_, _, members), copy in zip(regions, first, strict=True):
            for i, offset in members:
                a = args[i]
                result = copy.data(offset, a.nbytes)
                if np.array_equal(result, a.reshape(-1).view(np.uint8)):
                    continue
                if not a.flags.writeable:
                    raise EmuError(f"{name}: the kernel wrote to argument {i}, a read-only array")
                a.reshape(-1).view(np.uint8)[...] = result

    @staticmethod
    def _compare_runs(name, args, regions, first, second):
        """Raise EmuRaceError if the two runs left different bytes in any array."""
        for (_, nbytes, members), c1, c2 in zip(regions, first, second, strict=True):
            v1, v2 = c1.data(0, nbytes), c2.data(0, nbytes)
            if np.array_equal(v1, v2):
                continue
            i, offset = next(
                (i, off)
                for i, off in members
                if not np.array_equal(
                    v1[off : off + args[i].nbytes], v2[off : off + args[i].nbytes]
                )
            )
            a = args[i]
            e1 = v1[offset : offset + a.nbytes].view(a.dtype)
            e2 = v2[offset : offset + a.nbytes].view(a.dtype)
            per_elem = (e1.view(np.uint8) != e2.view(np.uint8)).reshape(a.size, -1).any(1)
            bad = np.flatnonzero(per_elem)
            raise EmuRaceError(
                f"{name}: argument {i} differs between the forward and the reverse "
                f"run at {bad.size} of {a.size} elements (first: flat index "
                f"{bad[0]}: {e1[bad[0]]!r} vs {e2[bad[0]]!r}): a race or a missing "
                "__syncthreads, or a read of uninitialised shared memory"
            )


def _wrapper_source(names: list[str]) -> str:
    """extern "C" entry points for each name expression: a thunk and a signature."""
    lines = ["\n// ---- emulator entry points ----"]
    for i, name in enumerate(names):
        lines.append(
            f'extern "C" void r2n_emu_thunk_{i}(void** a) {{ r2n_emu::call(&{name}, a); }}'
        )
        lines.append(
            f'extern "C" const char* r2n_emu_sig_{i}() {{ static const std::string s = '
            f"r2n_emu::signature(&{name}); return s.c_str(); }}"
        )
    return "\n".join(lines) + "\n"


_modules: dict[str, EmuModule] = {}
_modules_lock = threading.Lock()


def compile_module(code: str, names, label: str = "kernel") -> EmuModule:
    """Compile CUDA C++ ``code`` for the emulator with the kernels ``names``.

    Parameters
    ----------
    code : the full source (for r2n: ``_runtime.kernel_source(file)``)
    names : name expressions to instantiate, e.g. ``["relu_kernel<float>"]``
    label : used in file names and error messages

    Returns
    -------
    EmuModule, from the in-process memo or the on-disk cache when the same
    code, names, prelude and flags were compiled before.
    """
    names = list(names)
    source = f'#line 1 "{label}"\n{code}\n{_wrapper_source(names)}'
    key_text = "\0".join([PRELUDE.read_text(), source, CXX, *CXXFLAGS])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:24]
    with _modules_lock:
        module = _modules.get(key)
        if module is not None:
            return module
        directory = cache_dir()
        stem = "".join(c if c.isalnum() else "_" for c in label)[:40]
        library = directory / f"{stem}_{key}.so"
        if not library.exists():
            if shutil.which(CXX) is None:
                raise EmuError(f"the CUDA emulator needs a C++17 compiler: {CXX!r} not found")
            src = directory / f"{stem}_{key}.{os.getpid()}.cpp"
            src.write_text(source)
            tmp = directory / f"{stem}_{key}.{os.getpid()}.so"
            cmd = [CXX, *CXXFLAGS, "-include", str(PRELUDE), "-o", str(tmp), str(src)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise EmuError(f"g++ failed to compile {label}:\n{proc.stderr[-6000:]}")
            os.replace(tmp, library)  # atomic: concurrent test processes never see half a file
            src.unlink(missing_ok=True)
        module = _modules[key] = EmuModule(library, names)
        return module


class EmuExecutor:
    """The executor protocol of ``r2n.gpu._runtime``, on NumPy arrays and the CPU.

    Parameters
    ----------
    check_order : run every launch in two thread orders and require identical
        results (default True; False halves the time).
    max_shared : None (r2n's ceiling, ``_runtime.MAX_SHARED_PER_BLOCK``) or the
        opt-in shared memory per block of the device to play (99 KiB: sm_86 /
        sm_89; 163 KiB: sm_80; 227 KiB: sm_90), which :meth:`max_shared_per_block`
        reports and :meth:`launch` enforces, as ``CupyExecutor`` does.
    """

    xp = np

    def __init__(self, check_order: bool = True, max_shared: int | None = None):
        self.check_order = check_order
        self.max_shared = max_shared
        self.launches: list[tuple[str, str]] = []  # (file, name) of every launch, for tests

    def max_shared_per_block(self) -> int:
        """The device's opt-in shared memory per block (``max_shared``)."""
        return _runtime.MAX_SHARED_PER_BLOCK if self.max_shared is None else self.max_shared

    def empty(self, shape, dtype):
        """A new array filled with NaN (integers: -1), so unwritten outputs show."""
        out = np.empty(shape, dtype)
        out.reshape(-1).view(np.uint8)[...] = 0xFF
        return out

    def module(self, file: str) -> EmuModule:
        """The emulator module of a kernel source in r2n/gpu/kernels."""
        return compile_module(_runtime.kernel_source(file), _runtime.names_of(file), label=file)

    def launch(self, file, name_expr, grid, block, args, shared_mem=0):
        """Launch a registered kernel of r2n/gpu/kernels/<file> on NumPy arrays."""
        if name_expr not in _runtime.KERNELS.get(file, ()):
            raise ValueError(f"r2n.gpu: {name_expr!r} is not registered for {file!r}")
        limit = self.max_shared_per_block()
        if isinstance(shared_mem, (int, np.integer)) and shared_mem > limit:
            raise ValueError(  # CupyExecutor.launch's refusal
                f"r2n.gpu: launching {name_expr}: {shared_mem} bytes of shared "
                f"memory, but the emulated device allows at most {limit} per block"
            )
        self.launches.append((file, name_expr))
        self.module(file).launch(
            name_expr, grid, block, args, shared_mem, check_order=self.check_order
        )
