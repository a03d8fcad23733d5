"""The Res2Net chain and bottleneck on the GPU, fused (kernels/conv.cu).

A framework runs the chain of a scale-4 block as ~15 kernels, each a pass over
memory: split, conv, BN, ReLU, add, conv, BN, ReLU, add, ..., pool, cat. Here
the chain is one launch per conv (``max(scale - 1, 1)`` launches), each
variant 2 (or 1, for tiny groups) of r2n.gpu.conv:

* BN is folded into the weights; the epilogue adds the bias, applies ReLU and
  writes the chunk straight into its channel slice of the output (no split,
  no cat);
* for "normal" blocks conv i reads ``x_i + y_{i-1}``: both slices are summed
  as the input tile is loaded (``y_{i-1}`` from the output written by the
  previous launch), so the hierarchical add costs no pass of its own;
* the last chunk, copied ("normal") or 3x3 average-pooled with the block's
  stride ("stage"), is written by extra blocks of the FIRST conv's launch.

``bottle2neck`` adds the 1x1 convs around it, all variant 3 (GEMM): conv1
(+ bias + ReLU), the chain, the shortcut (a 1x1 conv; its stride-s form runs
through variant 2; the "d" form pools on load, see conv2d_avgpool_gemm_1x1),
and conv3, whose epilogue adds the shortcut and applies the final ReLU.

:class:`PreparedChain` and :class:`PreparedBottle2neck` move and lay out the
weights once (on the device, C-contiguous, in the compute dtype) for repeated
calls; the public ops prepare on every call.

With ``precision="tf32"`` or ``"bf16"`` (float32 only) every conv of the chain
and the block runs on variant 4_tensor_core instead (r2n.gpu.conv_tensor_core:
operands rounded, float32 accumulators and epilogues), except groups of fewer
than 8 channels (variant 1, float32) and the "d" shortcut's pooled 1x1 conv
(float32).
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from . import _runtime
from .conv import (
    SIDE_AVG_POOL_3X3,
    SIDE_COPY,
    SIDE_NONE,
    VARIANT_PRECISIONS,
    launch_conv,
    pick_variant,
)


def _device_array(xp, a, dtype):
    """``a`` on the executor's device as a C-contiguous array of ``dtype``."""
    return xp.ascontiguousarray(xp.asarray(a, dtype=dtype))


class PreparedChain:
    """The weights of one Res2Net chain, on the device, for repeated calls.

    Parameters
    ----------
    weights : n = max(scale - 1, 1) arrays (width, width // groups, 3, 3), BN folded
    biases : n arrays (width,) or None
    scale, stype, stride, groups, width : as r2n._checks.chain_args
    dtype : float32 or float64, the dtype of the inputs
    executor : None (the current GPU's) or an executor (the test emulator)
    variant : None (by shape and precision) or "1_direct" / "2_implicit_gemm" /
        "4_tensor_core" for the 3x3 convs, one that computes in ``precision``
    precision : "fp32" (default), "tf32" or "bf16" (see r2n.gpu.conv.conv2d_fused)
    """

    def __init__(
        self,
        weights,
        biases,
        *,
        scale,
        stype,
        stride,
        groups,
        width,
        dtype,
        executor=None,
        variant=None,
        precision="fp32",
    ):
        self.precision = _checks.precision_arg("res2net_chain", precision, "cupy", dtype)
        self.ex = _runtime.executor() if executor is None else executor
        xp = self.ex.xp
        self.scale, self.stype, self.stride, self.groups = scale, stype, stride, groups
        self.width, self.dtype = width, np.dtype(dtype)
        self.nums = max(scale - 1, 1)
        self.weights = [_device_array(xp, weights[i], dtype) for i in range(self.nums)]
        self.biases = [
            None if biases is None else _device_array(xp, biases[i], dtype)
            for i in range(self.nums)
        ]
        chain_variants = [v for v in VARIANT_PRECISIONS if v != "3_gemm_1x1"]
        if variant is None:  # may pick float32 for tf32 / bf16: see pick_variant
            variant = pick_variant((3, 3), (stride, stride), (1, 1), width // groups, precision)
        elif variant not in chain_variants or precision not in VARIANT_PRECISIONS[variant]:
            raise ValueError(
                f"r2n.res2net_chain: variant must be None or one of {chain_variants} that "
                f"computes in precision={precision!r}, got {variant!r}"
            )
        self.variant = variant

    def __call__(self, x, out=None):
        """x (N, scale*width, H, W) -> out (N, scale*width, H_out, W_out), a new array
        unless ``out`` (C-contiguous, that shape, x's dtype, not overlapping x: the
        convs read x while others write out) is given."""
        channels = self.scale * self.width
        ok = (
            x.ndim == 4
            and x.shape[1] == channels
            and np.dtype(x.dtype) == self.dtype
            and x.shape[2] >= 1
            and x.shape[3] >= 1
        )
        if not ok:
            raise ValueError(
                f"r2n.res2net_chain: x must be a {self.dtype} array of shape "
                f"(N, {channels}, H >= 1, W >= 1), got {x.dtype} {tuple(x.shape)}"
            )
        x = self.ex.xp.ascontiguousarray(x)
        n, _, h, w = x.shape
        s, width, nums = self.stride, self.width, self.nums
        h_out = _checks.conv_output_size("res2net_chain", "H", h, 3, s, 1, 1)
        w_out = _checks.conv_output_size("res2net_chain", "W", w, 3, s, 1, 1)
        out_shape = (n, channels, h_out, w_out)
        if out is None:
            out = self.ex.empty(out_shape, x.dtype)
        elif (
            tuple(out.shape) != out_shape
            or np.dtype(out.dtype) != self.dtype
            or self.ex.xp.may_share_memory(out, x)
        ):
            overlap = ", overlapping x" if self.ex.xp.may_share_memory(out, x) else ""
            raise ValueError(
                f"r2n.res2net_chain: out must be {self.dtype} {out_shape} not overlapping x, "
                f"got {out.dtype} {tuple(out.shape)}{overlap}"
            )
        stage = self.stype == "stage"
        for i in range(nums):
            chained = not stage and i > 0  # conv i reads x_i + y_{i-1}
            side = SIDE_NONE
            if i == 0 and self.scale > 1:
                side = SIDE_AVG_POOL_3X3 if stage else SIDE_COPY
            launch_conv(
                self.ex,
                self.variant,
                x,
                self.weights[i],
                self.biases[i],
                out,
                stride=(s, s),
                padding=(1, 1),
                dilation=(1, 1),
                groups=self.groups,
                x_c0=i * width,
                add=out if chained else None,
                add_c0=(i - 1) * width if chained else 0,
                out_c0=i * width,
                activation="relu",
                side_mode=side,
                side_c0=nums * width,
                side_c=width if side != SIDE_NONE else 0,
                precision=self.precision if self.variant == "4_tensor_core" else "fp32",
                op="res2net_chain",
            )
        return out


def res2net_chain(
    x,
    weights,
    biases,
    *,
    scale,
    stype,
    stride,
    groups,
    width,
    out_shape,
    executor=None,
    variant=None,
    precision="fp32",
):
    """The fused chain; arguments as r2n.reference.res2net_chain.

    Parameters
    ----------
    x : (N, scale * width, H, W)
    weights : n = max(scale - 1, 1) arrays (width, width // groups, 3, 3)
    biases : n arrays (width,) or None
    scale, stype, stride, groups, width, out_shape : from r2n._checks.chain_args
    executor, variant, precision : see :class:`PreparedChain`

    Returns
    -------
    (N, scale * width, H_out, W_out)
    """
    chain = PreparedChain(
        weights,
        biases,
        scale=scale,
        stype=stype,
        stride=stride,
        groups=groups,
        width=width,
        dtype=x.dtype,
        executor=executor,
        variant=variant,
        precision=precision,
    )
    out = chain.ex.empty(out_shape, x.dtype)
    return chain(x, out)


class PreparedBottle2neck:
    """One bottleneck's weights on the device: a callable ``x -> y``.

    Parameters
    ----------
    params : r2n.Bottle2neckParams (BN folded; NumPy or device arrays)
    scale, stype, stride, groups : as r2n.bottle2neck
    dtype : the inputs' dtype (default: conv1's weight's)
    reuse_output : accepted for r2n._backends.prepare; every call returns a new array
    executor : None (the current GPU's) or an executor (the test emulator)
    precision : "fp32" (default), "tf32" or "bf16": the block's convs on tensor
        cores (module docstring)
    """

    def __init__(
        self,
        params,
        *,
        scale,
        stype="normal",
        stride=1,
        groups=1,
        dtype=None,
        reuse_output=False,
        executor=None,
        precision="fp32",
    ):
        dtype = np.dtype(params.conv1.weight.dtype if dtype is None else dtype)
        self.precision = _checks.precision_arg("bottle2neck", precision, "cupy", dtype)
        self.ex = _runtime.executor() if executor is None else executor
        xp = self.ex.xp
        self.dtype = dtype
        self.params = params
        self.scale, self.stype, self.stride, self.groups = scale, stype, stride, groups

        def conv(fc):
            if fc is None:
                return None
            bias = None if fc.bias is None else _device_array(xp, fc.bias, dtype)
            return (_device_array(xp, fc.weight, dtype), bias)

        self.conv1 = conv(params.conv1)
        self.conv3 = conv(params.conv3)
        self.shortcut = conv(params.shortcut)
        self.shortcut_avg_pool = bool(params.shortcut_avg_pool)
        width = self.conv1[0].shape[0] // scale
        self.chain = PreparedChain(
            params.chain_weights,
            params.chain_biases,
            scale=scale,
            stype=stype,
            stride=stride,
            groups=groups,
            width=width,
            dtype=dtype,
            executor=self.ex,
            precision=precision,
        )
        # conv1 and conv3 (1x1 GEMMs) and the plain shortcut, in the block's precision
        self._gemm_1x1 = "3_gemm_1x1" if precision == "fp32" else "4_tensor_core"

    def _args(self, x):
        """Check x against the weights (the public op's checks and errors)."""
        op = "bottle2neck"
        kind, want = _checks.array_kind(x), _checks.array_kind(self.conv1[0])
        if kind != want:
            raise TypeError(
                f"r2n.{op}: the block's weights are {want} arrays, so x must be one too; "
                f"got {type(x).__module__}.{type(x).__name__}"
            )
        if np.dtype(x.dtype) != self.dtype:
            raise TypeError(f"r2n.{op}: x has dtype {x.dtype}; the block holds {self.dtype}")
        return _checks.bottle2neck_args(
            op, x, self.params, self.scale, self.stype, self.stride, self.groups
        )

    def __call__(self, x):
        """x (N, C_in, H, W) -> (N, C_out, H_out, W_out), a new array."""
        args = self._args(x)
        return self.run(x, args)

    def run(self, x, args):
        """The block on checked arguments ``args`` (r2n._checks.bottle2neck_args)."""
        ex = self.ex
        x = ex.xp.ascontiguousarray(x)
        one = (1, 1)
        conv1 = args["conv1"]
        t1 = ex.empty(conv1["out_shape"], x.dtype)  # N, width*scale, H, W
        launch_conv(
            ex,
            self._gemm_1x1,
            x,
            *self.conv1,
            t1,
            stride=one,
            padding=(0, 0),
            dilation=one,
            groups=1,
            activation="relu",
            precision=self.precision,
            op="bottle2neck",
        )
        t2 = self.chain(t1)  # N, width*scale, H_out, W_out
        out = ex.empty(args["out_shape"], x.dtype)  # N, C_out, H_out, W_out
        if self.shortcut is None:
            identity = x
        else:
            identity = ex.empty(args["out_shape"], x.dtype)
            conv = args["shortcut"]["conv"]
            precision = "fp32"  # the pooled shortcut has no tensor-core form
            if self.shortcut_avg_pool:
                pool = args["shortcut"]["pool"]
                variant, stride = "avgpool_1x1", pool["stride"]
            else:
                stride = conv["stride"]
                c_out = identity.shape[1]
                variant = pick_variant((1, 1), stride, (0, 0), c_out, self.precision)
                precision = self.precision if variant == "4_tensor_core" else "fp32"
            launch_conv(
                ex,
                variant,
                x,
                *self.shortcut,
                identity,
                stride=stride,
                padding=(0, 0),
                dilation=one,
                groups=1,
                precision=precision,
                op="bottle2neck",
            )
        launch_conv(
            ex,
            self._gemm_1x1,
            t2,
            *self.conv3,
            out,
            stride=one,
            padding=(0, 0),
            dilation=one,
            groups=1,
            residual=identity,
            activation="relu",
            precision=self.precision,
            op="bottle2neck",
        )
        return out


def bottle2neck(
    x, params, *, conv1, chain, conv3, shortcut, out_shape, executor=None, precision="fp32"
):
    """The fused bottleneck; arguments as r2n.reference.bottle2neck.

    Parameters
    ----------
    x : (N, C_in, H, W)
    params : r2n.Bottle2neckParams (BN folded)
    conv1, chain, conv3, shortcut, out_shape : from r2n._checks.bottle2neck_args
    executor : None (the current GPU's) or an executor (the test emulator)
    precision : "fp32" (default), "tf32" or "bf16" (see :class:`PreparedBottle2neck`)

    Returns
    -------
    (N, C_out, H_out, W_out)
    """
    block = PreparedBottle2neck(
        params,
        scale=chain["scale"],
        stype=chain["stype"],
        stride=chain["stride"],
        groups=chain["groups"],
        dtype=x.dtype,
        executor=executor,
        precision=precision,
    )
    args = dict(conv1=conv1, chain=chain, conv3=conv3, shortcut=shortcut, out_shape=out_shape)
    return block.run(x, args)


def prepare_bottle2neck(
    params, *, scale, stype, stride, groups, reuse_output=False, precision="fp32"
):
    """The ``PREPARE["bottle2neck"]`` factory (r2n._backends.prepare): the block's
    weights on the current GPU, float32 unless conv1's weight is float64."""
    return PreparedBottle2neck(
        params,
        scale=scale,
        stype=stype,
        stride=stride,
        groups=groups,
        reuse_output=reuse_output,
        precision=precision,
    )
