"""One small, odd-shaped call of every public op, for the generic API tests.

``CASES[op](rng, dtype, n)`` returns ``(args, kwargs)`` for ``getattr(r2n, op)``
with batch ``n``; the first argument is the data tensor x. ``TORCH[op]`` is the
same call in PyTorch (for the NaN/Inf propagation test), where one exists as a
single functional call.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from r2n import Bottle2neckParams, FoldedConv
from r2n._bench import timing


def _r(rng, dtype, *shape):
    return rng.standard_normal(shape).astype(dtype)


def _conv(rng, dtype, c_out, c_in, k):
    return FoldedConv(_r(rng, dtype, c_out, c_in, k, k), _r(rng, dtype, c_out))


def _bottle2neck(rng, dtype, n):
    chain = [_conv(rng, dtype, 5, 5, 3) for _ in range(2)]
    params = Bottle2neckParams(
        conv1=_conv(rng, dtype, 15, 6, 1),
        chain_weights=[c.weight for c in chain],
        chain_biases=[c.bias for c in chain],
        conv3=_conv(rng, dtype, 8, 15, 1),
        shortcut=_conv(rng, dtype, 8, 6, 1),
        shortcut_avg_pool=True,
    )
    return (_r(rng, dtype, n, 6, 7, 9), params), dict(scale=3, stype="stage", stride=2)


CASES = {
    "conv2d": lambda rng, dt, n: (
        (_r(rng, dt, n, 15, 7, 9), _r(rng, dt, 6, 5, 3, 2), _r(rng, dt, 6)),
        dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=3),
    ),
    "linear": lambda rng, dt, n: ((_r(rng, dt, n, 15), _r(rng, dt, 4, 15), _r(rng, dt, 4)), {}),
    "batch_norm": lambda rng, dt, n: (
        (
            _r(rng, dt, n, 5, 7, 9),
            _r(rng, dt, 5),
            rng.uniform(0.5, 2, 5).astype(dt),
            _r(rng, dt, 5),
            _r(rng, dt, 5),
        ),
        dict(eps=1e-3),
    ),
    "fold_batch_norm": lambda rng, dt, n: (
        (
            _r(rng, dt, 5, 3, 3, 3),
            _r(rng, dt, 5),
            _r(rng, dt, 5),
            rng.uniform(0.5, 2, 5).astype(dt),
            _r(rng, dt, 5),
            _r(rng, dt, 5),
        ),
        {},
    ),
    "relu": lambda rng, dt, n: ((_r(rng, dt, n, 5, 7, 9),), {}),
    "leaky_relu": lambda rng, dt, n: ((_r(rng, dt, n, 5, 7, 9),), dict(negative_slope=0.2)),
    "sigmoid": lambda rng, dt, n: ((_r(rng, dt, n, 5, 7, 9),), {}),
    "max_pool2d": lambda rng, dt, n: (
        (_r(rng, dt, n, 5, 7, 9),),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    ),
    "avg_pool2d": lambda rng, dt, n: (
        (_r(rng, dt, n, 5, 7, 9),),
        dict(kernel_size=(3, 2), stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    ),
    "global_avg_pool2d": lambda rng, dt, n: ((_r(rng, dt, n, 5, 7, 9),), {}),
    "space_to_depth": lambda rng, dt, n: ((_r(rng, dt, n, 5, 8, 12),), dict(block_size=4)),
    "blur_pool2d": lambda rng, dt, n: ((_r(rng, dt, n, 5, 7, 9),), {}),
    "squeeze_excite": lambda rng, dt, n: (
        (
            _r(rng, dt, n, 6, 7, 9),
            _r(rng, dt, 3, 6, 1, 1),
            _r(rng, dt, 3),
            _r(rng, dt, 6, 3, 1, 1),
            _r(rng, dt, 6),
        ),
        {},
    ),
    "res2net_chain": lambda rng, dt, n: (
        (
            _r(rng, dt, n, 20, 7, 9),
            [_r(rng, dt, 5, 5, 3, 3) for _ in range(3)],
            [_r(rng, dt, 5) for _ in range(3)],
        ),
        dict(scale=4, stype="normal"),
    ),
    "bottle2neck": _bottle2neck,
}

# The data tensor of each op has a batch axis, except fold_batch_norm's weight.
BATCHED = [op for op in CASES if op != "fold_batch_norm"]


def _t(a):
    return torch.from_numpy(np.array(a))


TORCH = {
    "conv2d": lambda x, w, b, **kw: F.conv2d(_t(x), _t(w), _t(b), **kw),
    "linear": lambda x, w, b: F.linear(_t(x), _t(w), _t(b)),
    "batch_norm": lambda x, m, v, w, b, eps: F.batch_norm(
        _t(x), _t(m), _t(v), _t(w), _t(b), training=False, eps=eps
    ),
    "relu": lambda x: F.relu(_t(x)),
    "leaky_relu": lambda x, negative_slope: F.leaky_relu(_t(x), negative_slope),
    "sigmoid": lambda x: torch.sigmoid(_t(x)),
    "max_pool2d": lambda x, **kw: F.max_pool2d(_t(x), **kw),
    "avg_pool2d": lambda x, **kw: F.avg_pool2d(_t(x), **kw),
    "global_avg_pool2d": lambda x: _t(x).mean(dim=(2, 3)),
}


def all_arrays(obj):
    """Every NumPy array inside args (lists, tuples, dataclasses)."""
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from all_arrays(o)
    elif isinstance(obj, (FoldedConv, Bottle2neckParams)):
        for v in vars(obj).values():
            yield from all_arrays(v)


# args with fn applied to every array inside (structure kept): the bench's helper.
map_arrays = timing.convert
