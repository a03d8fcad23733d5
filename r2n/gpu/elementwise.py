"""CUDA launchers for the elementwise ops: relu, leaky_relu, sigmoid, batch_norm,
fold_batch_norm (kernels in kernels/elementwise.cu).

Same signatures as ``r2n.reference.activations`` and ``r2n.reference.norm``,
plus ``executor`` (None: the current GPU's, see ``r2n.gpu._runtime``). Inputs
are read through C-contiguous views (copied only when not contiguous) and never
written; every output is a new array. Empty tensors launch nothing.
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from . import _runtime
from ._runtime import contiguous, ctype_scalar, dtype_name, grid_1d

FILE = "elementwise.cu"
KERNELS = (
    "relu_kernel",
    "leaky_relu_kernel",
    "sigmoid_kernel",
    "bn_scale_kernel",
    "batch_norm_kernel",
    "fold_weight_kernel",
    "fold_bias_kernel",
)
_runtime.register(FILE, [f"{k}<{t}>" for k in KERNELS for t in ("float", "double")])


def _flat(op, kernel, x, executor, *scalars):
    """Run a one-input elementwise kernel over x; returns a new array shaped like x."""
    _checks.check_arrays(op, {"x": x})
    ex = executor or _runtime.executor()
    x = contiguous(ex, x)
    out = ex.empty(x.shape, x.dtype)
    if x.size:
        name = f"{kernel}<{dtype_name(x.dtype)}>"
        args = (x, out, np.int64(x.size), *scalars)
        ex.launch(FILE, name, grid_1d(x.size), (_runtime.THREADS_1D,), args)
    return out


def relu(x, *, executor=None):
    """max(x, 0) elementwise, NaN kept. x : any shape -> new array shaped like x."""
    return _flat("relu", "relu_kernel", x, executor)


def leaky_relu(x, *, negative_slope, executor=None):
    """x if x > 0 else x * negative_slope. x : any shape -> new array shaped like x."""
    return _flat(
        "leaky_relu", "leaky_relu_kernel", x, executor, ctype_scalar(x.dtype, negative_slope)
    )


def sigmoid(x, *, executor=None):
    """1 / (1 + exp(-x)), no overflow. x : any shape -> new array shaped like x."""
    return _flat("sigmoid", "sigmoid_kernel", x, executor)


def _scale(ex, var, weight, eps):
    """scale[c] = weight[c] / sqrt(var[c] + eps) (weight None: 1), a new (C,) array."""
    channels = var.shape[0]
    scale = ex.empty((channels,), var.dtype)
    name = f"bn_scale_kernel<{dtype_name(var.dtype)}>"
    args = (
        var,
        var if weight is None else weight,  # dummy pointer when absent, never read
        np.int32(weight is not None),
        ctype_scalar(var.dtype, eps),
        scale,
        _runtime.int32_or_error("batch_norm", "channels", channels),
    )
    ex.launch(FILE, name, grid_1d(channels), (_runtime.THREADS_1D,), args)
    return scale


def batch_norm(x, mean, var, weight, bias, *, eps, executor=None):
    """Inference batch norm over axis 1.

    Parameters
    ----------
    x : (N, C, ...) ; mean, var : (C,) ; weight, bias : (C,) or None ; eps : float

    Returns
    -------
    New array shaped like x: ``(x - mean) / sqrt(var + eps) * weight + bias``.
    """
    op = "batch_norm"
    _checks.check_arrays(op, {"x": x, "mean": mean, "var": var, "weight": weight, "bias": bias})
    eps = _checks.batch_norm_args(op, x, mean, var, weight, bias, eps)["eps"]
    ex = executor or _runtime.executor()
    x, mean, var = (contiguous(ex, a) for a in (x, mean, var))
    weight = None if weight is None else contiguous(ex, weight)
    bias = None if bias is None else contiguous(ex, bias)
    out = ex.empty(x.shape, x.dtype)
    channels = x.shape[1]
    if x.size == 0:
        return out
    scale = _scale(ex, var, weight, eps)
    inner = int(np.prod(x.shape[2:], dtype=np.int64))  # elements per (n, c)
    name = f"batch_norm_kernel<{dtype_name(x.dtype)}>"
    args = (
        x,
        mean,
        scale,
        x if bias is None else bias,
        np.int32(bias is not None),
        out,
        np.int64(x.size),
        np.int64(inner),
        np.int32(channels),
    )
    ex.launch(FILE, name, grid_1d(x.size), (_runtime.THREADS_1D,), args)
    return out


def fold_batch_norm(conv_weight, conv_bias, mean, var, weight, bias, *, eps, executor=None):
    """Fold an inference BN into the conv (or linear) layer before it.

    Parameters
    ----------
    conv_weight : (C_out, ...) ; conv_bias : (C_out,) or None
    mean, var : (C_out,) ; weight, bias : (C_out,) or None ; eps : float

    Returns
    -------
    (weight', bias') : new arrays, conv_weight's shape and (C_out,).
    """
    op = "fold_batch_norm"
    arrays = {
        "conv_weight": conv_weight,
        "conv_bias": conv_bias,
        "mean": mean,
        "var": var,
        "weight": weight,
        "bias": bias,
    }
    _checks.check_arrays(op, arrays)
    eps = _checks.fold_batch_norm_args(op, conv_weight, conv_bias, mean, var, weight, bias, eps)[
        "eps"
    ]
    ex = executor or _runtime.executor()
    conv_weight, mean, var = (contiguous(ex, a) for a in (conv_weight, mean, var))
    conv_bias, weight, bias = (
        None if a is None else contiguous(ex, a) for a in (conv_bias, weight, bias)
    )
    channels = conv_weight.shape[0]
    folded_w = ex.empty(conv_weight.shape, conv_weight.dtype)
    folded_b = ex.empty((channels,), conv_weight.dtype)
    if channels == 0:
        return folded_w, folded_b
    t = dtype_name(conv_weight.dtype)
    scale = _scale(ex, var, weight, eps)
    if conv_weight.size:
        inner = conv_weight.size // channels
        args = (conv_weight, scale, folded_w, np.int64(conv_weight.size), np.int64(inner))
        ex.launch(
            FILE,
            f"fold_weight_kernel<{t}>",
            grid_1d(conv_weight.size),
            (_runtime.THREADS_1D,),
            args,
        )
    args = (
        mean if conv_bias is None else conv_bias,
        np.int32(conv_bias is not None),
        mean,
        scale,
        mean if bias is None else bias,
        np.int32(bias is not None),
        folded_b,
        np.int32(channels),
    )
    ex.launch(FILE, f"fold_bias_kernel<{t}>", grid_1d(channels), (_runtime.THREADS_1D,), args)
    return folded_w, folded_b
