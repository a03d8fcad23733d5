"""Numba settings shared by every CPU kernel.

``kernel`` is ``numba.njit`` with:

* ``parallel=True``: ``prange`` loops run on Numba's thread pool, whose size
  ``r2n.set_num_threads`` sets;
* a disk cache where one can be written (``cache=True``): compiled code is
  saved (beside the module, else in the user's cache directory, as Numba
  decides), so only the first run on a machine pays the compile time. Where
  Numba finds no writable place (a read-only install with a read-only HOME
  and no ``NUMBA_CACHE_DIR``), the kernels compile in memory on first use in
  each process instead, and one :class:`DiskCacheWarning` says so;
* ``fastmath={"contract", "reassoc"}``: fused multiply-adds and reordered
  sums (what lets LLVM vectorise reductions). Not ``nnan``/``ninf``: NaN and
  Inf must propagate exactly as in PyTorch.

``serial`` is the same without ``parallel``. ``jit(**options)`` makes such a
decorator for other options (``r2n._bench`` uses it).

``run_small`` launches a kernel on the calling thread alone when the op is
too small to pay for waking the workers (``SMALL_OP_BYTES``).

Importing this module loads Numba's OpenMP layer (``load_openmp``) with
GNU OpenMP's idle threads sleeping instead of spinning: see ``WAIT_POLICY``.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings

import numba
import numpy as np

from .._diskcache import DiskCacheWarning

FASTMATH = {"contract", "reassoc"}

_warned = []  # non-empty once the DiskCacheWarning was issued
_warn_lock = threading.Lock()  # kernel modules may be imported from two threads


def _warn_no_disk_cache(reason: str) -> None:
    """Issue the DiskCacheWarning once per process."""
    with _warn_lock:
        if _warned:
            return
        _warned.append(True)
    warnings.warn(
        "r2n: Numba has no writable cache directory for r2n's CPU kernels "
        f"({reason}); they compile in memory on first use in every process "
        "(seconds per kernel and dtype). Set NUMBA_CACHE_DIR to a directory "
        "only you can write to keep them on disk.",
        DiskCacheWarning,
        stacklevel=3,
    )


def jit(**options):
    """A decorator: ``numba.njit(**options)`` with the disk cache where Numba
    can write one, else without it (see the module docstring).

    Where the cache goes is Numba's choice (its cache locators:
    ``NUMBA_CACHE_DIR``, the module's ``__pycache__``, the user's cache
    directory); r2n adds no location of its own, because compiled code loaded
    from a directory others can write to would run as the caller.
    """

    def decorate(py_func):
        dispatcher = numba.njit(**options)(py_func)
        try:
            # What njit(cache=True) does after building the dispatcher; it raises
            # RuntimeError("cannot cache function ...: no locator available ...")
            # when no locator finds a directory it can create and write to.
            dispatcher.enable_caching()
        except RuntimeError as exc:
            _warn_no_disk_cache(str(exc))
        return dispatcher

    return decorate


def as_tuples(*records):
    """The records (NamedTuples) as plain tuples, to pass to a kernel.

    Kernels with many arguments take them as NamedTuple records (named where
    they are built) and unpack them by position. Numba's dispatcher types a
    plain tuple in C but a NamedTuple through Python (~1 us more each,
    measured: 8 records cost a 30 us 1x1 conv ~10 us), so the records cross
    the boundary as plain tuples of the same fields in the same order.
    """
    return tuple(map(tuple, records))


#: How GNU OpenMP's idle threads wait, set while r2n loads Numba's OpenMP
#: layer: "PASSIVE", they sleep at once (GOMP_SPINCOUNT 0) instead of spinning
#: first. libgomp's default spins 300000 times (a load and a PAUSE, ~60 ns each
#: on the 2-core development VM: ~18 ms). While a thread spins the scheduler
#: sees a busy CPU: when another process holds one of the cores, the thread
#: sharing it with that process runs only every few ms, and every launch (2 per
#: 3x3 conv2d, 97 per res2net50 forward when this was measured; ~90 since)
#: waits for it while its partner spins instead of making room (a 0.4 ms conv
#: took 16-58 ms). A sleeping thread frees its CPU, and one woken from sleep
#: preempts the busy process. Shorter spins (300, 1000) were measured too: a
#: thread spinning on the CPU the Python thread needs delays it by its whole
#: spin, so under load they lose to no spin; on a quiet machine they win only
#: on one-call ops of ~0.2-0.5 ms (waking a sleeping thread cost ~40-80 us per
#: launch on the VM), and the res2net50 forward is about as fast passive as
#: with libgomp's default. Numbers: benchmarks/results/NOTES.md "Under load".
#: The user's OMP_WAIT_POLICY (ACTIVE brings the spin back) or GOMP_SPINCOUNT
#: wins.
WAIT_POLICY = "PASSIVE"

_WAIT_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def load_openmp() -> None:
    """Load Numba's OpenMP threading layer (and so libgomp, which reads its
    settings as it loads) with ``OMP_WAIT_POLICY=WAIT_POLICY`` in the
    environment, then restore the environment.

    Loading starts no threads: Numba still launches its pool at the first
    parallel kernel, so importing r2n's kernels does not make a later
    ``fork`` unsafe. Changes nothing where the user set OMP_WAIT_POLICY or
    GOMP_SPINCOUNT (theirs apply), where libgomp was already loaded (its
    settings are fixed then), or where Numba has no OpenMP layer; Numba's TBB
    and workqueue layers ignore the variable, and an LLVM / Intel OpenMP
    reads it later than this (only GNU OpenMP, Numba's layer in the Linux
    wheels, is covered). Other OpenMP runtimes loaded later (PyTorch ships
    its own libgomp) read the restored environment. (It runs at import,
    under the import lock; like any setenv, it races only with C code that
    reads the environment from another thread at that moment.)
    """
    if any(name in os.environ for name in _WAIT_ENV):
        return
    os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    try:
        importlib.import_module("numba.np.ufunc.omppool")
    except ImportError:  # a Numba built without OpenMP
        pass
    finally:
        del os.environ["OMP_WAIT_POLICY"]


load_openmp()


#: Per op: below this many bytes read and written, the op's kernel runs on
#: the calling thread alone (``run_small``; squeeze_excite's launcher runs
#: its serial kernel instead, ``layers.squeeze_excite_into``: no parallel
#: launch at all). With the passive wait policy
#: above, every parallel region at 2+ threads first wakes a sleeping worker:
#: 40-90 us on the 2-core development VM (benchmarks/region_overhead.py);
#: in benchmarks/small_ops.py at batch 1 a call split in 2 took 20-55 us
#: per region more than on one thread. A second thread saves at most half
#: the one-thread time, less for the streaming ops (the two threads share
#: the memory bandwidth), so splitting pays from ~90 us of one-thread work
#: for the blur pool (compute-bound: 1.28x faster split at 166 us, 1.08x
#: at 102, 1.6x slower at 62) and from ~100-150 us for the streaming ops.
#: Each value is about that time at the kernel's own one-thread rate, which
#: differs 5x between kernels: the blur pool ~12 GB/s, space_to_depth and
#: the global pool ~25, squeeze_excite ~45 (~60 since its serial kernel,
#: threshold not re-measured), the 2x2 average pool ~75 on
#: wide rows (~28 on 7-wide ones). Measured on TResNet-M's ops at batch 1,
#: 2 and 8 (benchmarks/results/NOTES.md, "Small ops on the calling
#: thread"). At batch 1 every TResNet-M pool, space_to_depth and
#: squeeze-excite is below its value, and so is the smallest blur pool; at
#: batch 8 none is but the 2x2 pool's 128-channel one. The general pools'
#: 2 MiB is not measured separately: it keeps Res2Net's stem max pool (4 MB
#: at batch 1) split, as it was.
SMALL_OP_BYTES = {
    "avg_pool2d_2x2": 6 << 20,
    "avg_pool2d": 2 << 20,
    "max_pool2d": 2 << 20,
    "global_avg_pool2d": 3 << 20,
    "space_to_depth": 2 << 20,
    "blur_pool2d": 3 << 18,
    "squeeze_excite": 4 << 20,
}


def worker_buffers(jobs: int, size: int, dtype, role=None, scratch=None):
    """(workers, size) buffers for a kernel whose ``prange`` runs over
    workers, each taking a contiguous share of ``jobs`` with one buffer of
    its own (the 1x1 rows kernel, step 4's direct conv, the windowed pools):
    one per thread, at most one per job, so the kernel allocates nothing
    per job. From ``scratch(role, shape, dtype)`` (r2n.cpu._scratch) when
    given, reused across calls; else new. Any contents: those kernels write
    every value they read."""
    shape = (max(1, min(numba.get_num_threads(), jobs)), size)
    if scratch is None:
        return np.empty(shape, dtype)
    return scratch(role, shape, dtype)


def run_small(op: str, kernel_fn, nbytes: int, *args) -> None:
    """``kernel_fn(*args)``, on the calling thread alone when ``nbytes``
    (the bytes the op reads and writes) is below ``SMALL_OP_BYTES[op]``.

    The kernel is the same compiled code either way and each ``prange``
    iteration computes its outputs by itself, so the result is the same
    bit for bit at every thread count; only where it runs changes. Numba's
    thread count is per calling thread and restored on the way out (also
    when the kernel raises).
    """
    if nbytes >= SMALL_OP_BYTES[op]:
        kernel_fn(*args)
        return
    threads = numba.get_num_threads()
    if threads == 1:
        kernel_fn(*args)
        return
    numba.set_num_threads(1)
    try:
        kernel_fn(*args)
    finally:
        numba.set_num_threads(threads)


kernel = jit(parallel=True, fastmath=FASTMATH)
serial = jit(fastmath=FASTMATH)
prange = numba.prange
