"""Reference batch normalization (inference form) and BN folding.

In inference a BatchNorm layer is an affine map per channel c:

    y = (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c]
      = x * s[c] + (bias[c] - mean[c] * s[c]),   s[c] = weight[c] / sqrt(var[c] + eps)

so a convolution followed by BN is one convolution with weights scaled per
output channel and a new bias (``fold_batch_norm``). Every fused kernel in r2n
relies on that: BN never touches memory on its own.
"""

from __future__ import annotations

import numpy as np


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
