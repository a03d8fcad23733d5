"""Numba settings shared by every CPU kernel.

``kernel`` is ``numba.njit`` with:

* ``parallel=True``: ``prange`` loops run on Numba's thread pool, whose size
  ``r2n.set_num_threads`` sets;
* ``cache=True``: compiled code is saved beside the module, so only the first
  run on a machine pays the compile time;
* ``fastmath={"contract", "reassoc"}``: fused multiply-adds and reordered
  sums (what lets LLVM vectorise reductions). Not ``nnan``/``ninf``: NaN and
  Inf must propagate exactly as in PyTorch.
"""

from __future__ import annotations

import numba

FASTMATH = {"contract", "reassoc"}

kernel = numba.njit(parallel=True, cache=True, fastmath=FASTMATH)
serial = numba.njit(cache=True, fastmath=FASTMATH)
prange = numba.prange
