"""Res2Net chain and bottleneck at Res2Net-50 shapes: r2n vs PyTorch, side by side.

Groups: one per op and shape (``chain layer1.0 N=1`` ...), so pytest-benchmark's
table compares rows that did the same work. Rows (``backend``, ``threads`` and
``device`` in extra_info):

* ``reference``: r2n's NumPy reference (NumPy's BLAS with its default threads);
* ``cpu``: r2n's fused Numba kernels on prepared (packed) weights, with 1
  thread and with all cores (``r2n.set_num_threads``);
* ``torch-eager``: the official block as PyTorch modules (conv, BN, ReLU, split,
  add, cat as separate steps), eval mode, no_grad, 1 thread and all cores;
* ``torch-folded``: the same with BN folded into the convs (``F.conv2d`` + bias);
* ``gpu`` (when CuPy sees a GPU), ``torch-eager-cuda`` and ``torch-folded-cuda``
  (when torch does): the same on the device, each call followed by a stream
  synchronisation so that wall time is the device's time.

``extra_info`` also carries the FLOPs (multiply-adds count 2) and, after a
timed run, GFLOP/s at the median (the ``timed`` fixture in conftest.py).
Inputs are float32 and standard-normal (never zeros).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch_res2net import TorchBottle2neck, TorchChain, block_params, chain_arrays, randomize

import r2n
from r2n import _checks
from r2n._bench import machine, torch_models
from r2n._bench.cases import block_flops, chain_flops
from r2n._bench.timing import convert
from r2n.cpu.res2net import PreparedBottle2neck, PreparedChain

ALL = os.cpu_count() or 1

# name: (C_in, planes, width, scale, H, stype, stride) -- Res2Net-50 26w x 4s blocks
BLOCKS = {
    "layer1.0": (64, 64, 26, 4, 56, "stage", 1),
    "layer1.1": (256, 64, 26, 4, 56, "normal", 1),
    "layer2.0": (256, 128, 52, 4, 56, "stage", 2),
    "layer3.1": (1024, 256, 104, 4, 14, "normal", 1),
}
BATCHES = (1, 8)
# (row, threads)
ROWS = [
    ("reference", ALL),
    ("cpu", 1),
    ("cpu", ALL),
    ("torch-eager", 1),
    ("torch-eager", ALL),
    ("torch-folded", 1),
    ("torch-folded", ALL),
]
# GPU rows when CuPy sees a GPU (r2n's gpu backend) and when torch does.
CUPY = machine.cupy_with_gpu()
if CUPY is not None:
    ROWS.append(("gpu", None))
if torch.cuda.is_available():
    ROWS += [("torch-eager-cuda", None), ("torch-folded-cuda", None)]
ROW_IDS = [row if threads is None else f"{row}-{threads}t" for row, threads in ROWS]


def _sync(fn, *args, **kwargs):
    """fn(*args, **kwargs) and wait for the GPU, so wall time is the device's time."""
    out = fn(*args, **kwargs)
    if CUPY is not None:
        CUPY.cuda.get_current_stream().synchronize()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out


def _setup(benchmark, group, row, threads, flops):
    """Name the group, record the row, and pin both libraries' thread counts
    (GPU rows, threads None: the host keeps all threads)."""
    device = "cuda" if row == "gpu" or row.endswith("-cuda") else "cpu"
    benchmark.group = group
    benchmark.extra_info.update(
        backend=row, threads=threads, device=device, gflop=flops / 1e9, flops=flops
    )
    torch.set_num_threads(threads or ALL)
    r2n.set_num_threads(threads or ALL)


@pytest.mark.parametrize("row, threads", ROWS, ids=ROW_IDS)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("block", list(BLOCKS))
def test_chain(benchmark, timed, block, n, row, threads):
    c_in, planes, width, scale, h, stype, stride = BLOCKS[block]
    rng = np.random.default_rng(0)
    chain = randomize(TorchChain(width, scale, stype, stride), rng).float()
    weights, biases = chain_arrays(chain, np.float32)
    x = rng.standard_normal((n, width * scale, h, h)).astype(np.float32)
    flops = chain_flops(n, width, scale, h, stride)
    _setup(benchmark, f"chain {block} N={n}", row, threads, flops)
    kw = dict(scale=scale, stype=stype, stride=stride)
    if row == "reference":
        timed(r2n.res2net_chain, x, weights, biases, backend="reference", **kw)
    elif row == "cpu":
        args = _checks.chain_args("res2net_chain", x, weights, biases, scale, stype, stride, 1)
        keys = ("scale", "stype", "stride", "groups", "width")
        prepared = PreparedChain(weights, biases, dtype=np.float32, **{k: args[k] for k in keys})
        timed(prepared, x)
    elif row == "gpu":
        d = convert((x, weights, biases), CUPY.asarray)
        timed(_sync, r2n.res2net_chain, *d, backend="gpu", **kw)
    else:
        device = "cuda" if row.endswith("-cuda") else "cpu"
        tx = torch.from_numpy(x).to(device)
        with torch.no_grad():
            if row.startswith("torch-eager"):
                timed(_sync, chain.to(device), tx)
            else:
                tw = [torch.from_numpy(w).to(device) for w in weights]
                tb = [torch.from_numpy(b).to(device) for b in biases]
                timed(_sync, torch_models.folded_chain, tx, tw, tb, **kw)


@pytest.mark.parametrize("row, threads", ROWS, ids=ROW_IDS)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("block", list(BLOCKS))
def test_bottle2neck(benchmark, timed, block, n, row, threads):
    c_in, planes, width, scale, h, stype, stride = BLOCKS[block]
    rng = np.random.default_rng(0)
    shortcut = None if (c_in == 4 * planes and stride == 1) else "conv"
    module = TorchBottle2neck(c_in, planes, width, scale, stype, stride, 1, shortcut)
    module = randomize(module, rng).float()
    params = block_params(module, np.float32)
    x = rng.standard_normal((n, c_in, h, h)).astype(np.float32)
    flops = block_flops(n, c_in, planes, width, scale, h, stride, shortcut is not None)
    _setup(benchmark, f"bottle2neck {block} N={n}", row, threads, flops)
    kw = dict(scale=scale, stype=stype, stride=stride)
    if row == "reference":
        timed(r2n.bottle2neck, x, params, backend="reference", **kw)
    elif row == "cpu":
        args = _checks.bottle2neck_args("bottle2neck", x, params, scale, stype, stride, 1)
        timed(PreparedBottle2neck(params, args, np.float32), x)
    elif row == "gpu":
        d = convert((x, params), CUPY.asarray)
        timed(_sync, r2n.bottle2neck, *d, backend="gpu", **kw)
    else:
        device = "cuda" if row.endswith("-cuda") else "cpu"
        tx = torch.from_numpy(x).to(device)
        with torch.no_grad():
            if row.startswith("torch-eager"):
                timed(_sync, module.to(device), tx)
            else:
                # Weights on the device once, outside the timed calls.
                tp = convert(params, lambda a: torch.from_numpy(a).to(device))
                timed(_sync, torch_models.folded_bottle2neck, tx, tp, **kw)
