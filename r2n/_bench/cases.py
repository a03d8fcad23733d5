"""The benchmark shapes of ``r2n bench``: ops at Res2Net-50 (26w x 4s) sizes.

Each :class:`BenchCase` makes its float64 inputs, knows its FLOPs
(multiply-adds count 2) and its minimal memory traffic (every input, weight
and output read or written once, float32), and builds the callables of each
row: an r2n backend on host or device arrays, PyTorch eager or BN-folded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import _api
from ..params import Bottle2neckParams, FoldedConv
from . import torch_models
from .torch_import import import_torch

FLOAT32_BYTES = 4


class Skip(Exception):
    """A row or case that cannot run here; the message is its status."""


#: op names accepted by ``r2n bench --op`` (besides "model", the speedup model).
OPS = ("conv2d", "res2net_chain", "bottle2neck", "res2net50_26w_4s")


@dataclass
class BenchCase:
    """One op at one shape.

    Attributes
    ----------
    op : "conv2d", "res2net_chain", "bottle2neck" or "res2net50_26w_4s"
    label : the shape, e.g. "3x3 26->26 N=1 56x56"
    flops : multiply-adds x 2
    min_bytes : float32 bytes of inputs + weights + output, each once
    make : rng -> (args, kwargs) of the r2n op, float64 NumPy arrays
    torch_forms : PyTorch rows: ("eager",) or ("eager", "folded")
    tol : relative-error tolerance of float32 rows against the float64 reference
    engines : other engines with a runner for this case ("onnxruntime", "openvino")
    """

    op: str
    label: str
    flops: int
    min_bytes: int
    make: Callable
    torch_forms: tuple = ("eager",)
    tol: float = 1e-5
    extra: dict = field(default_factory=dict)
    engines: tuple = ()

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOPs per minimal byte."""
        return self.flops / self.min_bytes

    def reference(self, args, kwargs):
        """The float64 truth (reference backend)."""
        return getattr(_api, self.op)(*args, backend="reference", **kwargs)

    def r2n_runner(self, args, kwargs, backend: str) -> Callable:
        """() -> output of the r2n op on ``backend`` (args already on its device)."""
        fn = getattr(_api, self.op)
        return lambda: fn(*args, backend=backend, **kwargs)

    def torch_runner(self, args32, kwargs, form: str, device: str) -> Callable:
        """() -> tensor: PyTorch ``form`` ("eager"/"folded") on ``device``."""
        torch = import_torch()
        t = _to_torch(args32, torch, device)
        if self.op == "conv2d":
            import torch.nn.functional as F

            x, w, b = t
            return _no_grad(torch, lambda: F.conv2d(x, w, b, **kwargs))
        if self.op == "global_avg_pool2d":
            (x,) = t
            return _no_grad(torch, lambda: x.mean((2, 3)))
        if self.op == "linear":
            import torch.nn.functional as F

            x, w, b = t
            return _no_grad(torch, lambda: F.linear(x, w, b))
        if self.op == "res2net_chain":
            x, ws, bs = t
            if form == "folded":
                return _no_grad(torch, lambda: torch_models.folded_chain(x, ws, bs, **kwargs))
            module = torch_models.eager_chain(args32[1], args32[2], **kwargs).to(device)
            return _no_grad(torch, lambda: module(x))
        if self.op == "bottle2neck":
            x, params = t
            if form == "folded":
                return _no_grad(
                    torch, lambda: torch_models.folded_bottle2neck(x, params, **kwargs)
                )
            module = torch_models.eager_bottle2neck(args32[1], **kwargs).to(device)
            return _no_grad(torch, lambda: module(x))
        raise ValueError(f"no PyTorch form {form!r} of {self.op}")

    def engine_runner(self, args32, engine: str, threads: int) -> Callable:
        """() -> output of another engine (see ``engines``) at ``threads`` threads."""
        raise Skip(f"{engine}: no runner for {self.op}")


def _to_torch(args, torch, device):
    """NumPy arrays inside args -> tensors on device (nested, see timing.convert)."""
    from .timing import convert

    return convert(args, lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device))


def _no_grad(torch, fn):
    def run():
        with torch.no_grad():
            return fn()

    return run


# --------------------------------------------------------------------------- #
# FLOPs and bytes
# --------------------------------------------------------------------------- #


def conv_flops(n, c_in, c_out, k, h_out, w_out, groups=1) -> int:
    """Multiply-adds x 2 of a k x k conv producing (n, c_out, h_out, w_out)."""
    return 2 * n * c_out * (c_in // groups) * k * k * h_out * w_out


def chain_flops(n, width, scale, h, stride, groups=1) -> int:
    """The chain's 3x3 convs (the adds and the pool are not counted)."""
    ho = (h - 1) // stride + 1
    return max(scale - 1, 1) * conv_flops(n, width, width, 3, ho, ho, groups)


def block_flops(n, c_in, planes, width, scale, h, stride, shortcut) -> int:
    """conv1 + chain + conv3 (+ the shortcut conv) of a bottleneck, square maps."""
    ho = (h - 1) // stride + 1
    c_out = 4 * planes
    flops = conv_flops(n, c_in, width * scale, 1, h, h)
    flops += chain_flops(n, width, scale, h, stride)
    flops += conv_flops(n, width * scale, c_out, 1, ho, ho)
    if shortcut:
        flops += conv_flops(n, c_in, c_out, 1, ho, ho)
    return flops


def _nbytes(*shapes: tuple) -> int:
    """float32 bytes of arrays of these shapes, each once."""
    return FLOAT32_BYTES * sum(int(np.prod(shape)) for shape in shapes)


# --------------------------------------------------------------------------- #
# Cases
# --------------------------------------------------------------------------- #


def _randn(rng, *shape):
    return rng.standard_normal(shape)


def conv_case(n, c_in, c_out, k, hw, groups=1, stride=1, *, padding=None, dilation=1) -> BenchCase:
    """conv2d with a bias (a BN-folded conv).

    ``k`` and ``hw`` are ints (square) or (h, w) pairs; ``padding`` defaults to
    ``dilation * (k // 2)`` (the output keeps the input's size at stride 1)."""
    kh, kw = (k, k) if isinstance(k, int) else k
    h, w = (hw, hw) if isinstance(hw, int) else hw
    if padding is None:
        padding = (dilation * (kh // 2), dilation * (kw // 2))
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    ho = (h + 2 * ph - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * pw - dilation * (kw - 1) - 1) // stride + 1
    w_shape = (c_out, c_in // groups, kh, kw)

    def make(rng):
        x = _randn(rng, n, c_in, h, w)
        wt = _randn(rng, *w_shape) / np.sqrt(np.prod(w_shape[1:]))
        kwargs = dict(stride=stride, padding=(ph, pw), groups=groups)
        if dilation != 1:
            kwargs["dilation"] = dilation
        return (x, wt, _randn(rng, c_out)), kwargs

    g = f" groups={groups}" if groups > 1 else ""
    s = f" s{stride}" if stride > 1 else ""
    if (ph, pw) != (dilation * (kh // 2), dilation * (kw // 2)):
        s += f" p{ph}" if ph == pw else f" p{ph},{pw}"
    s += f" d{dilation}" if dilation > 1 else ""
    label = f"{kh}x{kw}{g} {c_in}->{c_out} N={n} {h}x{w}{s}"
    flops = 2 * n * c_out * (c_in // groups) * kh * kw * ho * wo  # conv_flops, kH != kW too
    nbytes = _nbytes((n, c_in, h, w), w_shape, (c_out,), (n, c_out, ho, wo))
    return BenchCase("conv2d", label, flops, nbytes, make)


def chain_case(n, width, scale, hw, stype, stride, name="", groups=1) -> BenchCase:
    """res2net_chain with folded weights (width, width // groups, 3, 3) and biases;
    ``hw`` an int (square maps) or an (h, w) pair."""
    nums = max(scale - 1, 1)
    h, w = (hw, hw) if isinstance(hw, int) else hw
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    w_shape = (width, width // groups, 3, 3)

    def make(rng):
        x = _randn(rng, n, width * scale, h, w)
        fan_in = 9 * (width // groups)
        ws = [_randn(rng, *w_shape) / np.sqrt(fan_in) for _ in range(nums)]
        bs = [_randn(rng, width) for _ in range(nums)]
        kwargs = dict(scale=scale, stype=stype, stride=stride)
        if groups != 1:
            kwargs["groups"] = groups
        return (x, ws, bs), kwargs

    label = f"{name} N={n} {width}w x {scale}s {h}x{w} {stype}" + (
        f" s{stride}" if stride > 1 else ""
    )
    label += f" groups={groups}" if groups > 1 else ""
    nbytes = _nbytes(
        (n, width * scale, h, w),
        (nums, *w_shape),
        (nums, width),
        (n, width * scale, ho, wo),
    )
    # chain_flops for h x w maps: the 3x3 convs (the adds and the pool are not counted)
    flops = nums * 2 * n * width * (width // groups) * 9 * ho * wo
    return BenchCase("res2net_chain", label.strip(), flops, nbytes, make, ("eager", "folded"))


def global_avg_pool_case(n, c, h, w) -> BenchCase:
    """global_avg_pool2d of (n, c, h, w): one add per input element (the divide
    per output is not counted); memory-bound (0.25 FLOP per byte)."""

    def make(rng):
        return (_randn(rng, n, c, h, w),), {}

    flops = n * c * h * w
    nbytes = _nbytes((n, c, h, w), (n, c))
    return BenchCase("global_avg_pool2d", f"N={n} {c}x{h}x{w}", flops, nbytes, make)


def linear_case(n, in_features, out_features) -> BenchCase:
    """linear (n, in_features) -> (n, out_features) with a bias (the classifier)."""

    def make(rng):
        x = _randn(rng, n, in_features)
        weight = _randn(rng, out_features, in_features) / np.sqrt(in_features)
        return (x, weight, _randn(rng, out_features)), {}

    flops = 2 * n * in_features * out_features
    nbytes = _nbytes(
        (n, in_features), (out_features, in_features), (out_features,), (n, out_features)
    )
    label = f"N={n} {in_features}->{out_features}"
    return BenchCase("linear", label, flops, nbytes, make)


def make_block_params(rng, c_in, planes, width, scale, stride):
    """Random Bottle2neckParams (float64) of a Res2Net-50 block; a conv shortcut
    when the channels or the stride change, else the identity."""
    c_out = 4 * planes
    nums = max(scale - 1, 1)

    def conv(co, ci, k):
        return FoldedConv(_randn(rng, co, ci, k, k) / np.sqrt(ci * k * k), _randn(rng, co))

    chain = [conv(width, width, 3) for _ in range(nums)]
    return Bottle2neckParams(
        conv1=conv(width * scale, c_in, 1),
        chain_weights=[c.weight for c in chain],
        chain_biases=[c.bias for c in chain],
        conv3=conv(c_out, width * scale, 1),
        shortcut=None if (c_in == c_out and stride == 1) else conv(c_out, c_in, 1),
    )


def block_case(n, c_in, planes, width, scale, hw, stype, stride, name="") -> BenchCase:
    """bottle2neck of Res2Net-50 shape (conv shortcut when needed)."""
    c_out = 4 * planes
    ho = (hw - 1) // stride + 1
    shortcut = c_in != c_out or stride != 1

    def make(rng):
        params = make_block_params(rng, c_in, planes, width, scale, stride)
        x = _randn(rng, n, c_in, hw, hw)
        return (x, params), dict(scale=scale, stype=stype, stride=stride)

    nums = max(scale - 1, 1)
    weights = (
        c_in * width * scale
        + width * scale
        + nums * (width * width * 9 + width)
        + width * scale * c_out
        + c_out
        + (c_in * c_out + c_out if shortcut else 0)
    )
    nbytes = FLOAT32_BYTES * (n * c_in * hw * hw + weights + n * c_out * ho * ho)
    label = f"{name} N={n} {c_in}->{c_out} {width}w x {scale}s {hw}x{hw} {stype}" + (
        f" s{stride}" if stride > 1 else ""
    )
    flops = block_flops(n, c_in, planes, width, scale, hw, stride, shortcut)
    extra = dict(block=(c_in, planes, width, scale, hw, stype, stride), n=n)
    return BenchCase(
        "bottle2neck", label.strip(), flops, nbytes, make, ("eager", "folded"), extra=extra
    )


#: Res2Net-50 (26w x 4s): (blocks, planes) per stage.
RES2NET50_STAGES = ((3, 64), (4, 128), (6, 256), (3, 512))


def res2net50_flops(n: int, hw: int, base_width=26, scale=4, classes=1000) -> int:
    """FLOPs of res2net50_26w_4s on (n, 3, hw, hw): stem, 16 bottlenecks, fc
    (convs and fc only: BN is folded, pools and adds are not counted)."""
    h = (hw + 2 * 3 - 7) // 2 + 1  # stem 7x7 s2
    flops = conv_flops(n, 3, 64, 7, h, h)
    h = (h + 2 - 3) // 2 + 1  # max pool 3x3 s2
    c_in = 64
    for stage, (blocks, planes) in enumerate(RES2NET50_STAGES):
        width = planes * base_width // 64
        for b in range(blocks):
            stride = 2 if (b == 0 and stage > 0) else 1
            shortcut = b == 0
            flops += block_flops(n, c_in, planes, width, scale, h, stride, shortcut)
            h = (h - 1) // stride + 1
            c_in = 4 * planes
    return flops + 2 * n * c_in * classes
