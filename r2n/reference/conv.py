"""Reference convolution in NumPy (``linear`` is in r2n.reference.layers).

A 2-D convolution, written as what it is:

    out[n, o, y, x] = bias[o] + sum over c in o's group, i < kH, j < kW of
        weight[o, c, i, j] * x_padded[n, g*Cg + c, y*sh + i*dh, x*sw + j*dw]

where g = o // (C_out / groups) is the group of output channel o and
Cg = C_in / groups. The code below computes it as "im2col + matrix product":
gather every receptive field into a column (a strided view, no loops), then one
batched matrix product per group does all multiply-adds. That is also how the
fast backends think about convolution (implicit GEMM), so this file doubles as
the map for them.

Arguments arrive checked and normalised by ``r2n._checks.conv2d_args``.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


def sliding_windows(xp, kernel, stride, dilation, out_hw):
    """Read-only view of every window of a padded NCHW tensor.

    Parameters
    ----------
    xp : (N, C, Hp, Wp) array, already padded.
    kernel, stride, dilation : (h, w) pairs.
    out_hw : (H_out, W_out), the number of window positions.

    Returns
    -------
    (N, C, H_out, W_out, kH, kW) view with
    ``view[n, c, y, x, i, j] = xp[n, c, y*sh + i*dh, x*sw + j*dw]``.
    """
    n, c = xp.shape[:2]
    s_n, s_c, s_h, s_w = xp.strides
    shape = (n, c, out_hw[0], out_hw[1], kernel[0], kernel[1])
    strides = (
        s_n,
        s_c,
        s_h * stride[0],
        s_w * stride[1],
        s_h * dilation[0],
        s_w * dilation[1],
    )
    return as_strided(xp, shape=shape, strides=strides, writeable=False)


def pad_hw(x, padding, value=0.0, extra=(0, 0)):
    """Pad H and W of an NCHW tensor: ``padding`` on both sides, ``extra`` more
    at the bottom/right (used by ceil-mode pools). Always returns a new array."""
    (ph, pw), (eh, ew) = padding, extra
    return np.pad(x, ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)), constant_values=value)


def conv2d(x, weight, bias, *, stride, padding, dilation, groups, out_shape):
    """2-D cross-correlation (PyTorch's conv2d), NCHW.

    Parameters
    ----------
    x : (N, C_in, H, W)
    weight : (C_out, C_in // groups, kH, kW)
    bias : (C_out,) or None
    stride, padding, dilation : (h, w) pairs of ints
    groups : int dividing C_in and C_out
    out_shape : (N, C_out, H_out, W_out), from the shared shape arithmetic

    Returns
    -------
    (N, C_out, H_out, W_out) C-contiguous array of x's dtype.
    """
    n, c_in, _, _ = x.shape
    c_out, c_in_g, kh, kw = weight.shape
    _, _, h_out, w_out = out_shape
    c_out_g = c_out // groups

    xp = pad_hw(x, padding)  # N, C_in, H + 2ph, W + 2pw
    win = sliding_windows(xp, (kh, kw), stride, dilation, (h_out, w_out))
    # win: N, C_in, H_out, W_out, kH, kW  (a view: nothing copied yet)

    # im2col: one column per output pixel, one row per (c, i, j) of a group.
    win = win.reshape(n, groups, c_in_g, h_out, w_out, kh, kw)  # N, G, Cg, Ho, Wo, kH, kW
    cols = win.transpose(1, 2, 5, 6, 0, 3, 4)  # G, Cg, kH, kW, N, Ho, Wo
    cols = cols.reshape(groups, c_in_g * kh * kw, n * h_out * w_out)  # copy

    w = weight.reshape(groups, c_out_g, c_in_g * kh * kw)  # G, Co_g, Cg*kH*kW
    out = np.matmul(w, cols)  # G, Co_g, N*Ho*Wo : one GEMM per group

    out = out.reshape(c_out, n, h_out, w_out).transpose(1, 0, 2, 3)  # N, C_out, Ho, Wo
    out = np.ascontiguousarray(out)
    if bias is not None:
        out += bias[None, :, None, None]
    return out


# Kept importable as r2n.reference.conv.linear (its home until issue 15); it
# lives in r2n.reference.layers now.
from .layers import linear as linear  # noqa: E402
