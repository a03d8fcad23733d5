"""This machine's ceilings, measured at the start of ``r2n bench``.

* **sgemm**: ``numpy.matmul`` of two float32 (n, n) matrices, GFLOP/s =
  2 n^3 / fastest call (a peak is the best the machine did, so the minimum,
  not the median, of the repeated calls), with NumPy's BLAS (OpenBLAS in the
  wheels) set to 1 thread and to all threads. The thread count is set through OpenBLAS's own
  ``openblas_set_num_threads`` found with ctypes in the library NumPy loaded
  (threadpoolctl is not a dependency); where that fails only the default
  count is measured and the 1-thread peak is missing (``None``).
* **copy bandwidth**: copying a float32 array much larger than the caches,
  GB/s = 2 x bytes / fastest call (one read and one write per byte), with one
  thread (``numpy.copyto``) and with all threads (r2n's parallel Numba copy,
  when Numba is installed).
* **GPU** (when CuPy sees one): ``cupy.matmul`` float32 sgemm and a
  device-to-device copy, timed with CUDA events.

These are what this machine does on simple kernels, not datasheet figures:
"% of peak" in the table is relative to them.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import platform

import numpy as np

from . import timing

_BLAS: list = []


def _openblas():
    """(set_num_threads, get_num_threads) of the OpenBLAS NumPy uses, or None."""
    if not _BLAS:
        found = None
        try:
            libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
            for path in glob.glob(os.path.join(libdir, "*openblas*")):
                lib = ctypes.CDLL(path)  # already loaded by NumPy: same handle
                for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("scipy_", ""), ("", "")):
                    setter = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
                    getter = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
                    if setter is not None and getter is not None:
                        found = (setter, getter)
                        break
                if found:
                    break
        except OSError:
            found = None
        _BLAS.append(found)
    return _BLAS[0]


def blas_threads() -> int | None:
    """NumPy's BLAS thread count, or None when it cannot be read."""
    blas = _openblas()
    return None if blas is None else int(blas[1]())


@contextlib.contextmanager
def blas_threads_set(n: int | None):
    """Run the block with NumPy's BLAS on ``n`` threads (None: leave as is).

    Yields True when the count was set, False when it could not be."""
    blas = _openblas()
    if n is None or blas is None:
        yield False
        return
    before = int(blas[1]())
    blas[0](int(n))
    try:
        yield True
    finally:
        blas[0](before)


def all_threads() -> int:
    """The thread count of "all threads" rows: r2n's CPU default, else os.cpu_count."""
    try:
        from .. import cpu

        if cpu.available():
            return int(cpu.get_num_threads())
    except Exception:  # Numba present but unusable: fall back to the core count
        pass
    return os.cpu_count() or 1


def _sgemm_gflops(n: int, budget: timing.Budget) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    times = timing.time_host(lambda: np.matmul(a, b, out=out), budget)
    return 2 * n**3 / min(times) / 1e9


def _copy_gbs(nbytes: int, threads: int, budget: timing.Budget) -> float | None:
    src = np.random.default_rng(0).standard_normal(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    if threads == 1:
        fn = lambda: np.copyto(dst, src)  # noqa: E731
    else:
        try:
            from .. import cpu
            from . import residual

            if not cpu.available():
                return None
            cpu.set_num_threads(threads)
            fn = lambda: residual.copy_flat(src, dst)  # noqa: E731
        except ImportError:
            return None
    times = timing.time_host(fn, budget)
    return 2 * src.nbytes / min(times) / 1e9


def measure_peaks(quick: bool, threads: int) -> dict:
    """sgemm GFLOP/s and copy GB/s at 1 and ``threads`` threads (see module doc).

    Returns
    -------
    dict with keys ``sgemm_gflops`` and ``copy_gbs``, each {"1": x, str(threads): y}
    (None where not measurable), plus the sizes used and ``blas_threads_settable``.
    """
    n = 512 if quick else 1536
    nbytes = (32 if quick else 128) * 2**20
    budget = timing.Budget(min_time=0.05 if quick else 0.3, min_reps=3, max_reps=50)
    settable = _openblas() is not None
    sgemm, copy = {}, {}
    for t in sorted({1, threads}):
        with blas_threads_set(t) as ok:
            sgemm[str(t)] = _sgemm_gflops(n, budget) if ok or t == threads else None
        copy[str(t)] = _copy_gbs(nbytes, t, budget)
    from .. import cpu

    if cpu.available():
        cpu.set_num_threads(threads)
    return {
        "sgemm_gflops": sgemm,
        "copy_gbs": copy,
        "sgemm_n": n,
        "copy_mib": nbytes // 2**20,
        "blas_threads_settable": settable,
    }


def roofline_gflops(flops_peak, bandwidth, intensity: float) -> float | None:
    """The roofline at arithmetic ``intensity`` (FLOP per byte): GFLOP/s of
    ``min(flops_peak, bandwidth x intensity)``, with ``flops_peak`` the sgemm
    GFLOP/s and ``bandwidth`` the copy GB/s at one thread count (or the GPU's);
    the sgemm peak alone where the bandwidth is unknown, None without a peak."""
    if flops_peak and bandwidth:
        return min(flops_peak, bandwidth * intensity)
    return flops_peak or None


def host_roofline_gflops(peaks: dict, threads: int, intensity: float) -> float | None:
    """:func:`roofline_gflops` from :func:`measure_peaks`' figures at ``threads``."""
    key = str(threads)
    return roofline_gflops(peaks["sgemm_gflops"].get(key), peaks["copy_gbs"].get(key), intensity)


def gpu_peaks(quick: bool) -> dict | None:
    """cupy sgemm GFLOP/s and device copy GB/s, or None without a GPU."""
    cupy = cupy_with_gpu()
    if cupy is None:
        return None
    n = 2048 if quick else 8192
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    b = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    budget = timing.Budget(min_time=0.05 if quick else 0.3, min_reps=3, max_reps=50)
    t_mm = min(timing.time_cupy(lambda: cupy.matmul(a, b), budget))
    src = cupy.zeros(256 * 2**20 // 4, cupy.float32)
    dst = cupy.empty_like(src)
    t_cp = min(timing.time_cupy(lambda: dst.__setitem__(..., src), budget))
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "sgemm_gflops": 2 * n**3 / t_mm / 1e9,
        "copy_gbs": 2 * src.nbytes / t_cp / 1e9,
    }


def cupy_with_gpu():
    """The cupy module when it imports and sees at least one GPU, else None."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:  # not installed, no driver, no device: no GPU rows
        return None
    return None


class OtherLoad:
    """How busy other processes kept the CPUs between ``start()`` and ``stop()``.

    From /proc/stat (CPU time of everything) minus this process's own CPU time
    (``os.times``), over wall time x cores: 0 on a quiet machine, 0.5 when
    other work kept half the cores busy. Multi-threaded rows are unreliable
    when this is not small: a thread that loses its core stalls the others at
    the next barrier for a scheduler time slice (timings then cluster at
    multiples of a few ms). None where /proc/stat is missing."""

    def start(self) -> None:
        self._t0 = (_proc_busy(), _own_cpu(), _wall())

    def stop(self) -> float | None:
        busy0, own0, wall0 = self._t0
        busy1 = _proc_busy()
        if busy0 is None or busy1 is None:
            return None
        wall = _wall() - wall0
        others = (busy1 - busy0) - (_own_cpu() - own0)
        return max(0.0, others / (wall * (os.cpu_count() or 1))) if wall > 0 else None


def _proc_busy() -> float | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _wall() -> float:
    import time

    return time.monotonic()


def machine_info() -> dict:
    """CPU model, core count, Python, NumPy and (when present) Numba versions."""
    cpu_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu_name,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "node": platform.node(),
    }
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        pass
    return info
