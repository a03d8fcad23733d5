"""What one Numba parallel region costs by itself on this machine.

Times back-to-back calls of a trivial ``prange`` kernel (one add per
iteration, 2 iterations) built with r2n's own ``kernel`` decorator, so
that Numba's threading layer is loaded with r2n's wait policy
(r2n.cpu._jit.WAIT_POLICY; an ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``
set by the caller wins). At 1 thread no worker wakes; at 2 threads each
call wakes the sleeping worker (passive) or finds it spinning.

Usage::

    python benchmarks/region_overhead.py            # r2n's default (passive)
    GOMP_SPINCOUNT=300000 python benchmarks/region_overhead.py

Prints microseconds per region (median of 5 rounds of 2000 calls) for 1
and 2 threads, and the threading layer in use. A res2net50 forward at
batch 1 runs ~90 regions: multiply to see what waking costs it.
"""

from __future__ import annotations

import os
import statistics
import time

import numba
import numpy as np

from r2n.cpu._jit import kernel, prange


@kernel
def _touch(a):
    for i in prange(a.shape[0]):
        a[i] += 1.0


def us_per_region(threads: int, calls: int = 2000, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean wall time of ``calls`` back-to-back
    calls of the trivial kernel at ``threads`` threads, in microseconds."""
    a = np.zeros(2, np.float32)
    numba.set_num_threads(threads)
    _touch(a)  # compile / start the pool outside the timing
    per_round = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            _touch(a)
        per_round.append(1e6 * (time.perf_counter() - start) / calls)
    return statistics.median(per_round)


def main() -> None:
    policy = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    for threads in range(1, min(2, numba.config.NUMBA_NUM_THREADS) + 1):
        us = us_per_region(threads)
        print(
            f"{threads} thread(s): {us:.2f} us per region; layer {numba.threading_layer()}; "
            f"environment {policy or 'r2n default (passive)'}"
        )


if __name__ == "__main__":
    main()
