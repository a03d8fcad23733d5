"""The public ops: check the arguments once, pick a backend, run it.

Every function here has the same three steps:

1. ``r2n._checks.check_arrays``: all arrays are NumPy or all CuPy, all
   float32 or all float64 (TypeError otherwise);
2. the op's shape checks and output-shape arithmetic, also in ``r2n._checks``
   (ValueError on bad shapes or sizes);
3. ``r2n._backends.resolve`` picks the implementation from ``backend`` and the
   arrays' kind, and it runs on the checked, normalised arguments.

Outputs are new arrays of the inputs' type, dtype and device; inputs are never
modified, and may be non-contiguous, Fortran-ordered or read-only.
"""

from __future__ import annotations

from . import _backends, _checks


def _kind(op: str, arrays: dict, optional=()) -> str:
    """Step 1: check the arrays' kind and dtype; return "numpy" or "cupy".

    ``optional`` names the arguments that may be None; None for any other is a
    TypeError naming it.
    """
    kind, _ = _checks.check_arrays(op, arrays, optional)
    return kind


def _precision(op: str, precision, kind: str, x, args: dict) -> None:
    """Check ``precision=`` (r2n._checks.precision_arg) and pass it on to the
    backend when it is not the default "fp32" (only the gpu backend takes it)."""
    if _checks.precision_arg(op, precision, kind, x.dtype) != "fp32":
        args["precision"] = precision


# --------------------------------------------------------------------------- #
# Convolution and linear
# --------------------------------------------------------------------------- #


def conv2d(
    x,
    weight,
    bias=None,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    precision="fp32",
    backend=None,
):
    """2-D convolution (cross-correlation, as PyTorch's ``conv2d``), NCHW.

    Parameters
    ----------
    x : (N, C_in, H, W) array
    weight : (C_out, C_in // groups, kH, kW) array
    bias : (C_out,) array or None
    stride, dilation : int >= 1 or (h, w) pair
    padding : int >= 0 or (h, w) pair, zeros on both sides
    groups : int dividing C_in and C_out (groups == C_in is depthwise)
    precision : "fp32" (default: float32 / float64 arithmetic throughout), or
        "tf32" / "bf16": float32 CuPy arrays only, multiplied on the GPU's tensor
        cores with both operands rounded to TF32 (10 mantissa bits) or bfloat16
        (7 bits), accumulated in float32; the error bounds are in
        ``r2n.gpu.conv_tensor_core`` (about 0.6 * 2^-11 or 0.6 * 2^-8 relative,
        norm-wise, on random data). Anything else is a ValueError.
    backend : None, "reference", "cpu" or "gpu" (see ``r2n._backends``)

    Returns
    -------
    (N, C_out, H_out, W_out) with
    ``H_out = (H + 2*padding - dilation*(kH - 1) - 1) // stride + 1``.
    """
    kind = _kind("conv2d", {"x": x, "weight": weight, "bias": bias}, optional=("bias",))
    args = _checks.conv2d_args("conv2d", x, weight, bias, stride, padding, dilation, groups)
    _precision("conv2d", precision, kind, x, args)
    return _backends.resolve("conv2d", backend, kind)(x, weight, bias, **args)


def linear(x, weight, bias=None, *, backend=None):
    """Fully connected layer ``x @ weight.T + bias``.

    Parameters
    ----------
    x : (..., in_features) array, at least 1-D
    weight : (out_features, in_features) array
    bias : (out_features,) array or None

    Returns
    -------
    (..., out_features)
    """
    kind = _kind("linear", {"x": x, "weight": weight, "bias": bias}, optional=("bias",))
    args = _checks.linear_args("linear", x, weight, bias)
    return _backends.resolve("linear", backend, kind)(x, weight, bias, **args)


# --------------------------------------------------------------------------- #
# Batch norm
# --------------------------------------------------------------------------- #


def batch_norm(x, mean, var, weight=None, bias=None, *, eps=1e-5, backend=None):
    """Batch normalization in inference form, over axis 1.

    ``(x - mean) / sqrt(var + eps) * weight + bias`` per channel.

    Parameters
    ----------
    x : (N, C, ...) array, at least 2-D
    mean, var : (C,) running statistics
    weight, bias : (C,) or None (None: 1 and 0, BN without affine)
    eps : float >= 0

    Returns
    -------
    Array shaped like x.
    """
    arrays = {"x": x, "mean": mean, "var": var, "weight": weight, "bias": bias}
    kind = _kind("batch_norm", arrays, optional=("weight", "bias"))
    args = _checks.batch_norm_args("batch_norm", x, mean, var, weight, bias, eps)
    return _backends.resolve("batch_norm", backend, kind)(x, mean, var, weight, bias, **args)


def fold_batch_norm(
    conv_weight, conv_bias, mean, var, weight=None, bias=None, eps=1e-5, *, backend=None
):
    """Fold an inference BatchNorm into the conv (or linear) layer before it.

    Parameters
    ----------
    conv_weight : (C_out, ...) e.g. (C_out, C_in // groups, kH, kW)
    conv_bias : (C_out,) or None
    mean, var : (C_out,) running statistics of the BN
    weight, bias : (C_out,) BN affine parameters, or None (1 and 0)
    eps : float >= 0

    Returns
    -------
    (weight', bias') : new arrays, (C_out, ...) and (C_out,), such that
    ``conv2d(x, weight', bias') == batch_norm(conv2d(x, conv_weight, conv_bias), ...)``.
    """
    arrays = {
        "conv_weight": conv_weight,
        "conv_bias": conv_bias,
        "mean": mean,
        "var": var,
        "weight": weight,
        "bias": bias,
    }
    kind = _kind("fold_batch_norm", arrays, optional=("conv_bias", "weight", "bias"))
    args = _checks.fold_batch_norm_args(
        "fold_batch_norm", conv_weight, conv_bias, mean, var, weight, bias, eps
    )
    impl = _backends.resolve("fold_batch_norm", backend, kind)
    return impl(conv_weight, conv_bias, mean, var, weight, bias, **args)


# --------------------------------------------------------------------------- #
# Activations
# --------------------------------------------------------------------------- #


def relu(x, *, backend=None):
    """``max(x, 0)`` elementwise (NaN propagates). Any shape; returns a new array."""
    kind = _kind("relu", {"x": x})
    return _backends.resolve("relu", backend, kind)(x)


def leaky_relu(x, negative_slope=0.01, *, backend=None):
    """``x if x > 0 else negative_slope * x`` elementwise. Any shape; new array."""
    kind, dtype = _checks.check_arrays("leaky_relu", {"x": x}, optional=())
    slope = _checks.as_float("leaky_relu", "negative_slope", negative_slope, dtype=dtype)
    return _backends.resolve("leaky_relu", backend, kind)(x, negative_slope=slope)


def sigmoid(x, *, backend=None):
    """``1 / (1 + exp(-x))`` elementwise, without overflow. Any shape; new array."""
    kind = _kind("sigmoid", {"x": x})
    return _backends.resolve("sigmoid", backend, kind)(x)


# --------------------------------------------------------------------------- #
# Pooling
# --------------------------------------------------------------------------- #


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, *, backend=None):
    """2-D max pooling with PyTorch's output sizes and edge rules.

    Parameters
    ----------
    x : (N, C, H, W)
    kernel_size : int or (h, w) pair
    stride : int, (h, w) pair, or None (= kernel_size)
    padding : int or pair, at most half the kernel; padding never wins the max
    ceil_mode : round the output size up; a window starting in the padding is dropped

    Returns
    -------
    (N, C, H_out, W_out)
    """
    kind = _kind("max_pool2d", {"x": x})
    args = _checks.pool2d_args("max_pool2d", x, kernel_size, stride, padding, ceil_mode)
    return _backends.resolve("max_pool2d", backend, kind)(x, **args)


def avg_pool2d(
    x,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    *,
    backend=None,
):
    """2-D average pooling with PyTorch's output sizes and divisors.

    Parameters
    ----------
    x : (N, C, H, W)
    kernel_size, stride, padding, ceil_mode : as :func:`max_pool2d`
    count_include_pad : divide by the window clipped to the padded input (True)
        or by the number of input elements in it (False)

    Returns
    -------
    (N, C, H_out, W_out)
    """
    kind = _kind("avg_pool2d", {"x": x})
    args = _checks.pool2d_args("avg_pool2d", x, kernel_size, stride, padding, ceil_mode)
    args["count_include_pad"] = _checks.as_bool(
        "avg_pool2d", "count_include_pad", count_include_pad
    )
    return _backends.resolve("avg_pool2d", backend, kind)(x, **args)


def global_avg_pool2d(x, *, backend=None):
    """Mean over H and W.

    Parameters
    ----------
    x : (N, C, H, W)

    Returns
    -------
    (N, C)
    """
    kind = _kind("global_avg_pool2d", {"x": x})
    args = _checks.image_args("global_avg_pool2d", x)
    return _backends.resolve("global_avg_pool2d", backend, kind)(x, **args)


# --------------------------------------------------------------------------- #
# TResNet layers
# --------------------------------------------------------------------------- #


def space_to_depth(x, block_size=4, *, backend=None):
    """Rearrange b x b pixel blocks into channels (TResNet's stem).

    ``out[n, (i*b + j)*C + c, h, w] = x[n, c, b*h + i, b*w + j]``

    Parameters
    ----------
    x : (N, C, H, W) with H and W divisible by block_size
    block_size : int >= 1

    Returns
    -------
    (N, block_size**2 * C, H / block_size, W / block_size)
    """
    kind = _kind("space_to_depth", {"x": x})
    args = _checks.space_to_depth_args("space_to_depth", x, block_size)
    return _backends.resolve("space_to_depth", backend, kind)(x, **args)


def blur_pool2d(x, *, backend=None):
    """Anti-aliased downsampling (TResNet): depthwise [1,2,1]x[1,2,1]/16 filter,
    reflect padding 1, stride 2.

    Parameters
    ----------
    x : (N, C, H, W) with H, W >= 2 (reflect padding needs two pixels)

    Returns
    -------
    (N, C, (H - 1) // 2 + 1, (W - 1) // 2 + 1)
    """
    kind = _kind("blur_pool2d", {"x": x})
    args = _checks.blur_pool_args("blur_pool2d", x)
    return _backends.resolve("blur_pool2d", backend, kind)(x, **args)


def squeeze_excite(x, w1, b1, w2, b2, *, backend=None):
    """Squeeze-and-excitation: ``x * sigmoid(conv1x1(relu(conv1x1(mean_HW(x), w1, b1)), w2, b2))``.

    Parameters
    ----------
    x : (N, C, H, W)
    w1 : (C_mid, C, 1, 1) ; b1 : (C_mid,) or None
    w2 : (C, C_mid, 1, 1) ; b2 : (C,) or None

    Returns
    -------
    (N, C, H, W)
    """
    op = "squeeze_excite"
    kind = _kind(op, {"x": x, "w1": w1, "b1": b1, "w2": w2, "b2": b2}, optional=("b1", "b2"))
    args = _checks.squeeze_excite_args(op, x, w1, b1, w2, b2)
    return _backends.resolve(op, backend, kind)(x, w1, b1, w2, b2, **args)


# --------------------------------------------------------------------------- #
# Res2Net
# --------------------------------------------------------------------------- #


def res2net_chain(
    x,
    weights,
    biases=None,
    *,
    scale,
    stype="normal",
    stride=1,
    groups=1,
    precision="fp32",
    backend=None,
):
    """The hierarchical residual connections of a Res2Net bottleneck.

    x is split into ``scale`` chunks of ``width`` channels. With
    n = max(scale - 1, 1) convs, for i in 0..n-1::

        sp = x_i if i == 0 or stype == "stage" else sp + x_i
        sp = relu(conv3x3(sp, weights[i], stride=stride, padding=1, groups=groups) + biases[i])

    and the outputs are concatenated in chunk order. If scale > 1 the last
    chunk is appended unchanged ("normal") or as
    ``avg_pool2d(3, stride, padding=1, count_include_pad=True)`` ("stage").

    Parameters
    ----------
    x : (N, scale * width, H, W)
    weights : n arrays (width, width // groups, 3, 3), BN folded; a stacked
        (n, width, width // groups, 3, 3) array works too
    biases : n arrays (width,), or None
    scale : int >= 1
    stype : "normal" (stride must be 1) or "stage"
    stride : int >= 1
    groups : int dividing width (Res2NeXt's cardinality)
    precision : "fp32" (default), "tf32" or "bf16": the convs on tensor cores,
        as :func:`conv2d`

    Returns
    -------
    (N, scale * width, H_out, W_out), ``H_out = (H - 1) // stride + 1``.
    """
    op = "res2net_chain"
    kind = _kind(op, {"x": x, **_checks.chain_arrays(weights, biases)})
    args = _checks.chain_args(op, x, weights, biases, scale, stype, stride, groups)
    _precision(op, precision, kind, x, args)
    return _backends.resolve(op, backend, kind)(x, weights, biases, **args)


def bottle2neck(
    x, params, *, scale, stype="normal", stride=1, groups=1, precision="fp32", backend=None
):
    """One Res2Net bottleneck block (inference, BN folded).

    ``relu(conv3(chain(relu(conv1(x)))) + shortcut(x))`` where conv1 and conv3
    are 1x1 convs, chain is :func:`res2net_chain`, and shortcut is the identity,
    a strided 1x1 conv, or (``params.shortcut_avg_pool``, the "d" / v1b
    variants) ``avg_pool2d(stride, stride, ceil_mode=True,
    count_include_pad=False)`` followed by a 1x1 conv.

    Parameters
    ----------
    x : (N, C_in, H, W)
    params : r2n.Bottle2neckParams (see its docstring for every shape)
    scale, stype, stride, groups : as :func:`res2net_chain`
    precision : "fp32" (default), "tf32" or "bf16": the block's convs on tensor
        cores, as :func:`conv2d` (the "d" shortcut's pooled 1x1 conv stays float32)

    Returns
    -------
    (N, C_out, H_out, W_out)
    """
    op = "bottle2neck"
    kind = _kind(op, _checks.bottle2neck_arrays(op, x, params), _checks.BOTTLE2NECK_OPTIONAL)
    args = _checks.bottle2neck_args(op, x, params, scale, stype, stride, groups)
    _precision(op, precision, kind, x, args)
    return _backends.resolve(op, backend, kind)(x, params, **args)
