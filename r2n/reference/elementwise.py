"""Reference elementwise ops: activations (any shape; NaN propagates, as in
PyTorch), batch normalization (inference form) and BN folding.

In inference a BatchNorm layer is an affine map per channel c:

    y = (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c]
      = x * s[c] + (bias[c] - mean[c] * s[c]),   s[c] = weight[c] / sqrt(var[c] + eps)

so a convolution followed by BN is one convolution with weights scaled per
output channel and a new bias (``fold_batch_norm``). Every fused kernel in r2n
relies on that: BN never touches memory on its own.
"""

from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------- #
# Activations
# --------------------------------------------------------------------------- #


def relu(x):
    """max(x, 0); NaN stays NaN. Returns a new array shaped like x."""
    # out= keeps a 0-d input's result an array (NumPy's ufuncs return scalars)
    return np.maximum(x, x.dtype.type(0), out=np.empty(x.shape, x.dtype))


def leaky_relu(x, *, negative_slope):
    """x where x > 0, else x * negative_slope. Returns a new array."""
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


def sigmoid(x):
    """1 / (1 + exp(-x)), computed without overflow for large |x|.

    exp is only ever taken of -|x| <= 0, so it lies in (0, 1]:
    x >= 0: 1 / (1 + e),  x < 0: e / (1 + e),  with e = exp(-|x|).
    """
    with np.errstate(under="ignore"):  # exp(-1000) -> 0 is the right answer
        e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


# --------------------------------------------------------------------------- #
# Batch normalization
# --------------------------------------------------------------------------- #


def _channel_view(v, ndim):
    """(C,) -> (1, C, 1, ...) so it broadcasts over axis 1 of an ndim tensor."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm(x, mean, var, weight, bias, *, eps):
    """Inference batch norm over axis 1.

    Parameters
    ----------
    x : (N, C, ...) ; mean, var : (C,) running statistics
    weight, bias : (C,) or None (None means 1 and 0)
    eps : float added to var

    Returns
    -------
    Array shaped like x.
    """
    inv_std = 1.0 / np.sqrt(var + eps)  # C
    scale = inv_std if weight is None else weight * inv_std  # C
    out = (x - _channel_view(mean, x.ndim)) * _channel_view(scale, x.ndim)
    if bias is not None:
        out += _channel_view(bias, x.ndim)
    return out.astype(x.dtype, copy=False)


def fold_batch_norm(conv_weight, conv_bias, mean, var, weight, bias, *, eps):
    """Fold an inference BN into the conv (or linear) layer before it.

    Parameters
    ----------
    conv_weight : (C_out, ...) e.g. (C_out, C_in // groups, kH, kW)
    conv_bias : (C_out,) or None
    mean, var : (C_out,) ; weight, bias : (C_out,) or None ; eps : float

    Returns
    -------
    (weight', bias') with ``conv(x, weight') + bias' == bn(conv(x, w) + b)``;
    weight' has conv_weight's shape, bias' is (C_out,). New arrays.
    """
    inv_std = 1.0 / np.sqrt(var + eps)  # C_out
    scale = inv_std if weight is None else weight * inv_std  # C_out
    folded_w = conv_weight * scale.reshape((-1,) + (1,) * (conv_weight.ndim - 1))
    b = -mean if conv_bias is None else conv_bias - mean
    folded_b = b * scale
    if bias is not None:
        folded_b = folded_b + bias
    dtype = conv_weight.dtype
    return folded_w.astype(dtype, copy=False), folded_b.astype(dtype, copy=False)
