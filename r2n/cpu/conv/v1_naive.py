"""conv2d step ``1_naive``: the definition as loops.

What it does
    ``out[n, o, y, x] = bias[o] + sum over (c, i, j) of
    w[o, c, i, j] * x[n, c0 + c, y*sh - ph + i*dh, x*sw - pw + j*dw]``, with
    ``c0`` the first input channel of o's group, written as the nested loops
    of that formula: a thread per (image, output channel) plane, the padding
    tested on every tap (``0 <= iy < H``), one multiply-add per iteration of
    the innermost loop.
Why it is slow
    The innermost loop runs over the kernel's columns (3 iterations), so
    nothing vectorises; every multiply-add pays two bounds tests, two loads
    and a dependency on the previous one (``s += ...``).
Measured
    ~1 GFLOP/s (one thread, float32, 32 -> 32 channels, 3x3, 56x56, on the
    2-core Zen 5 development machine, 2026-11-22).

The next step, ``2_loop_order`` (v2_loop_order.py), pads the input once and
reorders the loops so that the innermost one runs along an output row.
"""

from __future__ import annotations

import numpy as np

from .._jit import kernel, prange
from ..elementwise import vector_or


@kernel
def _conv2d_1_naive_kernel(x, w, bias, sh, sw, ph, pw, dh, dw, groups, out):
    n_img, _, h, wd = x.shape
    c_out, c_in_g, kh, kw = w.shape
    h_out, w_out = out.shape[2], out.shape[3]
    c_out_g = c_out // groups
    for job in prange(n_img * c_out):
        n = job // c_out
        o = job % c_out
        c0 = (o // c_out_g) * c_in_g  # first input channel of o's group
        for y in range(h_out):
            for xo in range(w_out):
                s = bias[o]
                for c in range(c_in_g):
                    for i in range(kh):
                        iy = y * sh - ph + i * dh
                        if 0 <= iy < h:
                            for j in range(kw):
                                ix = xo * sw - pw + j * dw
                                if 0 <= ix < wd:
                                    s += w[o, c, i, j] * x[n, c0 + c, iy, ix]
                out[n, o, y, xo] = s


def conv2d_1_naive(x, weight, bias, *, stride, padding, dilation, groups, out_shape):
    """Step 1: the definition as loops.

    x (N, C_in, H, W), weight (C_out, C_in/groups, kH, kW), bias (C_out,) or
    None -> (N, C_out, H_out, W_out); arguments checked and normalised by
    r2n._checks.conv2d_args.
    """
    out = np.empty(out_shape, x.dtype)
    w = np.ascontiguousarray(weight)
    _conv2d_1_naive_kernel(
        np.ascontiguousarray(x),
        w,
        vector_or(bias, 0, w.shape[0], x.dtype),
        stride[0],
        stride[1],
        padding[0],
        padding[1],
        dilation[0],
        dilation[1],
        groups,
        out,
    )
    return out
