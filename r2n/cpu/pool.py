"""Numba kernels for max, average and global average pooling (NCHW).

Same functions and signatures as ``r2n.reference.pool``, same edge rules
(PyTorch's). Window (y, x) covers input rows ``y*sh - ph .. y*sh - ph + kH - 1``
and the same for columns. The kernels clip each window's rows to the input
and read its columns from a scratch row padded with -inf (max) or 0 (avg), so
the input is never copied into a padded array:

* max: padding is -inf, so it never wins; clipping it away is the same. A NaN
  in the window makes the output NaN (``np.maximum`` semantics).
* avg: the sum over the clipped window is divided by the window clipped to the
  padded input ``[-p, size + p)`` (``count_include_pad``; the ceil-mode
  overhang does not count) or by the number of input elements in it.

The checks guarantee every window holds at least one input element. The
windowed pools split into jobs of ``POOL_ROWS`` output rows of every (n, c)
plane, so a batch of one still spreads over all threads; each worker takes
a contiguous share of them with one scratch row (``_worker_rows``).

The 2x2, stride 2, unpadded average pool (TResNet's and res2net50d's
shortcut pool) has a kernel of its own, ``_avg_pool2d_2x2_kernel``: no
scratch row, strides as literals, a multiply for the divide.

Calls that move less than the op's ``SMALL_OP_BYTES`` run on the calling
thread (``run_small``): at batch 1 waking a worker costs more than the
split saves.
"""

from __future__ import annotations

import numpy as np

from .._ladder import Step
from ._jit import jit, kernel, prange, run_small, worker_buffers
from ._scratch import scratch
from .elementwise import kernel_input

# Step 1 of the global_avg_pool2d ladder: parallel, but IEEE order (no fastmath).
in_order = jit(parallel=True)

# Output rows per job of the windowed pools (a worker takes a contiguous
# share of the jobs and reuses one scratch row for all of them).
POOL_ROWS = 8


@kernel
def _max_pool2d_kernel(x, kh, kw, sh, sw, ph, pw, out, rows):
    """x : (P, H, W) planes -> out : (P, H_out, W_out), max over each window.

    Separable, in passes over whole rows that LLVM vectorises: per output row,
    the max over the window's input rows goes into a scratch row that has -inf
    where the padding is (one pass per input row), then the output row is the
    max of kW shifted, strided views of the scratch row (one pass per column
    tap). 1.3-2x faster than a loop over each window with clipped bounds.
    """
    planes, h, w = x.shape
    h_out, w_out = out.shape[1:]
    width = max((w_out - 1) * sw + kw, pw + w)  # the padded row every window reads
    neg_inf = x.dtype.type(-np.inf)
    blocks = (h_out + POOL_ROWS - 1) // POOL_ROWS
    jobs = planes * blocks
    n_workers = rows.shape[0]
    for wk in prange(n_workers):
        # A worker's contiguous share of the jobs, with one scratch row
        # (the launcher's, filled here: only its padding is never rewritten).
        row = rows[wk, :width]
        row[:] = neg_inf
        inner = row[pw : pw + w]  # overwritten below; the padding keeps the fill
        for t in range(wk * jobs // n_workers, (wk + 1) * jobs // n_workers):
            p, blk = t // blocks, t % blocks
            for oy in range(blk * POOL_ROWS, min(h_out, (blk + 1) * POOL_ROWS)):
                y0 = oy * sh - ph
                i0, i1 = max(y0, 0), min(y0 + kh, h)
                src = x[p, i0]
                for c in range(w):
                    inner[c] = src[c]
                for i in range(i0 + 1, i1):
                    src = x[p, i]
                    for c in range(w):
                        # max that propagates NaN: a NaN v wins, a NaN in inner stays
                        v = src[c]
                        m = v if v > inner[c] else inner[c]
                        inner[c] = m if v == v else v
                dst = out[p, oy]
                if sw == 2 and kw == 3:
                    # ResNet's stem pool: with the stride a literal, LLVM loads the
                    # three taps as interleaved vectors (deinterleaving shuffles)
                    # instead of gathering them one by one: 1.9-2.2x faster at
                    # 64x112x112 (issue 13). Same order of maxima as below.
                    for ox in range(w_out):
                        a, b, c = row[2 * ox], row[2 * ox + 1], row[2 * ox + 2]
                        m = b if b > a else a
                        m = m if b == b else b
                        m2 = c if c > m else m
                        dst[ox] = m2 if c == c else c
                    continue
                for ox in range(w_out):  # one pass per kernel column, over the whole output row
                    dst[ox] = row[ox * sw]
                for j in range(1, kw):
                    tap = row[j:]
                    for ox in range(w_out):
                        v = tap[ox * sw]
                        m = v if v > dst[ox] else dst[ox]
                        dst[ox] = m if v == v else v


@kernel
def _avg_pool2d_kernel(x, kh, kw, sh, sw, ph, pw, count_include_pad, out, rows):
    """x : (P, H, W) planes -> out : (P, H_out, W_out), window sums / PyTorch's divisor.

    Separable like the max pool, with zeros for padding in the scratch row.
    """
    planes, h, w = x.shape
    h_out, w_out = out.shape[1:]
    width = max((w_out - 1) * sw + kw, pw + w)
    blocks = (h_out + POOL_ROWS - 1) // POOL_ROWS
    jobs = planes * blocks
    n_workers = rows.shape[0]
    for wk in prange(n_workers):
        # A worker's contiguous share of the jobs, with one scratch row
        # (the launcher's, filled here: only its padding is never rewritten).
        row = rows[wk, :width]
        row[:] = x.dtype.type(0)
        inner = row[pw : pw + w]  # overwritten below; the padding keeps the fill
        for t in range(wk * jobs // n_workers, (wk + 1) * jobs // n_workers):
            p, blk = t // blocks, t % blocks
            for oy in range(blk * POOL_ROWS, min(h_out, (blk + 1) * POOL_ROWS)):
                y0 = oy * sh - ph
                i0, i1 = max(y0, 0), min(y0 + kh, h)
                div_h = min(y0 + kh, h + ph) - y0 if count_include_pad else i1 - i0
                src = x[p, i0]
                for c in range(w):
                    inner[c] = src[c]
                for i in range(i0 + 1, i1):
                    src = x[p, i]
                    for c in range(w):
                        inner[c] += src[c]
                dst = out[p, oy]
                for ox in range(w_out):
                    dst[ox] = row[ox * sw]
                for j in range(1, kw):
                    tap = row[j:]
                    for ox in range(w_out):
                        dst[ox] += tap[ox * sw]
                for ox in range(w_out):
                    x0 = ox * sw - pw
                    if count_include_pad:
                        div_w = min(x0 + kw, w + pw) - x0
                    else:
                        div_w = min(x0 + kw, w) - max(x0, 0)
                    dst[ox] /= x.dtype.type(div_h * div_w)


@kernel
def _avg_pool2d_2x2_kernel(x, out):
    """x : (P, H, W) planes -> out : (P, H_out, W_out), the mean of each 2x2
    window at stride 2 without padding (H_out = ceil or floor of H / 2).

    A loop over each plane's outputs, indexing x directly: no scratch row
    and no row views, and with the stride a literal 2 LLVM loads the two
    columns of every window as interleaved vectors (as the max pool's 3x3
    stride 2 case). 5-6.5x faster than ``_avg_pool2d_kernel`` on TResNet's
    three shortcut pools at 1 thread (a prange over rows with a row view
    each was 2-3.6x slower than this: views and a division per row cost
    more than a 7-wide row's adds). Without padding ``count_include_pad``
    changes nothing: a ceil-mode window overhanging the last row or column
    counts only its input elements (PyTorch's rule), so the divisor is 4, 2
    or 1, and multiplying by its exact inverse is the same as dividing.
    Same sums in the same order as ``_avg_pool2d_kernel``: the two rows
    first, then the two columns. One iteration per plane.
    """
    planes, h, w = x.shape
    h_out, w_out = out.shape[1:]
    full_h = min(h_out, h // 2)  # windows with both rows inside the input
    full_w = min(w_out, w // 2)  # and with both columns
    quarter = x.dtype.type(0.25)
    half = x.dtype.type(0.5)
    for p in prange(planes):
        for oy in range(full_h):
            for ox in range(full_w):
                left = x[p, 2 * oy, 2 * ox] + x[p, 2 * oy + 1, 2 * ox]
                right = x[p, 2 * oy, 2 * ox + 1] + x[p, 2 * oy + 1, 2 * ox + 1]
                out[p, oy, ox] = (left + right) * quarter
            if full_w < w_out:  # ceil mode, odd W: the last window has one column
                out[p, oy, full_w] = (x[p, 2 * oy, w - 1] + x[p, 2 * oy + 1, w - 1]) * half
        if full_h < h_out:  # ceil mode, odd H: the last window has one row
            for ox in range(full_w):
                out[p, full_h, ox] = (x[p, h - 1, 2 * ox] + x[p, h - 1, 2 * ox + 1]) * half
            if full_w < w_out:
                out[p, full_h, full_w] = x[p, h - 1, w - 1]


@in_order
def _global_avg_pool2d_naive_kernel(x, out):
    """x : (P, H*W) planes -> out : (P,) means, each summed in float64 in
    index order (compiled without fastmath: no reassociation, so one add
    waits for the one before and nothing vectorises)."""
    planes, hw = x.shape
    for p in prange(planes):
        acc = 0.0
        for k in range(hw):
            acc += x[p, k]
        out[p] = acc / hw


@kernel
def _global_avg_pool2d_kernel(x, out):
    """x : (P, H*W) planes -> out : (P,) means, summed in float64.

    The loop is step 1's; ``fastmath`` reassoc lets LLVM split the sum into
    partial sums across vector lanes (and unrolled registers), added up at
    the end: the adds no longer wait for each other.
    """
    planes, hw = x.shape
    for p in prange(planes):
        acc = 0.0  # float64 for both dtypes: no float32 rounding in the running sum
        for k in range(hw):
            acc += x[p, k]
        out[p] = acc / hw


def _worker_rows(planes, h_out, w_out, w, kw, sw, pw, dtype):
    """The windowed pools' scratch rows: (workers, padded row width), one per
    worker that has jobs (blocks of POOL_ROWS output rows of a plane), from
    the thread's scratch cache (the kernel fills each before use)."""
    jobs = planes * ((h_out + POOL_ROWS - 1) // POOL_ROWS)
    width = max((w_out - 1) * sw + kw, pw + w)
    return worker_buffers(jobs, width, dtype, "pool.rows", scratch)


def _planes(x, n, c):
    """Contiguous (N*C, H, W) view (or copy) of an NCHW array."""
    return kernel_input(x).reshape(n * c, x.shape[2], x.shape[3])


def max_pool2d(x, *, kernel_size, stride, padding, ceil_mode, out_shape, out=None):
    """Max over each window; padding never wins; NaN propagates.

    Parameters
    ----------
    x : (N, C, H, W)
    kernel_size, stride, padding : (h, w) pairs of ints
    ceil_mode : bool (already applied in out_shape)
    out_shape : (N, C, H_out, W_out)
    out : optional C-contiguous array of that shape and x's dtype, not
        overlapping x, written in full (a prepared layer's reused buffer)

    Returns
    -------
    (N, C, H_out, W_out) C-contiguous array of x's dtype: ``out``, or a new one.
    """
    n, c, h_out, w_out = out_shape
    if out is None:
        out = np.empty(out_shape, dtype=x.dtype)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    planes, out_planes = _planes(x, n, c), out.reshape(n * c, h_out, w_out)
    run_small(
        "max_pool2d",
        _max_pool2d_kernel,
        x.nbytes + out.nbytes,
        planes,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        out_planes,
        _worker_rows(n * c, h_out, w_out, x.shape[3], kw, sw, pw, x.dtype),
    )
    return out


def avg_pool2d(
    x, *, kernel_size, stride, padding, ceil_mode, count_include_pad, out_shape, out=None
):
    """Mean over each window, with PyTorch's divisor rules.

    Parameters
    ----------
    x : (N, C, H, W)
    kernel_size, stride, padding : (h, w) pairs of ints
    ceil_mode : bool (already applied in out_shape)
    count_include_pad : divide by the window clipped to the padded input (True)
        or by the number of input elements in it (False)
    out_shape : (N, C, H_out, W_out)
    out : optional C-contiguous array of that shape and x's dtype, not
        overlapping x, written in full (a caller's reused buffer)

    Returns
    -------
    (N, C, H_out, W_out) C-contiguous array of x's dtype: ``out``, or a new one.
    """
    n, c, h_out, w_out = out_shape
    if out is None:
        out = np.empty(out_shape, dtype=x.dtype)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    planes = _planes(x, n, c)
    out_planes = out.reshape(n * c, h_out, w_out)
    nbytes = x.nbytes + out.nbytes
    if (kh, kw, sh, sw, ph, pw) == (2, 2, 2, 2, 0, 0):
        run_small("avg_pool2d_2x2", _avg_pool2d_2x2_kernel, nbytes, planes, out_planes)
        return out
    run_small(
        "avg_pool2d",
        _avg_pool2d_kernel,
        nbytes,
        planes,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        bool(count_include_pad),
        out_planes,
        _worker_rows(n * c, h_out, w_out, x.shape[3], kw, sw, pw, x.dtype),
    )
    return out


def global_avg_pool2d(x, *, out=None):
    """Mean over H and W.

    Parameters
    ----------
    x : (N, C, H, W)
    out : optional C-contiguous (N, C) array of x's dtype, not overlapping x,
        written in full (a prepared layer's reused buffer)

    Returns
    -------
    (N, C) C-contiguous array of x's dtype: ``out``, or a new one.
    """
    n, c, h, w = x.shape
    if out is None:
        out = np.empty((n, c), dtype=x.dtype)
    planes = kernel_input(x).reshape(n * c, h * w)
    run_small(
        "global_avg_pool2d",
        _global_avg_pool2d_kernel,
        x.nbytes + out.nbytes,
        planes,
        out.reshape(n * c),
    )
    return out


def global_avg_pool2d_1_naive(x):
    """Step ``1_naive`` of the global_avg_pool2d ladder: a thread per (n, c)
    plane, its sum in index order. x (N, C, H, W) -> (N, C)."""
    n, c, h, w = x.shape
    out = np.empty((n, c), dtype=x.dtype)
    _global_avg_pool2d_naive_kernel(kernel_input(x).reshape(n * c, h * w), out.reshape(n * c))
    return out


#: The global_avg_pool2d ladder (r2n._ladder); step 2 is the backend's op.
LADDER = (
    Step(
        "1_naive",
        "a thread per (n, c) plane, the float64 sum in index order: one add after another",
        global_avg_pool2d_1_naive,
        source="r2n/cpu/pool.py",
    ),
    Step(
        "2_simd_reduce",
        "the same loop, reassociated: partial sums in vector lanes, added up at the end",
        global_avg_pool2d,
        source="r2n/cpu/pool.py",
    ),
)
