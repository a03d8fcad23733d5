"""Shared setup of the benchmark suite.

The suite runs in every ``python -m pytest`` as a smoke test: pyproject's
addopts pass ``--benchmark-disable``, so each benchmark body runs once,
untimed. Time for real with ``--benchmark-enable`` (see README).

Every benchmark records in ``extra_info``: ``backend`` (the row), ``threads``
(host threads; None for GPU rows), ``device`` ("cpu" or "cuda"), ``flops``
and ``gflop``, and after a timed run ``gflops`` (GFLOP/s at the median).
"""

from __future__ import annotations

import os
import sys

import pytest

# PyTorch's OpenMP workers spin for a while after each call. On a small machine
# they then steal the cores from the next row (NumPy's BLAS, Numba's threads),
# and timings swing by 10x or more. Make idle workers sleep; this must be set
# before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# tests/torch_res2net.py (random BN statistics for the official block's modules,
# folded into r2n's arguments) lives with the tests; reuse it.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))


@pytest.fixture
def timed(benchmark):
    """``timed(fn, *args)``: ``benchmark(fn, *args)``, then GFLOP/s at the median
    into ``extra_info["gflops"]`` (when timed and ``extra_info["flops"]`` is set)."""

    def run(fn, *args, **kwargs):
        result = benchmark(fn, *args, **kwargs)
        flops = benchmark.extra_info.get("flops")
        if benchmark.stats is not None and flops:
            benchmark.extra_info["gflops"] = flops / benchmark.stats.stats.median / 1e9
        return result

    return run
