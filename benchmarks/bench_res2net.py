"""Res2Net chain and bottleneck at Res2Net-50 shapes: r2n vs PyTorch, side by side.

Groups: one per op and shape (``chain layer1.0 N=1`` ...), so pytest-benchmark's
table compares rows that did the same work. Rows (``backend`` and ``threads``
in extra_info):

* ``reference``: r2n's NumPy reference (NumPy's BLAS with its default threads);
* ``cpu``: r2n's fused Numba kernels on prepared (packed) weights, with 1
  thread and with all cores (``r2n.set_num_threads``);
* ``torch-eager``: the official block as PyTorch modules (conv, BN, ReLU, split,
  add, cat as separate steps), eval mode, no_grad, 1 thread and all cores;
* ``torch-folded``: the same with BN folded into the convs (``F.conv2d`` + bias).

``extra_info`` also carries the FLOPs (multiply-adds count 2); report.py turns
them into GFLOP/s. Inputs are float32 and standard-normal (never zeros).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_res2net import TorchBottle2neck, TorchChain, block_params, chain_arrays, randomize

import r2n
from r2n import _checks
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
ROW_IDS = [f"{row}-{threads}t" for row, threads in ROWS]


def chain_flops(n, width, scale, h, stride, groups=1):
    """Multiply-adds x 2 of the chain's 3x3 convs."""
    ho = (h - 1) // stride + 1
    return 2 * max(scale - 1, 1) * n * width * (width // groups) * 9 * ho * ho


def block_flops(n, c_in, planes, width, scale, h, stype, stride):
    ho = (h - 1) // stride + 1
    c_out = 4 * planes
    flops = 2 * n * c_in * width * scale * h * h  # conv1
    flops += chain_flops(n, width, scale, h, stride)
    flops += 2 * n * width * scale * c_out * ho * ho  # conv3
    if c_in != c_out or stride != 1:
        flops += 2 * n * c_in * c_out * ho * ho  # shortcut conv
    return flops


def _torch_folded_chain(x, weights, biases, scale, stype, stride):
    """The chain as PyTorch ops on folded weights (split/add/conv/relu/cat)."""
    width = x.shape[1] // scale
    nums = max(scale - 1, 1)
    chunks = torch.split(x, width, 1)
    outs, sp = [], None
    for i in range(nums):
        sp = chunks[i] if i == 0 or stype == "stage" else sp + chunks[i]
        sp = F.relu(F.conv2d(sp, weights[i], biases[i], stride=stride, padding=1))
        outs.append(sp)
    if scale > 1:
        last = chunks[nums]
        outs.append(F.avg_pool2d(last, 3, stride, 1) if stype == "stage" else last)
    return torch.cat(outs, 1)


def _torch_folded_block(x, p, scale, stype, stride):
    t = torch.from_numpy
    out = F.relu(F.conv2d(x, t(p.conv1.weight), t(p.conv1.bias)))
    out = _torch_folded_chain(
        out, [t(w) for w in p.chain_weights], [t(b) for b in p.chain_biases], scale, stype, stride
    )
    out = F.conv2d(out, t(p.conv3.weight), t(p.conv3.bias))
    identity = x
    if p.shortcut is not None:
        identity = F.conv2d(x, t(p.shortcut.weight), t(p.shortcut.bias), stride=stride)
    return F.relu(out + identity)


def _setup(benchmark, group, row, threads, flops):
    """Name the group, record the row, and pin both libraries' thread counts."""
    benchmark.group = group
    benchmark.extra_info.update(backend=row, threads=threads, gflop=flops / 1e9, flops=flops)
    torch.set_num_threads(threads)
    r2n.set_num_threads(threads)


@pytest.mark.parametrize("row, threads", ROWS, ids=ROW_IDS)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("block", list(BLOCKS))
def test_chain(benchmark, block, n, row, threads):
    c_in, planes, width, scale, h, stype, stride = BLOCKS[block]
    rng = np.random.default_rng(0)
    chain = randomize(TorchChain(width, scale, stype, stride), rng).float()
    weights, biases = chain_arrays(chain, np.float32)
    x = rng.standard_normal((n, width * scale, h, h)).astype(np.float32)
    flops = chain_flops(n, width, scale, h, stride)
    _setup(benchmark, f"chain {block} N={n}", row, threads, flops)
    kw = dict(scale=scale, stype=stype, stride=stride)
    if row == "reference":
        benchmark(r2n.res2net_chain, x, weights, biases, backend="reference", **kw)
    elif row == "cpu":
        args = _checks.chain_args("res2net_chain", x, weights, biases, scale, stype, stride, 1)
        keys = ("scale", "stype", "stride", "groups", "width")
        prepared = PreparedChain(weights, biases, dtype=np.float32, **{k: args[k] for k in keys})
        benchmark(prepared, x)
    else:
        tx = torch.from_numpy(x)
        with torch.no_grad():
            if row == "torch-eager":
                benchmark(chain, tx)
            else:
                tw = [torch.from_numpy(w) for w in weights]
                tb = [torch.from_numpy(b) for b in biases]
                benchmark(_torch_folded_chain, tx, tw, tb, scale, stype, stride)


@pytest.mark.parametrize("row, threads", ROWS, ids=ROW_IDS)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("block", list(BLOCKS))
def test_bottle2neck(benchmark, block, n, row, threads):
    c_in, planes, width, scale, h, stype, stride = BLOCKS[block]
    rng = np.random.default_rng(0)
    shortcut = None if (c_in == 4 * planes and stride == 1) else "conv"
    module = TorchBottle2neck(c_in, planes, width, scale, stype, stride, 1, shortcut)
    module = randomize(module, rng).float()
    params = block_params(module, np.float32)
    x = rng.standard_normal((n, c_in, h, h)).astype(np.float32)
    flops = block_flops(n, c_in, planes, width, scale, h, stype, stride)
    _setup(benchmark, f"bottle2neck {block} N={n}", row, threads, flops)
    kw = dict(scale=scale, stype=stype, stride=stride)
    if row == "reference":
        benchmark(r2n.bottle2neck, x, params, backend="reference", **kw)
    elif row == "cpu":
        args = _checks.bottle2neck_args("bottle2neck", x, params, scale, stype, stride, 1)
        benchmark(PreparedBottle2neck(params, args, np.float32), x)
    else:
        tx = torch.from_numpy(x)
        with torch.no_grad():
            if row == "torch-eager":
                benchmark(module, tx)
            else:
                benchmark(_torch_folded_block, tx, params, scale, stype, stride)
