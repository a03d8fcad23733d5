"""Numba kernels for the linear layer and TResNet's layers.

Same functions and signatures as ``r2n.reference.layers``. Each public
function is a Python wrapper (contiguous inputs, output allocation, None
biases as zeros) around one ``@kernel``.

``linear`` is a ``prange`` over tiles of (rows x output features), not a call
to ``np.dot``: BLAS would start threads of its own, outside
``r2n.set_num_threads``, and a batch of one would still split across threads
by output feature. Each tile computes plain dot products over contiguous rows
of x and weight, which LLVM vectorises (``fastmath`` reassoc). At one thread
the same tiles run in a serial kernel (no parallel launch).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .._ladder import Step
from . import _jit
from ._jit import FASTMATH, jit, kernel, prange, run_small, serial
from ._scratch import scratch
from .elementwise import kernel_input, vector_or

# Per-tile / per-plane helpers inlined into their kernels in Numba's IR (as
# plain calls they cost 10-20% of a small call: an array struct passed per
# call, the loop not optimised with its caller).
_inline = jit(fastmath=FASTMATH, inline="always")

# linear tiles: LINEAR_ROWS rows of x share each weight row loaded into cache,
# LINEAR_COLS weight rows (output features) are reused by every row of the tile.
LINEAR_ROWS = 4
LINEAR_COLS = 16


# --------------------------------------------------------------------------- #
# Linear
# --------------------------------------------------------------------------- #


# Step 1 of the linear ladder: parallel, but IEEE order (no fastmath).
_in_order = jit(parallel=True)


@_in_order
def _linear_naive_kernel(x, weight, bias, out):
    """out = x @ weight.T + bias, a job per output, each dot product summed in
    index order (no fastmath: one multiply-add waits for the one before).

    x : (M, K); weight : (O, K); bias : (O,); out : (M, O), all C-contiguous.
    """
    m, k = x.shape
    o = weight.shape[0]
    for t in prange(m * o):
        r, j = t // o, t % o
        acc = x.dtype.type(0)
        for q in range(k):
            acc += x[r, q] * weight[j, q]
        out[r, j] = acc + bias[j]


@kernel
def _linear_simd_kernel(x, weight, bias, out):
    """Step 1's loop compiled with fastmath (contract, reassoc): the dot
    product becomes fused multiply-adds into partial sums across vector
    lanes. A job per output, as step 1."""
    m, k = x.shape
    o = weight.shape[0]
    for t in prange(m * o):
        r, j = t // o, t % o
        acc = x.dtype.type(0)
        for q in range(k):
            acc += x[r, q] * weight[j, q]
        out[r, j] = acc + bias[j]


@_inline
def _linear_tile(x, weight, bias, out, t, col_tiles):
    """Tile t of out = x @ weight.T + bias: LINEAR_ROWS rows of x x
    LINEAR_COLS outputs (fewer at the edges), each a dot product over a
    contiguous row of x and one of weight.

    x : (M, K); weight : (O, K); bias : (O,); out : (M, O), all C-contiguous.
    """
    m, k = x.shape
    o = weight.shape[0]
    rt, ct = t // col_tiles, t % col_tiles
    for r in range(rt * LINEAR_ROWS, min(m, (rt + 1) * LINEAR_ROWS)):
        for j in range(ct * LINEAR_COLS, min(o, (ct + 1) * LINEAR_COLS)):
            acc = x.dtype.type(0)
            for q in range(k):
                acc += x[r, q] * weight[j, q]
            out[r, j] = acc + bias[j]


@kernel
def _linear_kernel(x, weight, bias, out):
    """out = x @ weight.T + bias, a ``prange`` over the tiles.

    x : (M, K); weight : (O, K); bias : (O,); out : (M, O), all C-contiguous.
    """
    m, o = out.shape
    col_tiles = (o + LINEAR_COLS - 1) // LINEAR_COLS
    for t in prange((m + LINEAR_ROWS - 1) // LINEAR_ROWS * col_tiles):
        _linear_tile(x, weight, bias, out, t, col_tiles)


@serial
def _linear_serial_kernel(x, weight, bias, out):
    """``_linear_kernel``'s tiles in order on the calling thread (the same
    tile code, so the same result bit for bit). Used at one thread: a kernel
    compiled with ``parallel=True`` pays its launch even there, though here
    little: 1-3% of tresnet_m's fc (2048 -> 1000, ~0.28 ms in the forward,
    its 8 MB of weights from DRAM) at batch 1 and 8 (NOTES.md "SE and the
    fc at batch 1").
    """
    m, o = out.shape
    col_tiles = (o + LINEAR_COLS - 1) // LINEAR_COLS
    for t in range((m + LINEAR_ROWS - 1) // LINEAR_ROWS * col_tiles):
        _linear_tile(x, weight, bias, out, t, col_tiles)


def linear(x, weight, bias):
    """Fully connected layer, ``x @ weight.T + bias``.

    Parameters
    ----------
    x : (..., in_features)
    weight : (out_features, in_features)
    bias : (out_features,) or None

    Returns
    -------
    (..., out_features) new C-contiguous array of x's dtype.
    """
    serial_run = numba.get_num_threads() == 1
    return _launch_linear(_linear_serial_kernel if serial_run else _linear_kernel, x, weight, bias)


def _launch_linear(linear_kernel, x, weight, bias):
    """Run one of the linear kernels on the arguments of :func:`linear`."""
    o, k = weight.shape
    m = math.prod(x.shape[:-1])  # 1 for a 1-D x
    out = np.empty(x.shape[:-1] + (o,), dtype=x.dtype)
    linear_kernel(
        kernel_input(x).reshape(m, k),
        kernel_input(weight),
        vector_or(bias, 0, o, x.dtype),
        out.reshape(m, o),
    )
    return out


def linear_1_naive(x, weight, bias):
    """Step ``1_naive`` of the linear ladder (arguments as :func:`linear`)."""
    return _launch_linear(_linear_naive_kernel, x, weight, bias)


def linear_2_simd_reduce(x, weight, bias):
    """Step ``2_simd_reduce`` of the linear ladder (arguments as :func:`linear`)."""
    return _launch_linear(_linear_simd_kernel, x, weight, bias)


#: The linear ladder (r2n._ladder); step 3 is the backend's op.
LADDER = (
    Step(
        "1_naive",
        "a thread per output, the dot product summed in index order: one multiply-add at a time",
        linear_1_naive,
        source="r2n/cpu/layers.py",
    ),
    Step(
        "2_simd_reduce",
        "the same loop, reassociated: FMAs into partial sums in vector lanes",
        linear_2_simd_reduce,
        source="r2n/cpu/layers.py",
    ),
    Step(
        "3_tiles",
        f"{LINEAR_ROWS} rows x {LINEAR_COLS} outputs a job: each weight row read once per "
        f"{LINEAR_ROWS} rows",
        linear,
        source="r2n/cpu/layers.py",
    ),
)


# --------------------------------------------------------------------------- #
# Space to depth
# --------------------------------------------------------------------------- #


@kernel
def _space_to_depth_kernel(x, b, out):
    """out[n, (i*b + j)*C + c, h, w] = x[n, c, b*h + i, b*w + j].

    x : (N, C, H, W) -> out : (N, b*b*C, H/b, W/b). One iteration per input
    row: it is read once (from cache) and scattered into b contiguous output rows.
    """
    n, c, h, w = x.shape
    w_out = w // b
    for t in prange(n * c * h):
        nn, rem = t // (c * h), t % (c * h)
        ch, row = rem // h, rem % h
        hh, i = row // b, row % b
        for j in range(b):
            oc = (i * b + j) * c + ch
            for ww in range(w_out):
                out[nn, oc, hh, ww] = x[nn, ch, row, ww * b + j]


def space_to_depth(x, *, block_size, out=None):
    """Move each b x b pixel block into channels.

    Parameters
    ----------
    x : (N, C, H, W) with H, W divisible by b = block_size
    block_size : int >= 1
    out : optional C-contiguous array of the result's shape and x's dtype, not
        overlapping x, written in full (a prepared layer's reused buffer)

    Returns
    -------
    (N, b*b*C, H/b, W/b) C-contiguous array (``out``, or a new one),
    ``out[n, (i*b + j)*C + c, h, w] = x[n, c, b*h + i, b*w + j]``.
    """
    n, c, h, w = x.shape
    b = block_size
    if out is None:
        out = np.empty((n, b * b * c, h // b, w // b), dtype=x.dtype)
    run_small(
        "space_to_depth", _space_to_depth_kernel, x.nbytes + out.nbytes, kernel_input(x), b, out
    )
    return out


# --------------------------------------------------------------------------- #
# Blur pool
# --------------------------------------------------------------------------- #

# Output pixel (y, x) reads input rows 2y-1, 2y, 2y+1 (and the same columns)
# of the reflect-padded input. Reflection by index arithmetic: row -1 is row 1,
# row H is row H-2 (H >= 2 is checked). Rows are blurred first, then columns,
# as in the reference, so float32 rounds the same way.


@kernel
def _blur_pool2d_kernel(x, out):
    """x : (P, H, W) planes -> out : (P, (H-1)//2 + 1, (W-1)//2 + 1)."""
    planes, h, w = x.shape
    h_out, w_out = out.shape[1:]
    t0 = x.dtype.type(0.25)
    t1 = x.dtype.type(0.5)
    for r in prange(planes * h_out):
        p, oy = r // h_out, r % h_out
        r1 = 2 * oy
        r0 = r1 - 1 if r1 > 0 else 1
        r2 = r1 + 1 if r1 + 1 < h else h - 2
        for ox in range(w_out):
            c1 = 2 * ox
            c0 = c1 - 1 if c1 > 0 else 1
            c2 = c1 + 1 if c1 + 1 < w else w - 2
            v0 = t0 * x[p, r0, c0] + t1 * x[p, r1, c0] + t0 * x[p, r2, c0]
            v1 = t0 * x[p, r0, c1] + t1 * x[p, r1, c1] + t0 * x[p, r2, c1]
            v2 = t0 * x[p, r0, c2] + t1 * x[p, r1, c2] + t0 * x[p, r2, c2]
            out[p, oy, ox] = t0 * v0 + t1 * v1 + t0 * v2


def blur_pool2d(x, *, out=None):
    """Anti-aliased downsampling: depthwise [1,2,1]x[1,2,1]/16 blur, reflect pad 1, stride 2.

    Parameters
    ----------
    x : (N, C, H, W) with H, W >= 2
    out : optional C-contiguous array of the result's shape and x's dtype, not
        overlapping x, written in full (a prepared layer's reused buffer)

    Returns
    -------
    (N, C, (H - 1)//2 + 1, (W - 1)//2 + 1) C-contiguous array: ``out``, or a new one.
    """
    n, c, h, w = x.shape
    h_out, w_out = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    if out is None:
        out = np.empty((n, c, h_out, w_out), dtype=x.dtype)
    planes = kernel_input(x).reshape(n * c, h, w)
    run_small(
        "blur_pool2d",
        _blur_pool2d_kernel,
        x.nbytes + out.nbytes,
        planes,
        out.reshape(n * c, h_out, w_out),
    )
    return out


# --------------------------------------------------------------------------- #
# Squeeze and excitation
# --------------------------------------------------------------------------- #


@serial
def _squeeze_excite_gate(work, w1, b1, w2, b2, i):
    """Image i's gate = sigmoid(w2 @ relu(w1 @ means + b1) + b2) on one
    thread, in its row of the work array: work[i] = (means (C,), gate (C,),
    hidden (C_mid,)), the means read, the hidden layer and the gate written.
    Two small matrix-vector products (at most 256 x 128 multiply-adds each
    in TResNet)."""
    c_mid, c = w1.shape
    row = work[i]
    zero = work.dtype.type(0)
    one = work.dtype.type(1)
    for j in range(c_mid):
        acc = zero
        for ch in range(c):
            acc += row[ch] * w1[j, ch]
        z = acc + b1[j]
        row[2 * c + j] = zero if z <= zero else z  # NaN stays NaN, as np.maximum
    for ch in range(c):
        acc = zero
        for j in range(c_mid):
            acc += row[2 * c + j] * w2[ch, j]
        z = acc + b2[ch]
        e = np.exp(-abs(z))  # exp of -|z| only: no overflow
        row[c + ch] = one / (one + e) if z >= zero else e / (one + e)


@_inline
def _squeeze_excite_mean(x, i, ch):
    """The mean of plane x[i, ch] (HW,), summed in float64 as global_avg_pool2d."""
    hw = x.shape[2]
    acc = 0.0
    for k in range(hw):
        acc += x[i, ch, k]
    return acc / hw


@_inline
def _squeeze_excite_rescale(x, residual, add_residual, relu, work, out, i, ch):
    """out[i, ch] = act(x[i, ch] * gate (+ residual[i, ch])), one (HW,) plane,
    gate = work[i, C + ch] (``_squeeze_excite_gate``), the residual add and
    ReLU on the row while it is in cache.

    One loop per case, each a single pass over the plane: a ReLU pass of its
    own over the written row cost 11-14 us a call at TResNet's 64x56x56 and
    128x28x28 shapes in the forward (issue 13, NOTES.md "SE and the fc at
    batch 1"). The branches test two flags fixed for the whole call.
    """
    c, hw = x.shape[1], x.shape[2]
    zero = x.dtype.type(0)
    g = work[i, c + ch]
    if add_residual and relu:
        for k in range(hw):
            v = x[i, ch, k] * g + residual[i, ch, k]
            out[i, ch, k] = zero if v <= zero else v  # NaN stays NaN, as np.maximum
    elif add_residual:
        for k in range(hw):
            out[i, ch, k] = x[i, ch, k] * g + residual[i, ch, k]
    elif relu:
        for k in range(hw):
            v = x[i, ch, k] * g
            out[i, ch, k] = zero if v <= zero else v
    else:
        for k in range(hw):
            out[i, ch, k] = x[i, ch, k] * g


# The kernels' common arguments:
#   x, residual, out : (N, C, H*W); residual is read only when add_residual
#       (else pass x); out overlaps neither.
#   w1 : (C_mid, C); b1 : (C_mid,); w2 : (C, C_mid); b2 : (C,).
#   work : (N, 2*C + C_mid) per image its means, gate and hidden layer,
#       each written before it is read.
# out[n, c] = act(x[n, c] * sigmoid(w2 @ relu(w1 @ mean_HW(x[n]) + b1) + b2)[c]
# (+ residual[n, c])), act = ReLU when ``relu``, else the identity. All three
# run the same inlined helpers per plane and per image, so they give the same
# result bit for bit (tests/test_cpu_ops.py checks it).


@serial
def _squeeze_excite_image(x, w1, b1, w2, b2, residual, add_residual, relu, work, out, i):
    """Image i: its channel means, its gate, its rescale (the image still in
    cache between the first and the last).

    A function of its own, called per image, not inlined into the loop over
    images: inlined there, LLVM optimised the bottleneck case (no residual,
    no ReLU) worse, 18.8 us against 15.1 at 256x14x14, batch 1, 1 thread
    (141 against 113 at batch 8).
    """
    c = x.shape[1]
    for ch in range(c):
        work[i, ch] = _squeeze_excite_mean(x, i, ch)
    _squeeze_excite_gate(work, w1, b1, w2, b2, i)
    for ch in range(c):
        _squeeze_excite_rescale(x, residual, add_residual, relu, work, out, i, ch)


@serial
def _squeeze_excite_serial_kernel(x, w1, b1, w2, b2, residual, add_residual, relu, work, out):
    """squeeze_excite on the calling thread, image after image.

    Used where the op runs on one thread (below ``SMALL_OP_BYTES``, which
    is every TResNet SE at batch 1, or at one thread): a kernel compiled
    with ``parallel=True`` pays its launch even on one thread (the
    scheduler, the region), 4-6 us a call in tresnet_m's forward (NOTES.md
    "SE and the fc at batch 1").
    """
    for i in range(x.shape[0]):
        _squeeze_excite_image(x, w1, b1, w2, b2, residual, add_residual, relu, work, out, i)


@kernel
def _squeeze_excite_kernel(x, w1, b1, w2, b2, residual, add_residual, relu, work, out):
    """squeeze_excite in two parallel passes over the (n, c) planes: the
    channel means, then the rescale (with TResNet BasicBlock's residual add
    and ReLU). The gate between them is tiny: one image's runs on one
    thread, so a batch of one launches no parallel region for it (1.04-1.10x
    faster at 1 thread, 1.25-1.44x at 2 than a parallel region per FC layer;
    issue 13). Used where the images are fewer than the threads, so that the
    planes give every thread work.
    """
    n, c, hw = x.shape
    for p in prange(n * c):
        i, ch = p // c, p % c
        work[i, ch] = _squeeze_excite_mean(x, i, ch)

    if n == 1:
        _squeeze_excite_gate(work, w1, b1, w2, b2, 0)
    else:
        for i in prange(n):
            _squeeze_excite_gate(work, w1, b1, w2, b2, i)

    for p in prange(n * c):
        i, ch = p // c, p % c
        _squeeze_excite_rescale(x, residual, add_residual, relu, work, out, i, ch)


@kernel
def _squeeze_excite_images_kernel(x, w1, b1, w2, b2, residual, add_residual, relu, work, out):
    """``_squeeze_excite_serial_kernel``'s loop over images as one parallel
    region of a job per image (``_squeeze_excite_image``).

    Used from as many images as threads on (and batch >= 2): the per-plane
    kernel's three regions (means, gates, rescale) each wake the sleeping
    workers (~60 us apiece on the 2-core VM), which cost more than the whole
    op at TResNet's shapes up to batch 8 (benchmarks/small_ops.py); one
    region wakes them once, and the image is still in cache between its
    means and its rescale. The split is by image, so at most N threads
    work: with fewer images than threads the per-plane kernel runs.
    """
    for i in prange(x.shape[0]):
        _squeeze_excite_image(x, w1, b1, w2, b2, residual, add_residual, relu, work, out, i)


def _squeeze_excite_per_image(n, threads):
    """Whether squeeze_excite runs a job per image (one parallel region,
    measured from batch 2 on the 2-core VM): where the images alone give
    every thread work; else the planes split over the threads (batch 1,
    or fewer images than threads)."""
    return n >= max(2, threads)


def squeeze_excite(x, w1, b1, w2, b2, *, residual=None, relu=False, out=None):
    """Squeeze-and-excitation: rescale each channel by a gate computed from the
    channel means.

    Parameters
    ----------
    x : (N, C, H, W)
    w1 : (C_mid, C, 1, 1) ; b1 : (C_mid,) or None
    w2 : (C, C_mid, 1, 1) ; b2 : (C,) or None
    residual : optional (N, C, H, W) array of x's dtype added after the
        rescale (TResNet's BasicBlock shortcut); not the public op's argument
    relu : apply ReLU last (after the residual add)
    out : optional C-contiguous (N, C, H, W) array of x's dtype, overlapping
        neither x nor residual, written in full (a prepared layer's reused buffer)

    Returns
    -------
    (N, C, H, W) C-contiguous array (``out``, or a new one),
    ``act(x * sigmoid(relu(mean_HW(x) @ w1.T + b1) @ w2.T + b2)[:, :, None, None]
    + residual)``.
    """
    if out is None:
        out = np.empty(x.shape, dtype=x.dtype)
    matrices = squeeze_excite_matrices(w1, b1, w2, b2, x.dtype)
    return squeeze_excite_into(x, matrices, residual, bool(relu), out)


def squeeze_excite_matrices(w1, b1, w2, b2, dtype):
    """The weights as the kernels take them: read-only contiguous w1 (C_mid, C),
    b1 (C_mid,), w2 (C, C_mid), b2 (C,) of ``dtype``, absent biases as zeros
    (once per prepared layer, or per call of the public op)."""
    c_mid, c = w1.shape[:2]
    return (
        kernel_input(w1).reshape(c_mid, c),
        vector_or(b1, 0, c_mid, dtype),
        kernel_input(w2).reshape(c, c_mid),
        vector_or(b2, 0, c, dtype),
    )


def squeeze_excite_into(x, matrices, residual, relu, out):
    """:func:`squeeze_excite` into ``out`` with the weights already as
    :func:`squeeze_excite_matrices` gives them (a prepared layer's warm path:
    nothing per call but the launch).

    x, residual (or None), out : (N, C, H, W) of one dtype; out C-contiguous
    and overlapping neither; relu : bool. Returns out.
    """
    n, c, h, w = x.shape
    w1, b1, w2, b2 = matrices
    # Per image its (C,) means and gate and (C_mid,) hidden layer, from the
    # thread's scratch (each written in full by the kernel before it is read).
    work = scratch("squeeze_excite.work", (n, 2 * c + w1.shape[0]), x.dtype)
    x3 = kernel_input(x).reshape(n, c, h * w)
    add_residual = residual is not None
    args = (
        x3,
        w1,
        b1,
        w2,
        b2,
        kernel_input(residual).reshape(n, c, h * w) if add_residual else x3,
        add_residual,
        relu,
        work,
        out.reshape(n, c, h * w),
    )
    # Bytes moved: x read twice (the means, the rescale), out written, residual read.
    nbytes = (3 + add_residual) * x.nbytes
    if nbytes < _jit.SMALL_OP_BYTES["squeeze_excite"]:  # no thread count asked (0.7 us)
        _squeeze_excite_serial_kernel(*args)
        return out
    threads = numba.get_num_threads()
    if threads == 1:
        _squeeze_excite_serial_kernel(*args)
    elif _squeeze_excite_per_image(n, threads):
        _squeeze_excite_images_kernel(*args)
    else:
        _squeeze_excite_kernel(*args)
    return out
