"""PyTorch models of the official Res2Net / timm ``Bottle2neck``, and the glue that
turns them into r2n arguments. Shared by the tests and the benchmarks.

TorchChain and TorchBottle2neck (defined once, in ``r2n/_bench/torch_blocks.py``,
where ``r2n bench`` uses them too) follow the official Res2Net / timm
``Bottle2neck`` (split, hierarchical adds, conv + BN + ReLU, stage pooling, the
three shortcuts), written from that code and not from r2n's. ``randomize`` gives
them random convs and BN statistics; ``chain_arrays`` and ``block_params`` fold
each conv + BN with r2n into r2n's arguments.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import r2n
from r2n import Bottle2neckParams, FoldedConv
from r2n._bench.torch_blocks import TorchBottle2neck, TorchChain  # noqa: F401  (re-exported)


def t64(a):
    """NumPy array (any float dtype) -> float64 torch tensor, copied."""
    return None if a is None else torch.tensor(np.asarray(a, dtype=np.float64))


def randomize(module, rng):
    """Random convs and BN statistics/affines from ``rng``; eval mode, float64."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                w = rng.standard_normal(m.weight.shape) * np.sqrt(2.0 / fan_in)
                m.weight.copy_(torch.from_numpy(w))
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.from_numpy(rng.standard_normal(c)))
                m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, c)))
                m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c)))
                m.bias.copy_(torch.from_numpy(rng.standard_normal(c)))
    return module.double().eval()


def as_f64(t):
    return t.detach().numpy().astype(np.float64)


def _bn_stats(bn):
    """mean, var, weight, bias of a BatchNorm2d, as float64 arrays."""
    return as_f64(bn.running_mean), as_f64(bn.running_var), as_f64(bn.weight), as_f64(bn.bias)


def fold(conv, bn, dtype):
    """(weight, bias) of conv + BN folded by r2n in float64, cast to ``dtype``."""
    w, b = r2n.fold_batch_norm(as_f64(conv.weight), None, *_bn_stats(bn), eps=bn.eps)
    return w.astype(dtype), b.astype(dtype)


def chain_arrays(chain, dtype):
    """r2n's (weights, biases) lists for a TorchChain."""
    pairs = [fold(c, b, dtype) for c, b in zip(chain.convs, chain.bns, strict=True)]
    return [w for w, _ in pairs], [b for _, b in pairs]


def block_params(block, dtype):
    """Bottle2neckParams for a TorchBottle2neck, through FoldedConv.from_conv_bn."""

    def folded(conv, bn):
        f = FoldedConv.from_conv_bn(as_f64(conv.weight), *_bn_stats(bn), eps=bn.eps)
        return FoldedConv(f.weight.astype(dtype), f.bias.astype(dtype))

    weights, biases = chain_arrays(block.chain, dtype)
    ds = block.downsample
    return Bottle2neckParams(
        conv1=folded(block.conv1, block.bn1),
        chain_weights=weights,
        chain_biases=biases,
        conv3=folded(block.conv3, block.bn3),
        shortcut=None if ds is None else folded(ds[-2], ds[-1]),
        shortcut_avg_pool=block.avg_pool_shortcut,
    )


def torch_out(module, x):
    with torch.no_grad():
        return module(t64(x)).numpy()
