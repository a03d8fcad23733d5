"""The Res2Net chain and bottleneck on the GPU, fused (r2n.gpu.conv's kernels).

A framework runs the chain of a scale-4 block as ~15 kernels, each a pass over
memory: split, conv, BN, ReLU, add, conv, BN, ReLU, add, ..., pool, cat. Here
the chain is one launch per conv (``max(scale - 1, 1)`` launches; one in all
for a "stage" block, whose convs are independent: a grouped conv of
``groups * (scale - 1)`` groups over the stacked weights), each the
conv2d ladder's fastest applicable step (r2n.gpu.conv.pick_variant: step
4_pipelined, or 1_naive for groups of fewer than 8 channels):

* BN is folded into the weights; the epilogue adds the bias, applies ReLU and
  writes the chunk straight into its channel slice of the output (no split,
  no cat);
* for "normal" blocks conv i reads ``x_i + y_{i-1}``: both slices are summed
  as the input tile is loaded (``y_{i-1}`` from the output written by the
  previous launch), so the hierarchical add costs no pass of its own;
* the last chunk, copied ("normal") or 3x3 average-pooled with the block's
  stride ("stage"), is written by extra blocks of the FIRST conv's launch.

:data:`LADDER` shows what each fusion saves, one step at a time:
``1_unfused`` (:func:`chain_1_unfused`: the framework's passes: per conv a
split copy, the add, the conv + bias, a ReLU pass and a cat copy, then the
last chunk), ``2_fused_epilogue`` (:func:`chain_2_fused_epilogue`: bias and
ReLU in the conv's store, chunks read and written in their channel slices:
the add and the last chunk remain passes of their own) and ``3_fused``
(:func:`res2net_chain`: all of the above, one launch per conv; one in all
for a "stage" chain). All three
run the same conv kernel (r2n.gpu.conv.pick_variant).

``bottle2neck`` adds the 1x1 convs around it, on the 1x1 GEMM beside the
ladder (kernels/gemm_1x1.cu): conv1 (+ bias + ReLU), the chain, and conv3,
whose epilogue adds the identity and applies the final ReLU; a block with a
shortcut conv (a strided 1x1 conv, or the "d" form's pool + 1x1 conv) runs
conv3 and the shortcut as ONE GEMM over K = C_mid + C_in (kernels/conv_gemm.cu:
weights ``[W3 | Ws]``, bias ``b3 + bs``, the shortcut's input sampled at its
stride or pooled as it is loaded), so a "stage" block is 3 launches (conv1,
the chain, conv3 + shortcut) and a "normal" one 2 + (scale - 1).

:class:`PreparedChain` and :class:`PreparedBottle2neck` move and lay out the
weights once (on the device, C-contiguous, in the compute dtype) for repeated
calls; the public ops prepare on every call.

With ``precision="tf32"`` or ``"bf16"`` (float32 only) every conv of the chain
and the block runs on tensor cores instead (r2n.gpu.conv_tensor_core:
operands rounded, float32 accumulators and epilogues): the chain on step
5_tensor_core, conv1 and conv3 + shortcut on the tensor-core plane GEMM (the
pooled shortcut's averages, computed in float32, are rounded as operands),
except groups of fewer than 8 channels (step 1_naive, float32). With
r2n.gpu.conv.TC_IM2COL_MULTISTAGE set (not the default: untimed), the
chain's unsplit convs run on the multistage im2col kernel instead
(kernels/conv_im2col_tensor_core.cu), a "normal" chain's x_i + y_{i-1} then
summed by an elementwise pass before conv i (the kernel copies its input
with cp.async and cannot sum on load).

Batch-1 grids of few blocks split K (r2n.gpu.conv.split_k_for, on a GPU; the
emulator never splits unless a test passes ``k_splits``).
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from .._ladder import Step
from . import _runtime, elementwise, pool
from . import conv as _conv
from . import conv_tensor_core as _tc
from .conv import (
    GEMM_1X1,
    SIDE_AVG_POOL_3X3,
    SIDE_COPY,
    SIDE_NONE,
    SPLIT_K_VARIANTS,
    VARIANT_PRECISIONS,
    computes_in,
    conv2d_fused,
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
    variant : None (by shape and precision: the fastest applicable step) or a
        step of the conv2d ladder (r2n.gpu.conv.VARIANTS) for the 3x3 convs, one
        that computes in ``precision``
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
        chain_variants = [v for v in VARIANT_PRECISIONS if v != GEMM_1X1]
        if variant is None:  # may pick float32 for tf32 / bf16: see pick_variant
            variant = pick_variant((3, 3), (stride, stride), (1, 1), width // groups, precision)
        elif variant not in chain_variants or precision not in VARIANT_PRECISIONS[variant]:
            raise ValueError(
                f"r2n.res2net_chain: variant must be None or one of {chain_variants} that "
                f"computes in precision={precision!r}, got {variant!r}"
            )
        self.variant = variant
        # A "stage" chain's convs are independent (conv i reads x_i only), so
        # they run as ONE grouped conv: groups * nums groups over the first
        # nums * width channels, weights stacked along C_out (conv i's groups
        # are groups i * groups .. (i + 1) * groups - 1). Biases all present or
        # all absent (BN-folded blocks have them all); else one launch per conv.
        self.stage_weight = self.stage_bias = None
        with_bias = [b is not None for b in self.biases]
        if stype == "stage" and self.nums > 1 and len(set(with_bias)) == 1:
            self.stage_weight = xp.concatenate(self.weights, axis=0)
            if with_bias[0]:
                self.stage_bias = xp.concatenate(self.biases, axis=0)

    def launches(self) -> int:
        """Kernel launches per call (split-K adds none: it reduces in the same launch)."""
        return 1 if self.stage_weight is not None else self.nums

    def _multistage(self, i, summed, out, k_splits) -> bool:
        """Whether conv i of a "normal" chain, fed ``summed`` (N, width, H, W) as
        a plain input, runs on the multistage im2col kernel (its launch plan's
        kernel: not when it splits K)."""
        s = self.stride
        plan = launch_conv(self.ex, self.variant, summed, self.weights[i], self.biases[i], out,
                           stride=(s, s), padding=(1, 1), dilation=(1, 1), groups=self.groups,
                           out_c0=i * self.width, activation="relu", precision=self.precision,
                           k_splits=k_splits, op="res2net_chain", plan_only=True)  # fmt: skip
        return plan is not None and plan.file == _tc.IM2COL_FILE

    def __call__(self, x, out=None, *, k_splits=None):
        """x (N, scale*width, H, W) -> out (N, scale*width, H_out, W_out), a new array
        unless ``out`` (C-contiguous, that shape, x's dtype, not overlapping x: the
        convs read x while others write out) is given. ``k_splits``: as
        r2n.gpu.conv.launch_conv's, for every conv whose variant splits (tests
        force splits)."""
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
        precision = self.precision if self.variant == "5_tensor_core" else "fp32"
        if self.variant not in SPLIT_K_VARIANTS:
            k_splits = None  # step 1_naive (groups of < 8 channels) never splits
        if self.stage_weight is not None:  # one grouped launch (see __init__)
            launch_conv(
                self.ex,
                self.variant,
                x,
                self.stage_weight,
                self.stage_bias,
                out,
                stride=(s, s),
                padding=(1, 1),
                dilation=(1, 1),
                groups=self.groups * nums,
                activation="relu",
                side_mode=SIDE_AVG_POOL_3X3,
                side_c0=nums * width,
                side_c=width,
                precision=precision,
                k_splits=k_splits,
                op="res2net_chain",
            )
            return out
        # With the multistage im2col kernel selected (tf32 / bf16), conv i > 0 of
        # a "normal" chain reads x_i + y_{i-1} summed by a pass of its own into
        # one buffer (float32, as step 5 sums on load: the same rounded
        # operands), since the kernel copies its input by cp.async and cannot
        # sum; where the kernel would not run (a split launch), the add stays
        # on load.
        summed = None
        if (
            not stage
            and nums > 1
            and precision != "fp32"
            and self.variant == "5_tensor_core"
            and _conv.TC_IM2COL_MULTISTAGE
        ):
            summed = self.ex.empty((n, width, h, w), x.dtype)
        for i in range(nums):
            chained = not stage and i > 0  # conv i reads x_i + y_{i-1}
            side = SIDE_NONE
            if i == 0 and self.scale > 1:
                side = SIDE_AVG_POOL_3X3 if stage else SIDE_COPY
            source, source_c0 = x, i * width
            if chained and summed is not None and self._multistage(i, summed, out, k_splits):
                chunk, previous = (
                    slice(i * width, (i + 1) * width),
                    slice((i - 1) * width, i * width),
                )
                self.ex.xp.add(x[:, chunk], out[:, previous], out=summed)
                source, source_c0, chained = summed, 0, False
            launch_conv(
                self.ex,
                self.variant,
                source,
                self.weights[i],
                self.biases[i],
                out,
                stride=(s, s),
                padding=(1, 1),
                dilation=(1, 1),
                groups=self.groups,
                x_c0=source_c0,
                add=out if chained else None,
                add_c0=(i - 1) * width if chained else 0,
                out_c0=i * width,
                activation="relu",
                side_mode=side,
                side_c0=nums * width,
                side_c=width if side != SIDE_NONE else 0,
                precision=precision,
                k_splits=k_splits,
                op="res2net_chain",
            )
        return out


# --------------------------------------------------------------------------- #
# The chain's ladder: what each fusion saves (res2net_chain is its last step)
# --------------------------------------------------------------------------- #


def _chain_setup(x, weights, biases, executor):
    """(executor, x C-contiguous, weights and biases on the device in x's dtype)."""
    ex = _runtime.executor() if executor is None else executor
    xp = ex.xp
    x = xp.ascontiguousarray(x)
    weights = [_device_array(xp, w, x.dtype) for w in weights]
    biases = [None] * len(weights) if biases is None else biases
    biases = [None if b is None else _device_array(xp, b, x.dtype) for b in biases]
    return ex, x, weights, biases


def _last_chunk(ex, x, stype, stride, width, nums):
    """The chain's last chunk, x[:, nums * width :] (a copy), 3x3 / stride / pad-1
    average-pooled (count_include_pad) for "stage" blocks, as one more pass."""
    chunk = ex.xp.ascontiguousarray(x[:, nums * width :])
    if stype != "stage":
        return chunk
    args = _checks.pool2d_args("res2net_chain", chunk, 3, stride, 1, False)
    return pool.avg_pool2d(chunk, count_include_pad=True, executor=ex, **args)


def chain_1_unfused(
    x, weights, biases, *, scale, stype, stride, groups, width, out_shape, executor=None
):
    """The chain as a framework runs it (BN folded): one pass per op.

    Per conv i: split (copy x_i out of x), add (x_i + y_{i-1}, "normal" blocks),
    conv2d + bias (r2n.gpu.conv's pick for the shape), ReLU (its own kernel), cat
    (copy y_i into the output); then the last chunk, copied or pooled, and copied
    into the output. The copies and the add are the array module's (CuPy's
    kernels on a GPU). Arguments as :func:`res2net_chain`.
    """
    ex, x, weights, biases = _chain_setup(x, weights, biases, executor)
    xp, nums = ex.xp, max(scale - 1, 1)
    out = ex.empty(out_shape, x.dtype)
    geometry = dict(stride=(stride, stride), padding=(1, 1), dilation=(1, 1), groups=groups)
    y = None
    for i in range(nums):
        chunk = slice(i * width, (i + 1) * width)
        sp = xp.ascontiguousarray(x[:, chunk])  # split
        if stype == "normal" and i > 0:
            sp = sp + y  # add
        shape = (out_shape[0], width, *out_shape[2:])
        y = conv2d_fused(sp, weights[i], biases[i], out_shape=shape, executor=ex, **geometry)
        y = elementwise.relu(y, executor=ex)
        out[:, chunk] = y  # cat
    if scale > 1:
        out[:, nums * width :] = _last_chunk(ex, x, stype, stride, width, nums)
    return out


def chain_2_fused_epilogue(
    x, weights, biases, *, scale, stype, stride, groups, width, out_shape, executor=None
):
    """Step 1 with the conv's epilogue fused: each conv reads its input chunk in
    place (a channel slice of x), adds the bias, applies ReLU and writes y_i
    straight into its channel slice of the output, so the split, the ReLU pass
    and the cat are gone. Still passes of their own: the add (into one buffer)
    and the last chunk. Arguments as :func:`res2net_chain`.
    """
    ex, x, weights, biases = _chain_setup(x, weights, biases, executor)
    xp, nums = ex.xp, max(scale - 1, 1)
    out = ex.empty(out_shape, x.dtype)
    variant = pick_variant((3, 3), (stride, stride), (1, 1), width // groups)
    summed = None
    for i in range(nums):
        source, source_c0 = x, i * width
        if stype == "normal" and i > 0:
            if summed is None:
                summed = ex.empty((x.shape[0], width, *x.shape[2:]), x.dtype)
            chunk, previous = slice(i * width, (i + 1) * width), slice((i - 1) * width, i * width)
            xp.add(x[:, chunk], out[:, previous], out=summed)  # add
            source, source_c0 = summed, 0
        launch_conv(
            ex,
            variant,
            source,
            weights[i],
            biases[i],
            out,
            stride=(stride, stride),
            padding=(1, 1),
            dilation=(1, 1),
            groups=groups,
            x_c0=source_c0,
            out_c0=i * width,
            activation="relu",
            op="res2net_chain",
        )
    if scale > 1:
        out[:, nums * width :] = _last_chunk(ex, x, stype, stride, width, nums)
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
        # conv1 and conv3 (+ shortcut) are 1x1 GEMMs in the block's precision
        # (tf32 / bf16: conv_gemm_tensor_core.cu), unless too few channels per
        # group for a tensor-core tile (computes_in).
        self._precision_1x1 = computes_in(GEMM_1X1, precision, self.conv1[0].shape[0])
        # conv3 + shortcut as ONE GEMM over K = C_mid + C_in (conv_gemm.cu):
        # weights [W3 | Ws], bias b3 + bs; the shortcut's input is sampled at
        # its stride or pooled on load. No shortcut conv: conv3 adds x itself.
        self.conv3_shortcut = None
        if self.shortcut is not None:
            (w3, b3), (ws, bs) = self.conv3, self.shortcut
            if b3 is None or bs is None:
                bias = bs if b3 is None else b3
            else:
                bias = xp.ascontiguousarray(xp.add(b3, bs))
            self.conv3_shortcut = (xp.concatenate([w3, ws], axis=1), bias)

    def launches(self) -> int:
        """Kernel launches per call (split-K adds none): conv1, the chain, conv3
        with the shortcut."""
        return 2 + self.chain.launches()

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

    def run(self, x, args, *, k_splits=None):
        """The block on checked arguments ``args`` (r2n._checks.bottle2neck_args);
        ``k_splits``: as r2n.gpu.conv.launch_conv's, for every conv (tests)."""
        ex = self.ex
        x = ex.xp.ascontiguousarray(x)
        one = (1, 1)
        gemm = dict(stride=one, padding=(0, 0), dilation=one, groups=1, activation="relu")
        gemm.update(precision=self._precision_1x1, k_splits=k_splits, op="bottle2neck")
        conv1 = args["conv1"]
        t1 = ex.empty(conv1["out_shape"], x.dtype)  # N, width*scale, H, W
        launch_conv(ex, GEMM_1X1, x, *self.conv1, t1, **gemm)
        t2 = ex.empty(args["chain"]["out_shape"], x.dtype)  # N, width*scale, H_out, W_out
        self.chain(t1, t2, k_splits=k_splits)
        out = ex.empty(args["out_shape"], x.dtype)  # N, C_out, H_out, W_out
        if self.conv3_shortcut is None:  # identity: conv3's epilogue adds x
            launch_conv(ex, GEMM_1X1, t2, *self.conv3, out, residual=x, **gemm)
            return out
        if self.shortcut_avg_pool:
            shortcut = (x, args["shortcut"]["pool"]["stride"], True)
        else:
            shortcut = (x, args["shortcut"]["conv"]["stride"], False)
        launch_conv(ex, GEMM_1X1, t2, *self.conv3_shortcut, out, shortcut=shortcut, **gemm)
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


#: The Res2Net chain's ladder (r2n._ladder.Step), in order: what fusing saves.
LADDER = (
    Step(
        "1_unfused",
        "a framework's passes: per conv a split copy, the add, conv + bias, ReLU, a cat copy",
        chain_1_unfused,
        source="r2n/gpu/res2net.py",
    ),
    Step(
        "2_fused_epilogue",
        "bias + ReLU in the conv's store, chunks read and written in place: no split, cat",
        chain_2_fused_epilogue,
        source="r2n/gpu/res2net.py",
    ),
    Step(
        "3_fused",
        "the add summed on load, the last chunk by the first launch: a launch per conv (stage: 1)",
        res2net_chain,
        source="r2n/gpu/res2net.py",
    ),
)
