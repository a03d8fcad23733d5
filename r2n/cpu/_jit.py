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
"""

from __future__ import annotations

import threading
import warnings

import numba

from . import DiskCacheWarning

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


kernel = jit(parallel=True, fastmath=FASTMATH)
serial = jit(fastmath=FASTMATH)
prange = numba.prange
