"""Argument checks and output-shape arithmetic, shared by every backend.

Every public op validates its arguments here before any backend runs, so the
reference, the Numba kernels and the CUDA kernels all see the same, already
checked, normalised arguments (ints instead of "int or pair", shapes known to be
consistent) and compute output sizes with the same formulas. Errors name the
op, the argument, what was expected and what came.

Nothing in this module imports NumPy's array module for CuPy arrays: it only
reads ``.shape``, ``.ndim`` and ``.dtype``, which both libraries provide.
"""

from __future__ import annotations

import numbers
from collections.abc import Collection, Sequence

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------- #
# Array kind (NumPy or CuPy), dtype and rank
# --------------------------------------------------------------------------- #


def array_kind(a) -> str | None:
    """Return ``"numpy"``, ``"cupy"`` or ``None`` for anything else.

    CuPy is recognised by the module of the array's type, so this never imports
    CuPy: a CuPy array can only exist if the caller imported it.
    """
    if isinstance(a, np.ndarray):
        return "numpy"
    if type(a).__module__.partition(".")[0] == "cupy":
        return "cupy"
    return None


def type_name(a) -> str:
    """The name of ``a``'s type for error messages: ``"list"``, ``"torch.Tensor"``."""
    t = type(a)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


def check_arrays(
    op: str, arrays: dict[str, object], optional: Collection[str] | None = None
) -> tuple[str, np.dtype]:
    """Check that every array argument is a float32/float64 array of one kind.

    Parameters
    ----------
    op : name of the public op, for messages.
    arrays : argument name -> array, in signature order. The first entry is
        the data tensor whose dtype the others must match.
    optional : the names that may be ``None`` (an optional argument not
        given: skipped); ``None`` anywhere else is a TypeError naming the
        argument. The public ops always list them; ``optional=None`` lets
        every entry be ``None``, for a backend re-checking arrays that the
        public op has already checked.

    Returns
    -------
    (kind, dtype) : ``"numpy"`` or ``"cupy"``, and the common dtype.
    """
    kind = dtype = None
    first_kind_name = first_dtype_name = None
    for name, a in arrays.items():
        if a is None:
            if optional is None or name in optional:
                continue
            raise TypeError(
                f"r2n.{op}: {name} is required: expected a numpy.ndarray or cupy.ndarray, got None"
            )
        k = array_kind(a)
        if k is None:
            raise TypeError(
                f"r2n.{op}: {name} must be a numpy.ndarray or cupy.ndarray, got {type_name(a)}"
            )
        if kind is None:
            kind, first_kind_name = k, name
        elif k != kind:
            raise TypeError(
                f"r2n.{op}: cannot mix NumPy and CuPy arrays: {first_kind_name} is "
                f"{type_name(arrays[first_kind_name])} but {name} is {type_name(a)}"
            )
        d = np.dtype(a.dtype)
        if dtype is None:
            if d not in FLOAT_DTYPES:
                raise TypeError(f"r2n.{op}: {name} has dtype {d}; expected float32 or float64")
            dtype, first_dtype_name = d, name
        elif d != dtype:
            raise TypeError(
                f"r2n.{op}: {name} has dtype {d} but {first_dtype_name} has dtype "
                f"{dtype}; all arrays of one call must share a dtype"
            )
    return kind, dtype


def check_ndim(op: str, name: str, a, ndim: int, layout: str) -> None:
    """Raise ValueError unless ``a.ndim == ndim``; ``layout`` names the axes."""
    if a.ndim != ndim:
        raise ValueError(f"r2n.{op}: {name} must be {ndim}-D {layout}, got shape {tuple(a.shape)}")


def check_shape(op: str, name: str, a, shape: tuple, layout: str) -> None:
    """Raise ValueError unless ``a.shape == shape``; ``layout`` names the axes."""
    if tuple(a.shape) != tuple(shape):
        raise ValueError(
            f"r2n.{op}: {name} must have shape {layout} = {tuple(shape)}, got {tuple(a.shape)}"
        )


def check_nonempty_spatial(op: str, x) -> None:
    """Images must have at least one row and column (batch 0 is allowed)."""
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"r2n.{op}: x must have H >= 1 and W >= 1, got shape {tuple(x.shape)}")


# --------------------------------------------------------------------------- #
# Scalar arguments
# --------------------------------------------------------------------------- #


def as_int(op: str, name: str, value, minimum: int) -> int:
    """A Python int >= minimum from an int-like value (bool is rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"r2n.{op}: {name} must be an int, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"r2n.{op}: {name} must be >= {minimum}, got {value}")
    return value


def as_pair(op: str, name: str, value, minimum: int) -> tuple[int, int]:
    """An (h, w) pair of ints >= minimum from an int or a 2-sequence of ints."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ValueError(f"r2n.{op}: {name} must be an int or an (h, w) pair, got {value!r}")
        return (
            as_int(op, f"{name}[0]", value[0], minimum),
            as_int(op, f"{name}[1]", value[1], minimum),
        )
    v = as_int(op, name, value, minimum)
    return (v, v)


def as_float(op: str, name: str, value, *, nonnegative: bool = False, dtype=None) -> float:
    """A finite Python float (>= 0 if asked; finite in ``dtype`` if given).

    A scalar the kernels cast to the arrays' dtype must stay finite there:
    a float32 slope of 1e300 would be inf, and inf * 0 a NaN.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"r2n.{op}: {name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or (nonnegative and value < 0):
        need = "a finite number >= 0" if nonnegative else "a finite number"
        raise ValueError(f"r2n.{op}: {name} must be {need}, got {value!r}")
    largest = None if dtype is None else float(np.finfo(dtype).max)
    if largest is not None and abs(value) > largest:
        raise ValueError(
            f"r2n.{op}: {name}={value!r} does not fit the arrays' dtype {np.dtype(dtype)} "
            f"(|{name}| <= {largest:g})"
        )
    return value


# --------------------------------------------------------------------------- #
# Output-shape arithmetic (PyTorch's formulas)
# --------------------------------------------------------------------------- #


def conv_output_size(
    op: str, axis: str, size: int, kernel: int, stride: int, padding: int, dilation: int
) -> int:
    """Output length of a convolution along one axis.

    ``floor((size + 2*padding - dilation*(kernel-1) - 1) / stride) + 1``; the
    dilated kernel must fit in the padded input, and the padded input must
    have fewer than 2**31 rows / columns (the GPU kernels index them with
    32-bit ints; every backend accepts the same arguments).
    """
    extent = dilation * (kernel - 1) + 1
    padded = size + 2 * padding
    if padded >= 2**31:
        raise ValueError(
            f"r2n.{op}: padding along {axis} is too large: input {size} + 2 * padding "
            f"{padding} = {padded}, must be below 2**31"
        )
    if extent > padded:
        raise ValueError(
            f"r2n.{op}: the kernel is larger than the padded input along {axis}: "
            f"kernel extent {extent} (size {kernel}, dilation {dilation}) > "
            f"{padded} (input {size} + 2 * padding {padding})"
        )
    return (padded - extent) // stride + 1


def pool_output_size(
    op: str, axis: str, size: int, kernel: int, stride: int, padding: int, ceil_mode: bool
) -> int:
    """Output length of a max/avg pool along one axis, PyTorch's rules.

    With ``ceil_mode`` the division rounds up, but a last window that would
    start in the right padding (or beyond) is dropped. Padding may be at most
    half the kernel, so that every window holds at least one input element.
    """
    if padding > kernel // 2:
        raise ValueError(
            f"r2n.{op}: padding along {axis} must be at most half the kernel size "
            f"({kernel} // 2 = {kernel // 2}), got {padding}"
        )
    padded = size + 2 * padding
    rounding = stride - 1 if ceil_mode else 0
    out = (padded - kernel + rounding) // stride + 1  # floor division, as PyTorch
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    if out < 1:
        # With ceil_mode a kernel larger than the padded input is fine as long
        # as one window starts inside it (PyTorch: 1x1 input, kernel 2, stride 2).
        raise ValueError(
            f"r2n.{op}: the kernel is larger than the padded input along {axis}: "
            f"kernel {kernel} > {padded} (input {size} + 2 * padding {padding}), "
            f"which leaves no output (ceil_mode={ceil_mode})"
        )
    return out


#: The arithmetic of the conv-bearing ops (``precision=``): float32 throughout,
#: or operands rounded to TF32 / bfloat16 on tensor cores (r2n.gpu.conv_tensor_core).
PRECISIONS = ("fp32", "tf32", "bf16")


def precision_arg(op: str, precision, kind: str, dtype) -> str:
    """Check ``precision=`` of a conv-bearing op and return it.

    ``"fp32"`` runs anywhere; ``"tf32"`` and ``"bf16"`` round float32 data on
    the GPU's tensor cores, so they need CuPy arrays (kind ``"cupy"``) of
    dtype float32. Anything else is a ValueError saying what is needed.
    """
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(
            f"r2n.{op}: precision must be one of {', '.join(map(repr, PRECISIONS))}, "
            f"got {precision!r}"
        )
    if precision != "fp32":
        if kind != "cupy":
            raise ValueError(
                f"r2n.{op}: precision={precision!r} runs on the tensor cores of the gpu backend "
                f"(CuPy arrays); {kind or 'these'} arrays compute in precision='fp32' only"
            )
        if np.dtype(dtype) != np.float32:
            raise ValueError(
                f"r2n.{op}: precision={precision!r} rounds float32 data; {np.dtype(dtype)} has "
                "no tensor-core path (pass float32 arrays, or precision='fp32')"
            )
    return precision


def conv2d_args(
    op: str, x, weight, bias, stride, padding, dilation, groups, prefix: str = ""
) -> dict:
    """Validate a 2-D convolution and return its normalised arguments.

    Shapes: x (N, C_in, H, W), weight (C_out, C_in // groups, kH, kW),
    bias (C_out,) or None. ``prefix`` is put before "weight" and "bias" in
    messages (e.g. "params.conv1."). Returns a dict with ``stride``, ``padding``,
    ``dilation`` as (h, w) pairs, ``groups`` and ``out_shape``
    (N, C_out, H_out, W_out). Dtypes and array kinds are checked separately by
    :func:`check_arrays`.
    """
    check_ndim(op, "x", x, 4, "(N, C_in, H, W)")
    check_ndim(op, f"{prefix}weight", weight, 4, "(C_out, C_in // groups, kH, kW)")
    check_nonempty_spatial(op, x)
    stride = as_pair(op, "stride", stride, 1)
    padding = as_pair(op, "padding", padding, 0)
    dilation = as_pair(op, "dilation", dilation, 1)
    groups = as_int(op, "groups", groups, 1)
    n, c_in, h, w = x.shape
    c_out, c_in_g, kh, kw = weight.shape
    if c_in % groups or c_out % groups:
        raise ValueError(
            f"r2n.{op}: groups={groups} must divide both C_in={c_in} and C_out={c_out}"
        )
    if c_out == 0 or kh == 0 or kw == 0:
        raise ValueError(
            f"r2n.{op}: {prefix}weight must have C_out, kH, kW >= 1, got shape {weight.shape}"
        )
    if c_in_g != c_in // groups:
        raise ValueError(
            f"r2n.{op}: {prefix}weight has {c_in_g} input channels per group but x has "
            f"C_in={c_in} and groups={groups}, so expected C_in // groups = "
            f"{c_in // groups} (weight shape {tuple(weight.shape)})"
        )
    if bias is not None:
        check_shape(op, f"{prefix}bias", bias, (c_out,), "(C_out,)")
    h_out = conv_output_size(op, "H", h, kh, stride[0], padding[0], dilation[0])
    w_out = conv_output_size(op, "W", w, kw, stride[1], padding[1], dilation[1])
    return dict(
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        out_shape=(n, c_out, h_out, w_out),
    )


def as_bool(op: str, name: str, value) -> bool:
    """A bool (NumPy's included); ints and None are rejected."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"r2n.{op}: {name} must be a bool, got {value!r}")
    return bool(value)


def pool2d_args(op: str, x, kernel_size, stride, padding, ceil_mode) -> dict:
    """Validate a max/avg pool and return normalised arguments and out_shape.

    ``stride=None`` means the kernel size, as in PyTorch.
    """
    check_ndim(op, "x", x, 4, "(N, C, H, W)")
    check_nonempty_spatial(op, x)
    kernel_size = as_pair(op, "kernel_size", kernel_size, 1)
    stride = kernel_size if stride is None else as_pair(op, "stride", stride, 1)
    padding = as_pair(op, "padding", padding, 0)
    ceil_mode = as_bool(op, "ceil_mode", ceil_mode)
    n, c, h, w = x.shape
    h_out = pool_output_size(op, "H", h, kernel_size[0], stride[0], padding[0], ceil_mode)
    w_out = pool_output_size(op, "W", w, kernel_size[1], stride[1], padding[1], ceil_mode)
    return dict(
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        out_shape=(n, c, h_out, w_out),
    )


def linear_args(op: str, x, weight, bias) -> dict:
    """x (..., in_features), weight (out_features, in_features), bias (out_features,)."""
    check_ndim(op, "weight", weight, 2, "(out_features, in_features)")
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"r2n.{op}: x must have shape (..., in_features) with in_features = "
            f"weight.shape[1] = {weight.shape[1]}, got x shape {tuple(x.shape)}"
        )
    if bias is not None:
        check_shape(op, "bias", bias, (weight.shape[0],), "(out_features,)")
    return {}


def _channel_vectors_args(op: str, channels: int, eps, **vectors) -> dict:
    """Per-channel (C,) vectors (None allowed) and a BN eps >= 0."""
    for name, v in vectors.items():
        if v is not None:
            check_shape(op, name, v, (channels,), "(C,)")
    return dict(eps=as_float(op, "eps", eps, nonnegative=True))


def batch_norm_args(op: str, x, mean, var, weight, bias, eps) -> dict:
    """x (N, C, ...) at least 2-D; mean, var, weight, bias (C,); returns {eps}."""
    if x.ndim < 2:
        raise ValueError(
            f"r2n.{op}: x must be at least 2-D (N, C, ...), got shape {tuple(x.shape)}"
        )
    return _channel_vectors_args(op, x.shape[1], eps, mean=mean, var=var, weight=weight, bias=bias)


def fold_batch_norm_args(op: str, conv_weight, conv_bias, mean, var, weight, bias, eps) -> dict:
    """conv_weight (C_out, ...); conv_bias, mean, var, weight, bias (C_out,); returns {eps}."""
    if conv_weight.ndim < 1:
        raise ValueError(f"r2n.{op}: conv_weight must be at least 1-D (C_out, ...)")
    vectors = dict(conv_bias=conv_bias, mean=mean, var=var, weight=weight, bias=bias)
    return _channel_vectors_args(op, conv_weight.shape[0], eps, **vectors)


def image_args(op: str, x) -> dict:
    """x (N, C, H, W) with H, W >= 1."""
    check_ndim(op, "x", x, 4, "(N, C, H, W)")
    check_nonempty_spatial(op, x)
    return {}


def space_to_depth_args(op: str, x, block_size) -> dict:
    """x (N, C, H, W) with H and W divisible by block_size >= 1."""
    check_ndim(op, "x", x, 4, "(N, C, H, W)")
    b = as_int(op, "block_size", block_size, 1)
    if x.shape[2] % b or x.shape[3] % b:
        raise ValueError(
            f"r2n.{op}: H and W must be divisible by block_size={b}, got shape {tuple(x.shape)}"
        )
    return dict(block_size=b)


def blur_pool_args(op: str, x) -> dict:
    """x (N, C, H, W) with H, W >= 2 (reflect padding needs two pixels)."""
    check_ndim(op, "x", x, 4, "(N, C, H, W)")
    if x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(
            f"r2n.{op}: reflect padding needs H >= 2 and W >= 2, got shape {tuple(x.shape)}"
        )
    return {}


def squeeze_excite_args(op: str, x, w1, b1, w2, b2) -> dict:
    """x (N, C, H, W); w1 (C_mid, C, 1, 1), b1 (C_mid,); w2 (C, C_mid, 1, 1), b2 (C,)."""
    image_args(op, x)
    check_ndim(op, "w1", w1, 4, "(C_mid, C, 1, 1)")
    c, c_mid = x.shape[1], w1.shape[0]
    check_shape(op, "w1", w1, (c_mid, c, 1, 1), "(C_mid, C, 1, 1)")
    check_shape(op, "w2", w2, (c, c_mid, 1, 1), "(C, C_mid, 1, 1)")
    if b1 is not None:
        check_shape(op, "b1", b1, (c_mid,), "(C_mid,)")
    if b2 is not None:
        check_shape(op, "b2", b2, (c,), "(C,)")
    return {}


#: The ops :func:`step_args` checks (``r2n._backends.prepare``'s prepared
#: steps): op -> the names of its weight arrays, in order, and which may be None.
STEP_WEIGHTS = {
    "max_pool2d": ((), ()),
    "avg_pool2d": ((), ()),
    "global_avg_pool2d": ((), ()),
    "space_to_depth": ((), ()),
    "blur_pool2d": ((), ()),
    "squeeze_excite": (("w1", "b1", "w2", "b2"), ("b1", "b2")),
}


def step_args(op: str, x, weights: Sequence, options: dict) -> tuple[dict, tuple]:
    """A prepared step's checks on x: the public op's shape checks and
    normalised arguments (what ``r2n._api`` passes its backend), and the
    output's shape.

    Parameters
    ----------
    op : a key of STEP_WEIGHTS
    x : (N, C, H, W), already of a checked kind and dtype
    weights : the op's arrays in STEP_WEIGHTS order (squeeze_excite's w1, b1,
        w2, b2), or shape-only stand-ins
    options : the op's keyword arguments as the public op takes them
        (kernel_size, stride, padding, ceil_mode, count_include_pad, block_size)

    Returns
    -------
    (args, out_shape) : the backend's keyword arguments, and (N, C', H', W')
    or (N, C) for global_avg_pool2d.
    """
    if op in ("max_pool2d", "avg_pool2d"):
        args = pool2d_args(
            op,
            x,
            options["kernel_size"],
            options.get("stride"),
            options.get("padding", 0),
            options.get("ceil_mode", False),
        )
        if op == "avg_pool2d":
            include = options.get("count_include_pad", True)
            args["count_include_pad"] = as_bool(op, "count_include_pad", include)
        return args, args["out_shape"]
    n, c, h, w = x.shape if x.ndim == 4 else (None,) * 4
    if op == "global_avg_pool2d":
        return image_args(op, x), (n, c)
    if op == "space_to_depth":
        args = space_to_depth_args(op, x, options.get("block_size", 4))
        b = args["block_size"]
        return args, (n, b * b * c, h // b, w // b)
    if op == "blur_pool2d":
        return blur_pool_args(op, x), (n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1)
    if op == "squeeze_excite":
        return squeeze_excite_args(op, x, *weights), tuple(x.shape)
    raise ValueError(f"r2n: {op!r} is not a prepared step; steps: {', '.join(STEP_WEIGHTS)}")


def step_call_args(op, x, weights, residual, options):
    """A prepared step's per-call checks, as the public op's: x's kind and
    dtype against the weights', then shapes (:func:`step_args`), and a
    residual (squeeze_excite only) of x's kind, dtype and shape.

    Returns (kind, args, out_shape).
    """
    names, optional = STEP_WEIGHTS[op]
    kind, _ = check_arrays(op, {"x": x, **dict(zip(names, weights, strict=True))}, optional)
    args, out_shape = step_args(op, x, weights, options)
    if residual is not None:
        if op != "squeeze_excite":
            raise TypeError(f"r2n: prepared {op} takes no residual")
        check_arrays(op, {"x": x, "residual": residual})
        check_shape(op, "residual", residual, out_shape, "(N, C, H, W) as x")
    return kind, args, out_shape


def chain_args(op: str, x, weights, biases, scale, stype, stride, groups) -> dict:
    """Validate a Res2Net chain and return normalised arguments and out_shape.

    Shapes: x (N, scale * width, H, W); weights: n = max(scale - 1, 1) arrays
    of shape (width, width // groups, 3, 3); biases: None or n arrays (width,).
    out_shape is (N, scale * width, H_out, W_out) with the 3x3/pad-1 conv's
    output size.
    """
    check_ndim(op, "x", x, 4, "(N, scale * width, H, W)")
    check_nonempty_spatial(op, x)
    scale = as_int(op, "scale", scale, 1)
    stride = as_int(op, "stride", stride, 1)
    groups = as_int(op, "groups", groups, 1)
    if stype not in ("normal", "stage"):
        raise ValueError(f"r2n.{op}: stype must be 'normal' or 'stage', got {stype!r}")
    if stype == "normal" and stride != 1:
        raise ValueError(
            f"r2n.{op}: stype 'normal' requires stride 1 (the pass-through chunk "
            f"cannot be downsampled), got stride {stride}; use stype 'stage'"
        )
    n_batch, channels, h, w = x.shape
    if channels % scale:
        raise ValueError(
            f"r2n.{op}: x has {channels} channels, which is not a multiple of scale={scale}"
        )
    width = channels // scale
    if width < 1:
        raise ValueError(f"r2n.{op}: x must have at least scale={scale} channels")
    if width % groups:
        raise ValueError(
            f"r2n.{op}: groups={groups} must divide the chunk width {width} "
            f"(= {channels} channels / scale {scale})"
        )
    nums = max(scale - 1, 1)
    _check_sequence(op, "weights", weights, nums, scale)
    for i in range(nums):
        check_shape(
            op,
            f"weights[{i}]",
            weights[i],
            (width, width // groups, 3, 3),
            "(width, width // groups, 3, 3)",
        )
    if biases is not None:
        _check_sequence(op, "biases", biases, nums, scale)
        for i in range(nums):
            check_shape(op, f"biases[{i}]", biases[i], (width,), "(width,)")
    h_out = conv_output_size(op, "H", h, 3, stride, 1, 1)
    w_out = conv_output_size(op, "W", w, 3, stride, 1, 1)
    return dict(
        scale=scale,
        stype=stype,
        stride=stride,
        groups=groups,
        width=width,
        out_shape=(n_batch, channels, h_out, w_out),
    )


def _check_sequence(op: str, name: str, seq, length: int, scale: int) -> None:
    if not isinstance(seq, Sequence) and array_kind(seq) is None:
        raise TypeError(
            f"r2n.{op}: {name} must be a sequence of arrays (or one stacked array), "
            f"got {type_name(seq)}"
        )
    if len(seq) != length:
        raise ValueError(
            f"r2n.{op}: {name} must hold max(scale - 1, 1) = {length} arrays for "
            f"scale={scale}, got {len(seq)}"
        )


class ShapeOnly:
    """Stands in for an intermediate tensor whose shape is known but which does
    not exist yet, so the checks of a block's inner ops can run up front."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.ndim = len(self.shape)


def bottle2neck_args(op: str, x, params, scale, stype, stride, groups) -> dict:
    """Validate a Res2Net bottleneck and return each inner op's normalised args.

    Returns a dict with ``conv1``, ``chain``, ``conv3`` (conv2d_args /
    chain_args dicts), ``shortcut`` (None for the identity, else
    ``{"conv": conv2d_args, "pool": pool2d_args or None}``) and ``out_shape``.
    Every check runs before any computation, so a bad block fails before it
    starts, on every backend.
    """
    check_ndim(op, "x", x, 4, "(N, C_in, H, W)")
    n, c_in = x.shape[:2]
    stride = as_int(op, "stride", stride, 1)
    scale = as_int(op, "scale", scale, 1)
    w1 = params.conv1.weight
    check_ndim(op, "params.conv1.weight", w1, 4, "(width * scale, C_in, 1, 1)")
    check_shape(
        op, "params.conv1.weight", w1, (w1.shape[0], c_in, 1, 1), "(width * scale, C_in, 1, 1)"
    )
    conv1 = conv2d_args(op, x, w1, params.conv1.bias, 1, 0, 1, 1, "params.conv1.")
    chain = chain_args(
        op,
        ShapeOnly(conv1["out_shape"]),
        params.chain_weights,
        params.chain_biases,
        scale,
        stype,
        stride,
        groups,
    )
    chain_out = ShapeOnly(chain["out_shape"])
    w3 = params.conv3.weight
    check_ndim(op, "params.conv3.weight", w3, 4, "(C_out, width * scale, 1, 1)")
    check_shape(
        op,
        "params.conv3.weight",
        w3,
        (w3.shape[0], chain_out.shape[1], 1, 1),
        "(C_out, width * scale, 1, 1)",
    )
    conv3 = conv2d_args(op, chain_out, w3, params.conv3.bias, 1, 0, 1, 1, "params.conv3.")
    out_shape = conv3["out_shape"]
    c_out = out_shape[1]
    as_bool(op, "params.shortcut_avg_pool", params.shortcut_avg_pool)
    if params.shortcut is None and params.shortcut_avg_pool:
        raise ValueError(
            f"r2n.{op}: params.shortcut_avg_pool=True needs params.shortcut (the 1x1 conv "
            f"after the pool); the identity shortcut has no pool"
        )
    if params.shortcut is None:
        if c_out != c_in or stride != 1:
            raise ValueError(
                f"r2n.{op}: an identity shortcut (params.shortcut=None) needs C_out == "
                f"C_in and stride 1, got C_in={c_in}, C_out={c_out}, stride={stride}; "
                f"give params.shortcut (the downsample conv + BN)"
            )
        shortcut = None
    else:
        ws = params.shortcut.weight
        check_ndim(op, "params.shortcut.weight", ws, 4, "(C_out, C_in, 1, 1)")
        check_shape(op, "params.shortcut.weight", ws, (c_out, c_in, 1, 1), "(C_out, C_in, 1, 1)")
        if params.shortcut_avg_pool:
            pool = pool2d_args(op, x, stride, stride, 0, True)
            pool["count_include_pad"] = False
            conv = conv2d_args(
                op,
                ShapeOnly(pool["out_shape"]),
                ws,
                params.shortcut.bias,
                1,
                0,
                1,
                1,
                "params.shortcut.",
            )
        else:
            pool = None
            conv = conv2d_args(
                op, x, ws, params.shortcut.bias, stride, 0, 1, 1, "params.shortcut."
            )
        if conv["out_shape"] != out_shape:  # cannot happen for valid args; guards edits
            raise ValueError(
                f"r2n.{op}: shortcut output {conv['out_shape']} != main path {out_shape}"
            )
        shortcut = {"conv": conv, "pool": pool}
    return dict(conv1=conv1, chain=chain, conv3=conv3, shortcut=shortcut, out_shape=out_shape)


#: The arrays of a bottleneck call that may be None (see :func:`bottle2neck_arrays`).
BOTTLE2NECK_OPTIONAL = ("params.conv1.bias", "params.conv3.bias", "params.shortcut.bias")


def bottle2neck_arrays(op: str, x, params) -> dict:
    """Every array of a bottleneck call by name, for :func:`check_arrays`.

    The biases may be None (:data:`BOTTLE2NECK_OPTIONAL`; ``params.chain_biases``
    as a whole); the weights, and each entry of a given ``chain_biases``, may not.
    """
    convs = ["conv1", "conv3"]
    if getattr(params, "shortcut", None) is not None:
        convs.append("shortcut")
    fields_ok = all(hasattr(params, f) for f in ("chain_weights", "chain_biases", "shortcut"))
    convs_ok = all(
        hasattr(getattr(params, f, None), "weight") and hasattr(getattr(params, f), "bias")
        for f in convs
    )
    if not (fields_ok and convs_ok):
        raise TypeError(
            f"r2n.{op}: params must be an r2n.Bottle2neckParams of r2n.FoldedConv, "
            f"got {type_name(params)}"
        )
    arrays = {
        "x": x,
        "params.conv1.weight": params.conv1.weight,
        "params.conv1.bias": params.conv1.bias,
    }
    arrays.update(
        chain_arrays(
            params.chain_weights,
            params.chain_biases,
            "params.chain_weights",
            "params.chain_biases",
        )
    )
    arrays["params.conv3.weight"] = params.conv3.weight
    arrays["params.conv3.bias"] = params.conv3.bias
    if params.shortcut is not None:
        arrays["params.shortcut.weight"] = params.shortcut.weight
        arrays["params.shortcut.bias"] = params.shortcut.bias
    return arrays


def chain_arrays(
    weights, biases, weights_name: str = "weights", biases_name: str = "biases"
) -> dict:
    """The chain's weight and bias arrays by name, for :func:`check_arrays`.

    Non-sequences are passed through under their own name so that the type
    check reports them. ``biases=None`` adds nothing (no biases); a None inside
    either sequence stays, so that the check names it.
    """
    arrays = {}
    for name, seq in ((weights_name, weights), (biases_name, biases)):
        if seq is None:
            continue
        if isinstance(seq, Sequence) or array_kind(seq) is not None:
            arrays.update({f"{name}[{i}]": a for i, a in enumerate(seq)})
        else:
            arrays[name] = seq
    return arrays
