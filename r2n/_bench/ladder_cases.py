"""The shapes of ``r2n ladder``: Res2Net-50 defaults, and ``--shape`` per op.

Defaults (batch ``N``, 1 unless ``--batch``; ``--quick`` halves the maps of
the convs and the chain, 56x56 -> 28x28):

=====================  ===============================  ==============================
op                     case                             from
=====================  ===============================  ==============================
conv2d                 3x3 26->26, 56x56, pad 1         res2net50_26w_4s layer1: a
                                                        chain conv (width 26)
conv2d                 1x1 256->104, 56x56              res2net50_26w_4s layer1: conv1
                                                        (256 -> 4 x 26 channels)
conv2d                 3x3 groups=8 32->32, 56x56       res2next50 layer1: a chain
                                                        conv (8 groups of 4 channels)
res2net_chain          26w x 4s, 56x56, normal          res2net50_26w_4s layer1.1
global_avg_pool2d      2048x7x7                         the head of every Res2Net-50
linear                 2048->1000                       the classifier
=====================  ===============================  ==============================

``--shape`` replaces the op's defaults by one case (sizes joined by ``x``,
options after commas)::

    conv2d             NxC_INxHxW->C_OUT,k=K[,stride=S][,padding=P][,dilation=D][,groups=G]
                       K is 3 or 3x1 (kH x kW); padding defaults to dilation * (k // 2):
                       1x64x56x56->64,k=3,groups=64 is a depthwise conv
    res2net_chain      NxCxHxW,scale=S[,stype=stage][,stride=2][,groups=G]
                       C = S x width; stype "normal" (default) needs stride 1
    global_avg_pool2d  NxCxHxW
    linear             NxIN->OUT

Every case is an :class:`r2n._bench.cases.BenchCase` (inputs, FLOPs, minimal
bytes, the float64 reference, the PyTorch runner), checked here by
``r2n._checks`` (on arrays of zeros) so that a bad ``--shape`` is a usage
error before anything runs.
"""

from __future__ import annotations

import re

import numpy as np

from .. import _checks
from . import cases

#: op -> (name, where the shape comes from, factory(batch, hw) -> BenchCase) of the defaults.
DEFAULTS = {
    "conv2d": (
        (
            "3x3",
            "res2net50_26w_4s layer1 chain conv",
            lambda n, hw: cases.conv_case(n, 26, 26, 3, hw),
        ),
        (
            "1x1",
            "res2net50_26w_4s layer1 conv1",
            lambda n, hw: cases.conv_case(n, 256, 104, 1, hw),
        ),
        (
            "grouped",
            "res2next50 layer1 chain conv (8 groups)",
            lambda n, hw: cases.conv_case(n, 32, 32, 3, hw, groups=8),
        ),
    ),
    "res2net_chain": (
        (
            "layer1",
            "res2net50_26w_4s layer1.1",
            lambda n, hw: cases.chain_case(n, 26, 4, hw, "normal", 1, "layer1.1"),
        ),
    ),
    "global_avg_pool2d": (
        ("head", "Res2Net-50's head", lambda n, hw: cases.global_avg_pool_case(n, 2048, 7, 7)),
    ),
    "linear": (
        ("classifier", "Res2Net-50's classifier", lambda n, hw: cases.linear_case(n, 2048, 1000)),
    ),
}

#: op -> the ``--shape`` syntax (for help and messages).
SHAPE_SYNTAX = {
    "conv2d": "NxC_INxHxW->C_OUT,k=K[,stride=S][,padding=P][,dilation=D][,groups=G]",
    "res2net_chain": "NxCxHxW,scale=S[,stype=stage][,stride=S][,groups=G]",
    "global_avg_pool2d": "NxCxHxW",
    "linear": "NxIN->OUT",
}

_OPTIONS = {
    "conv2d": ("k", "stride", "padding", "dilation", "groups"),
    "res2net_chain": ("scale", "stype", "stride", "groups"),
    "global_avg_pool2d": (),
    "linear": (),
}


def default_cases(op: str, quick: bool, batch: int = 1) -> list[tuple[str, str, cases.BenchCase]]:
    """(name, origin, case) of ``op``'s default shapes (module docstring)."""
    hw = 28 if quick else 56
    return [(name, origin, make(batch, hw)) for name, origin, make in DEFAULTS[op]]


def parse_shape(op: str, text: str) -> cases.BenchCase:
    """The case ``--shape text`` describes for ``op`` (syntax in the module docstring).

    Raises
    ------
    ValueError naming the expected syntax, or r2n's own message for sizes
    that do not fit together (e.g. groups not dividing the channels).
    """
    head, *rest = [part.strip() for part in text.split(",")]
    options = {}
    for part in rest:
        key, sep, value = part.partition("=")
        if not sep or key not in _OPTIONS[op] or key in options:
            raise ValueError(
                f"--shape {text!r}: {part!r} is not one of {op}'s options "
                f"({', '.join(_OPTIONS[op]) or 'none'}); expected {SHAPE_SYNTAX[op]}"
            )
        options[key] = value.strip()
    try:
        case = _PARSERS[op](head, options)
    except _Syntax as e:
        raise ValueError(f"--shape {text!r}: {e}; expected {SHAPE_SYNTAX[op]}") from None
    check_shapes(case)
    return case


class _Syntax(ValueError):
    pass


def _sizes(text: str, count: int, what: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+(x\d+)*", text) or text.count("x") != count - 1:
        raise _Syntax(f"{what} must be {count} sizes joined by 'x', got {text!r}")
    sizes = tuple(int(v) for v in text.split("x"))
    if min(sizes) < 1:
        raise _Syntax(f"{what} must be >= 1, got {text!r}")
    return sizes


def _int(options: dict, key: str, default: int, minimum: int) -> int:
    value = options.get(key)
    if value is None:
        return default
    if not re.fullmatch(r"\d+", value) or int(value) < minimum:
        raise _Syntax(f"{key} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _arrow(head: str) -> tuple[str, str]:
    left, sep, right = head.partition("->")
    if not sep:
        raise _Syntax(f"{head!r} has no '->'")
    return left, right


def _conv(head: str, options: dict) -> cases.BenchCase:
    left, right = _arrow(head)
    n, c_in, h, w = _sizes(left, 4, "the input")
    (c_out,) = _sizes(right, 1, "C_OUT")
    if "k" not in options:
        raise _Syntax("k=K (the kernel size) is required")
    k = options["k"]
    kernel = _sizes(k, 2, "k") if "x" in k else _sizes(k, 1, "k") * 2
    padding = options.get("padding")
    if padding is not None:
        padding = _int(options, "padding", 0, 0)
    return cases.conv_case(
        n,
        c_in,
        c_out,
        kernel,
        (h, w),
        groups=_int(options, "groups", 1, 1),
        stride=_int(options, "stride", 1, 1),
        padding=padding,
        dilation=_int(options, "dilation", 1, 1),
    )


def _chain(head: str, options: dict) -> cases.BenchCase:
    n, c, h, w = _sizes(head, 4, "the input")
    if "scale" not in options:
        raise _Syntax("scale=S is required")
    scale = _int(options, "scale", 4, 1)
    stype = options.get("stype", "normal")
    if stype not in ("normal", "stage"):
        raise _Syntax(f"stype must be normal or stage, got {stype!r}")
    if c % scale:
        raise _Syntax(f"C={c} is not a multiple of scale={scale}")
    stride = _int(options, "stride", 1, 1)
    groups = _int(options, "groups", 1, 1)
    return cases.chain_case(n, c // scale, scale, (h, w), stype, stride, groups=groups)


def _pool(head: str, options: dict) -> cases.BenchCase:
    return cases.global_avg_pool_case(*_sizes(head, 4, "the input"))


def _linear(head: str, options: dict) -> cases.BenchCase:
    left, right = _arrow(head)
    n, features = _sizes(left, 2, "the input")
    (out,) = _sizes(right, 1, "OUT")
    return cases.linear_case(n, features, out)


_PARSERS = {
    "conv2d": _conv,
    "res2net_chain": _chain,
    "global_avg_pool2d": _pool,
    "linear": _linear,
}


def check_shapes(case: cases.BenchCase) -> dict:
    """``r2n._checks`` on the case's arrays, made as zeros (no random draws):
    the op's checked arguments, or r2n's ValueError for sizes that do not fit."""

    class _Zeros:
        def standard_normal(self, shape):
            return np.zeros(shape)

    args, kwargs = case.make(_Zeros())
    return checked_args(case.op, args, kwargs)


def checked_args(op: str, args: tuple, kwargs: dict) -> dict:
    """The op's arguments as ``r2n._checks`` normalises them for a backend
    (what a ladder step's ``run`` takes after the arrays; see r2n._ladder)."""
    if op == "conv2d":
        x, weight, bias = args
        return _checks.conv2d_args(
            op,
            x,
            weight,
            bias,
            kwargs.get("stride", 1),
            kwargs.get("padding", 0),
            kwargs.get("dilation", 1),
            kwargs.get("groups", 1),
        )
    if op == "res2net_chain":
        x, weights, biases = args
        return _checks.chain_args(
            op,
            x,
            weights,
            biases,
            kwargs["scale"],
            kwargs.get("stype", "normal"),
            kwargs.get("stride", 1),
            kwargs.get("groups", 1),
        )
    if op == "global_avg_pool2d":
        return _checks.image_args(op, args[0])
    if op == "linear":
        return _checks.linear_args(op, *args)
    raise ValueError(f"r2n ladder: no ladder op {op!r}")
