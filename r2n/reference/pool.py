"""Reference pooling in NumPy, with PyTorch's edge rules.

Window (y, x) covers input rows ``y*sh - ph .. y*sh - ph + kH - 1`` (and the
same for columns). Rows outside ``[0, H)`` are padding. Two subtleties:

* ``ceil_mode`` adds a last window that may run past the right/bottom padding
  (it is dropped if it would *start* there; ``r2n._checks.pool_output_size``).
* ``avg_pool2d`` divides by the window size clipped to the padded input
  (``count_include_pad=True``: padding counts, the ceil-mode overhang does not)
  or by the number of real input elements in the window
  (``count_include_pad=False``).
"""

from __future__ import annotations

import numpy as np

from .conv import pad_hw, sliding_windows


def _ceil_overhang(size, kernel, stride, padding, out):
    """How far the last window reaches past the padded input (ceil_mode only)."""
    return max(0, (out - 1) * stride + kernel - (size + 2 * padding))


def _padded_windows(x, kernel_size, stride, padding, out_shape, value):
    """Pad x with ``value`` (ceil-mode overhang included) and view its windows:
    (N, C, H_out, W_out, kH, kW)."""
    _, _, h, w = x.shape
    h_out, w_out = out_shape[2:]
    extra = (
        _ceil_overhang(h, kernel_size[0], stride[0], padding[0], h_out),
        _ceil_overhang(w, kernel_size[1], stride[1], padding[1], w_out),
    )
    xp = pad_hw(x, padding, value=value, extra=extra)
    return sliding_windows(xp, kernel_size, stride, (1, 1), (h_out, w_out))


def _reduce_taps(win, ufunc):
    """Combine the kH * kW taps of every window with a binary ufunc.

    win : (N, C, H_out, W_out, kH, kW) view -> (N, C, H_out, W_out) new array.
    One pass over the output per kernel tap: NumPy reduces this far faster than
    over the two tiny, strided trailing axes.
    """
    kh, kw = win.shape[4:]
    acc = win[..., 0, 0].copy()
    for i in range(kh):
        for j in range(kw):
            if i or j:
                ufunc(acc, win[..., i, j], out=acc)
    return acc


def max_pool2d(x, *, kernel_size, stride, padding, ceil_mode, out_shape):
    """Max over each window; padding is -inf so it never wins; NaN propagates.

    x : (N, C, H, W) -> (N, C, H_out, W_out)
    """
    win = _padded_windows(x, kernel_size, stride, padding, out_shape, -np.inf)
    return _reduce_taps(win, np.maximum)


def _divisors(size, kernel, stride, padding, out, count_include_pad):
    """Per-axis divisor of each window position, shape (out,)."""
    start = np.arange(out) * stride - padding  # first row of each window
    end = np.minimum(start + kernel, size + padding)  # clipped to padded input
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)  # real rows only


def avg_pool2d(x, *, kernel_size, stride, padding, ceil_mode, count_include_pad, out_shape):
    """Mean over each window, with PyTorch's divisor rules.

    x : (N, C, H, W) -> (N, C, H_out, W_out)
    """
    _, _, h, w = x.shape
    h_out, w_out = out_shape[2:]
    win = _padded_windows(x, kernel_size, stride, padding, out_shape, 0.0)
    sums = _reduce_taps(win, np.add)  # N, C, Ho, Wo
    div_h = _divisors(h, kernel_size[0], stride[0], padding[0], h_out, count_include_pad)
    div_w = _divisors(w, kernel_size[1], stride[1], padding[1], w_out, count_include_pad)
    divisor = np.outer(div_h, div_w).astype(x.dtype)  # Ho, Wo
    sums /= divisor
    return sums


def global_avg_pool2d(x):
    """Mean over H and W: (N, C, H, W) -> (N, C)."""
    return np.ascontiguousarray(x.mean(axis=(2, 3)))
