"""Single convolutions (3x3, 1x1, grouped), r2n vs PyTorch.

The cases are ``r2n bench``'s (``r2n._bench.suite``, default sizes): one
group per op and shape (``conv2d 3x3 26->26 N=1 56x56`` ...). Rows, as in
bench_res2net.py: ``reference`` (all threads), ``cpu`` and ``torch-eager`` at 1
and all threads, ``gpu`` and ``torch-eager-cuda`` when a GPU is seen.
``extra_info``: backend, threads, device, flops, gflop, and GFLOP/s after a
timed run. The whole network is in bench_models.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_res2net import ALL, CUPY, _setup, _sync

from r2n._bench import suite
from r2n._bench.timing import convert

CONV_CASES = [c for c in suite.bench_cases(quick=False) if c.op == "conv2d"]
ROWS = [("reference", ALL), ("cpu", 1), ("cpu", ALL), ("torch-eager", 1), ("torch-eager", ALL)]
if CUPY is not None:
    ROWS.append(("gpu", None))
if torch.cuda.is_available():
    ROWS.append(("torch-eager-cuda", None))
ROW_IDS = [row if threads is None else f"{row}-{threads}t" for row, threads in ROWS]


def _run_case(timed, benchmark, case, row, threads):
    _setup(benchmark, f"{case.op} {case.label}", row, threads, case.flops)
    args64, kwargs = case.make(np.random.default_rng(0))
    args32 = convert(args64, lambda a: a.astype(np.float32))
    if row in ("reference", "cpu"):
        timed(case.r2n_runner(args32, kwargs, row))
    elif row == "gpu":
        timed(_sync, case.r2n_runner(convert(args32, CUPY.asarray), kwargs, "gpu"))
    else:
        device = "cuda" if row.endswith("-cuda") else "cpu"
        timed(_sync, case.torch_runner(args32, kwargs, "eager", device))


@pytest.mark.parametrize("row, threads", ROWS, ids=ROW_IDS)
@pytest.mark.parametrize("case", CONV_CASES, ids=[c.label for c in CONV_CASES])
def test_conv2d(benchmark, timed, case, row, threads):
    _run_case(timed, benchmark, case, row, threads)
