"""Cases for GPU engineer A's ops, shared by the emulated and the real-GPU tests.

Each case is a public call ``r2n.<op>(*args, **kwargs)`` on small, odd shapes
(7x9 images, batch 1, 3 groups of 5 channels = 15 channels, ceil_mode and
padding edges). :func:`normalised` turns it into exactly what the API hands to
a backend, so the emulated tests can call ``r2n.gpu``'s implementations
directly with ``executor=EmuExecutor()``.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
from helpers import randn

import r2n
import r2n._backends
from r2n import _checks

#: Ops with numbered variants: op -> (module attribute holding the variants dict).
VARIANTS = {
    "global_avg_pool2d": ("pool", "VARIANTS"),
    "linear": ("layers", "VARIANTS"),
}


def _r(rng, *shape):
    """Standard normal float64 (cast to the dtype under test by the caller)."""
    return rng.standard_normal(shape)


def _pos(rng, *shape):
    return rng.uniform(0.5, 2.0, shape)


def _pool_cases(op):
    params = [
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
        dict(kernel_size=(3, 2), stride=2, padding=1, ceil_mode=True),
        dict(kernel_size=2, stride=2, padding=0, ceil_mode=False),
        dict(kernel_size=5, stride=3, padding=2, ceil_mode=True),
        dict(kernel_size=3, stride=1, padding=1, ceil_mode=False),
        dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), ceil_mode=True),
    ]
    cases = {}
    for i, p in enumerate(params):
        for cip in (True, False) if op == "avg_pool2d" else (None,):
            kw = dict(p) if cip is None else dict(p, count_include_pad=cip)
            name = f"{op}-{i}" + ("" if cip is None else f"-cip{int(cip)}")
            cases[name] = (op, lambda rng: (_r(rng, 1, 15, 7, 9),), kw)
    # ceil_mode with a kernel larger than the input (PyTorch: one output)
    cases[f"{op}-tiny-ceil"] = (
        op,
        lambda rng: (_r(rng, 2, 3, 1, 1),),
        dict(kernel_size=2, stride=2, padding=0, ceil_mode=True),
    )
    return cases


def all_cases():
    """name -> (op, make_args(rng) -> tuple of float64 arrays/None, kwargs)."""
    cases = {
        "relu": ("relu", lambda rng: (_r(rng, 1, 15, 7, 9),), {}),
        "relu-2d": ("relu", lambda rng: (_r(rng, 3, 5),), {}),
        "leaky_relu": (
            "leaky_relu",
            lambda rng: (_r(rng, 1, 15, 7, 9),),
            dict(negative_slope=0.2),
        ),
        "sigmoid": ("sigmoid", lambda rng: (_r(rng, 1, 15, 7, 9) * 30,), {}),
        "batch_norm": (
            "batch_norm",
            lambda rng: (
                _r(rng, 1, 15, 7, 9),
                _r(rng, 15),
                _pos(rng, 15),
                _r(rng, 15),
                _r(rng, 15),
            ),
            dict(eps=1e-3),
        ),
        "batch_norm-no-affine": (
            "batch_norm",
            lambda rng: (_r(rng, 2, 5, 11), _r(rng, 5), _pos(rng, 5), None, None),
            {},
        ),
        "batch_norm-2d": (
            "batch_norm",
            lambda rng: (_r(rng, 3, 5), _r(rng, 5), _pos(rng, 5), _r(rng, 5), None),
            {},
        ),
        "fold_batch_norm": (
            "fold_batch_norm",
            lambda rng: (
                _r(rng, 15, 5, 3, 3),
                _r(rng, 15),
                _r(rng, 15),
                _pos(rng, 15),
                _r(rng, 15),
                _r(rng, 15),
            ),
            {},
        ),
        "fold_batch_norm-linear-no-bias": (
            "fold_batch_norm",
            lambda rng: (_r(rng, 7, 4), None, _r(rng, 7), _pos(rng, 7), None, _r(rng, 7)),
            dict(eps=1e-3),
        ),
        **_pool_cases("max_pool2d"),
        **_pool_cases("avg_pool2d"),
        "global_avg_pool2d": ("global_avg_pool2d", lambda rng: (_r(rng, 1, 15, 7, 9),), {}),
        "global_avg_pool2d-1x1": ("global_avg_pool2d", lambda rng: (_r(rng, 2, 3, 1, 1),), {}),
        "global_avg_pool2d-wide": ("global_avg_pool2d", lambda rng: (_r(rng, 1, 17, 9, 11),), {}),
        "linear": ("linear", lambda rng: (_r(rng, 1, 15), _r(rng, 21, 15), _r(rng, 21)), {}),
        "linear-1d-no-bias": ("linear", lambda rng: (_r(rng, 37), _r(rng, 17, 37), None), {}),
        "linear-3d": ("linear", lambda rng: (_r(rng, 2, 9, 33), _r(rng, 5, 33), _r(rng, 5)), {}),
        "linear-no-inputs": ("linear", lambda rng: (_r(rng, 3, 0), _r(rng, 4, 0), _r(rng, 4)), {}),
        "space_to_depth-4": ("space_to_depth", lambda rng: (_r(rng, 1, 15, 8, 12),), {}),
        "space_to_depth-2": (
            "space_to_depth",
            lambda rng: (_r(rng, 2, 3, 14, 6),),
            dict(block_size=2),
        ),
        "space_to_depth-1": (
            "space_to_depth",
            lambda rng: (_r(rng, 1, 3, 7, 9),),
            dict(block_size=1),
        ),
        "blur_pool2d": ("blur_pool2d", lambda rng: (_r(rng, 1, 15, 7, 9),), {}),
        "blur_pool2d-2x2": ("blur_pool2d", lambda rng: (_r(rng, 2, 3, 2, 2),), {}),
        "blur_pool2d-8x3": ("blur_pool2d", lambda rng: (_r(rng, 1, 2, 8, 3),), {}),
        "squeeze_excite": (
            "squeeze_excite",
            lambda rng: (
                _r(rng, 1, 15, 7, 9),
                _r(rng, 5, 15, 1, 1),
                _r(rng, 5),
                _r(rng, 15, 5, 1, 1),
                _r(rng, 15),
            ),
            {},
        ),
        "squeeze_excite-no-bias": (
            "squeeze_excite",
            lambda rng: (
                _r(rng, 2, 6, 1, 1),
                _r(rng, 3, 6, 1, 1),
                None,
                _r(rng, 6, 3, 1, 1),
                None,
            ),
            {},
        ),
    }
    return cases


CASES = all_cases()


def cast(args, dtype, xp=np):
    """args with every array as a C-contiguous ``dtype`` array of ``xp``."""
    return tuple(None if a is None else xp.asarray(a, dtype=dtype) for a in args)


def normalised(op, args, kwargs):
    """What ``r2n.<op>(*args, **kwargs)`` passes to a backend: (args, normalised kwargs)."""
    captured = {}

    def capture(*a, **kw):
        captured["call"] = (a, kw)

    with mock.patch.object(r2n._backends, "resolve", lambda *_: capture):
        getattr(r2n, op)(*args, **kwargs)
    return captured["call"]


# --------------------------------------------------------------------------- #
# conv2d and res2net_chain cases (tests/test_gpu_conv_emulated.py and
# tests/test_gpu_conv_device.py): tuples, so one list reads as a table
# --------------------------------------------------------------------------- #


def conv_id(case) -> str:
    """Test id of a conv case (n, c_in, h, w, c_out, (kh, kw), stride, padding,
    dilation, groups)."""
    n, ci, h, w, co, k, s, p, d, g = case
    return f"{n}x{ci}x{h}x{w}-{co}-k{k[0]}{k[1]}-s{s[0]}{s[1]}-p{p[0]}{p[1]}-d{d[0]}{d[1]}-g{g}"


def conv_inputs(rng, case, dtype):
    """Host x, weight, bias of a conv case (fresh random values) and its
    normalised arguments (r2n._checks.conv2d_args)."""
    n, c_in, h, w, c_out, (kh, kw), stride, padding, dilation, groups = case
    x = randn(rng, n, c_in, h, w, dtype=dtype)
    weight = randn(rng, c_out, c_in // groups, kh, kw, dtype=dtype)
    bias = randn(rng, c_out, dtype=dtype)
    args = _checks.conv2d_args("conv2d", x, weight, bias, stride, padding, dilation, groups)
    return x, weight, bias, args


def chain_id(case) -> str:
    """Test id of a chain case (stype, stride, scale, groups, width, n, h, w)."""
    stype, stride, scale, groups, width, n, h, w = case
    return f"{stype}-s{stride}-scale{scale}-g{groups}-w{width}-{n}x{h}x{w}"


def chain_inputs(rng, case, dtype, biases=True):
    """Host x, chain weights and biases (None with ``biases=False``) of a chain
    case and its normalised arguments (r2n._checks.chain_args)."""
    stype, stride, scale, groups, width, n, h, w = case
    nums = max(scale - 1, 1)
    x = randn(rng, n, scale * width, h, w, dtype=dtype)
    weights = [randn(rng, width, width // groups, 3, 3, dtype=dtype) / 3 for _ in range(nums)]
    bias = [randn(rng, width, dtype=dtype) for _ in range(nums)] if biases else None
    args = _checks.chain_args("res2net_chain", x, weights, bias, scale, stype, stride, groups)
    return x, weights, bias, args
