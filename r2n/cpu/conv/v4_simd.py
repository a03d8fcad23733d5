"""conv2d step ``4_simd``: register tiles in the LLVM-IR micro-kernel, packed weights.

What changes (from ``3_register_tiles``)
    The accumulators move into registers: a job (image, group, block of 32
    output channels, output row) walks its row in tiles of 7 pixels x 32
    channels (float32; 16 for float64), each tile 14 vector accumulators
    that stay in registers for the whole reduction over (c, i, j). Numba
    cannot keep a tile in registers (an accumulator array lives in memory),
    so the tile's loop is written in LLVM IR (r2n.cpu.microkernel, a Numba
    intrinsic). The weights are packed once (microkernel.pack_weights) so
    that a tap's 32 channels are 2 consecutive vector loads; the taps'
    offsets into the padded input are computed once (tap_offsets).
Why it is faster
    Per tap the micro-kernel loads 2 weight vectors and 7 input scalars and
    issues 14 vector FMAs into registers: no accumulator load or store, 7
    FMAs per weight load and 2 per input load (step 3: one load and one
    store per FMA). The FMA units, not the loads, set the pace.
The epilogue
    Bias, a residual, the activation and the write into a channel slice of
    a larger (optionally padded) output run once per finished row, over row
    slices (see :func:`conv_simd`), so the fused Res2Net blocks
    (r2n.cpu.res2net) need no passes of their own. 1x1 convs of one group
    run in r2n.cpu.conv.gemm_1x1: the GEMM with the pixels in the lanes
    where ``gemm_1x1.usable``, else (7x7, 14x14) its 7-pixel tiles with a
    blocked reduction (``gemm_1x1.rows_usable``); strided ones on a gathered
    copy of the pixels they read.
Measured
    ~170 GFLOP/s (one thread, float32, 32 -> 32 channels, 3x3, 56x56, on the
    2-core Zen 5 development machine, 2026-11-22; PyTorch 2.13's oneDNN:
    149).

The backend's conv2d (r2n.cpu.conv.conv2d) is this step for every conv,
depthwise included: even convs that fill 1 of 16 lanes run faster here than
in step 2 (64 channels at 56x56, one thread: 0.75 vs 1.0 ms; groups of 8
channels: 0.52 vs 5.3 ms).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .. import _scratch
from .._jit import as_tuples, kernel, prange, worker_buffers
from ..elementwise import kernel_input, unused_array, vector_or
from ..microkernel import (
    TILE_PIXELS,
    TILE_VECTORS,
    VECTOR_BYTES,
    block_channels,
    block_layout,
    min_input_width,
    pack_weights,
    tap_offsets,
    tile,
    tile_half,
)
from . import gemm_1x1
from .padding import pad_kernel


@functools.lru_cache(maxsize=256)
def _cached_tap_offsets(c_in_g, kernel_hw, dilation, plane, row):
    """tap_offsets, computed once per geometry: a batch-1 chain spent ~10 us
    of its ~1.3 ms per conv rebuilding them.

    Safe to share between calls and threads: the key holds every argument
    the array is computed from, and the array is read-only (Numba then
    refuses to compile a kernel that writes it). lru_cache is thread-safe,
    holds at most 256 geometries, and r2n.clear_scratch empties it.
    """
    offs = tap_offsets(c_in_g, kernel_hw, dilation, plane, row)
    offs.flags.writeable = False
    return offs


_scratch.on_clear(_cached_tap_offsets.cache_clear)


class Channels(NamedTuple):
    """Where a kernel finds channel ``ch`` of image ``n``, row ``y`` in a flat buffer:
    ``data[n * image + (c0 + ch) * plane + base + y * row]``.

    data : 1-D view of an (N, C, H, W) contiguous array (or unused_array)
    image, plane, row : elements per image, per channel plane, per row step
    base : the offset of the first interior element in a padded plane
    c0 : the first channel read or written
    """

    data: np.ndarray
    image: int
    plane: int
    row: int
    base: int
    c0: int


class ConvWeights(NamedTuple):
    """The packed weights of ``n_conv`` convs and what the kernel reads with them.

    packed : pack_weights(...) of each conv, concatenated ; conv_stride : its
        elements per conv ; offsets : tap_offsets(...) into the padded input
    c_in_g : input channels per group ; bias : (n_conv * C_out,)
    """

    packed: np.ndarray
    conv_stride: int
    offsets: np.ndarray
    c_in_g: int
    bias: np.ndarray


class ConvShape(NamedTuple):
    """The launch's geometry: ``n_conv`` convs of ``groups`` groups of
    ``c_out_g`` output channels on ``n_img`` images, ``h_out`` x ``w_out``
    outputs; the input's column step (the stride, in elements) and conv i's
    first input channel shift ``x_conv_step * i``."""

    n_img: int
    groups: int
    c_out_g: int
    h_out: int
    w_out: int
    x_step: int
    n_conv: int
    x_conv_step: int


class Epilogue(NamedTuple):
    """What the epilogue does per finished row: add ``residual`` (if
    has_residual), the activation (``activation``: a leaky ReLU of
    ``negative_slope``, 0 for ReLU), and write value + ``next_chunk`` into
    ``next_input`` (if has_next_input)."""

    activation: bool
    negative_slope: float
    has_residual: bool
    has_next_input: bool


@kernel
def _conv_simd_kernel(
    x, weights, shape, out, epilogue, residual, next_input, next_chunk, row_bufs
):
    """One parallel launch of a whole conv, in register tiles.

    The arguments are the records above (:class:`Channels` for every buffer,
    unpacked into locals first: the loops below see plain arrays and ints).
    Job = (image n, group g, channel block ob, output row y); each job walks
    its row in tiles of TILE_PIXELS. For output channel ch = g*c_out_g + c:

        v = conv + bias[ch] (+ residual[n, ch, y, x])          if has_residual
        v = v if v >= 0 else negative_slope * v                 if activation
        out[n, ch, y, x] = v                                  (NaN kept)
        next_input[n, ch, y, x] = v + next_chunk[n, ch, y, x]   if has_next_input

    (channels counted from each record's ``c0``). The last line is the
    Res2Net chain's "sp + x_{i+1}", computed while the value is in hand and
    written straight into the next conv's padded input.

    ``n_conv`` > 1 runs that many independent convs of one geometry in the
    same launch (the "stage" chain, whose convs do not feed each other): conv
    i reads input channels from ``x.c0 + i * x_conv_step``, weights from
    ``i * weights.conv_stride`` in ``weights.packed``, bias and output
    channels shifted by ``i * C_out`` (``bias`` holds all of them). One
    launch instead of ``n_conv``: one wake-up of the workers and one barrier,
    and ``n_conv`` times more jobs to share out.

    Every tile is a full SIMD tile. A row's last, partial tile is shifted back
    to end at the row's end (some pixels are computed twice, with the same
    result); rows narrower than a tile read slack columns the caller provides
    (``min_input_width``). So no tile reads outside the input, and no scalar
    fallback is needed.
    """
    xf, x_img, x_plane, row_step, _, x_c0 = x
    wpk, w_conv_stride, offs, c_in_g, bias = weights
    n_img, groups, c_out_g, h_out, w_out, x_step, n_conv, x_conv_step = shape
    out_data, out_img, out_plane, out_row, out_base, out_c0 = out
    activation, negative_slope, has_residual, has_next_input = epilogue
    res, res_img, res_plane, res_row, _, res_c0 = residual
    nxt, nxt_img, nxt_plane, nxt_row, nxt_base, _ = next_input
    chunk, chunk_img, chunk_plane, chunk_row, _, chunk_c0 = next_chunk
    k_len = offs.size
    b = TILE_VECTORS * (VECTOR_BYTES // xf.itemsize)  # = block_channels(dtype)
    full, tail = block_layout(c_out_g, b)
    blocks = full + tail
    group_stride = k_len * (full * b + tail * (b // 2))  # packed weights per group
    zero = out_data.dtype.type(0)
    c_out = groups * c_out_g
    jobs = n_conv * n_img * groups * blocks * h_out
    n_workers = row_bufs.shape[0]
    for wk in prange(n_workers):
        # A worker's contiguous share of the jobs (the split a prange over the
        # jobs would make), with its buffer from _jit.worker_buffers.
        mine = row_bufs[wk]
        for job in range(wk * jobs // n_workers, (wk + 1) * jobs // n_workers):
            # Rows vary fastest: a thread's consecutive jobs share one block's
            # weights (channel blocks fastest measured 2-5% slower on 104-channel
            # chains, whose 4 blocks' weights do not stay in L2 together).
            y = job % h_out
            rest = job // h_out
            ob = rest % blocks
            rest //= blocks
            g = rest % groups
            rest //= groups
            n = rest % n_img
            conv_i = rest // n_img
            bw = b if ob < full else b // 2  # channels in this block (tail: half)
            # The row's tiles, pixel-major: row_buf[x * bw + c] for pixel x, channel c.
            row_buf = mine[: (w_out + TILE_PIXELS) * bw]
            w_base = conv_i * w_conv_stride + g * group_stride + ob * k_len * b
            x_ch = x_c0 + conv_i * x_conv_step + g * c_in_g
            x_row = n * x_img + x_ch * x_plane + y * row_step
            ch_shift = conv_i * c_out  # this conv's first channel in bias and out
            n_ch = min(bw, c_out_g - ob * b)
            for x0 in range(0, w_out, TILE_PIXELS):
                whole = x0 + TILE_PIXELS <= w_out or w_out < TILE_PIXELS
                start = x0 if whole else w_out - TILE_PIXELS
                x_base = x_row + start * x_step
                if bw == b:
                    tile(wpk, w_base, xf, x_base, offs, k_len, x_step, row_buf[start * bw :])
                else:
                    tile_half(wpk, w_base, xf, x_base, offs, k_len, x_step, row_buf[start * bw :])
            # Epilogue, a row at a time over slices (plain range indices vectorise;
            # computed indices pay Numba's wraparound check on every element).
            for c in range(n_ch):
                ch = g * c_out_g + ob * b + c
                o_idx = n * out_img + (out_c0 + ch_shift + ch) * out_plane + out_base + y * out_row
                o_row = out_data[o_idx : o_idx + w_out]
                bc = bias[ch_shift + ch]
                for i in range(w_out):
                    o_row[i] = row_buf[i * bw + c] + bc
                if has_residual:
                    r_idx = n * res_img + (res_c0 + ch) * res_plane + y * res_row
                    r_row = res[r_idx : r_idx + w_out]
                    for i in range(w_out):
                        o_row[i] += r_row[i]
                if activation and negative_slope == zero:
                    for i in range(w_out):
                        if o_row[i] < zero:  # NaN stays NaN, as in PyTorch
                            o_row[i] = zero
                elif activation:  # leaky ReLU (TResNet); a product, so -inf stays -inf
                    for i in range(w_out):
                        if o_row[i] < zero:
                            o_row[i] *= negative_slope
            if has_next_input:
                # Once the whole row is done (and still in L1), add the next chunk to
                # it, a row at a time. Row slices make the loop index a plain range:
                # with computed indices Numba checks each for wraparound and the
                # loop does not vectorise (measured 10x slower).
                for c in range(n_ch):
                    ch = g * c_out_g + ob * b + c
                    o_idx = n * out_img + (out_c0 + ch) * out_plane + out_base + y * out_row
                    s_idx = n * chunk_img + (chunk_c0 + ch) * chunk_plane + y * chunk_row
                    q_idx = n * nxt_img + ch * nxt_plane + nxt_base + y * nxt_row
                    o_row = out_data[o_idx : o_idx + w_out]
                    s_row = chunk[s_idx : s_idx + w_out]
                    q_row = nxt[q_idx : q_idx + w_out]
                    for i in range(w_out):
                        q_row[i] = o_row[i] + s_row[i]


#: conv_simd's activations (the fused argument's values on every backend).
ACTIVATIONS = (None, "relu", "leaky_relu")


class NextInput(NamedTuple):
    """conv_simd's ``next_input``: the Res2Net "normal" chain's next conv input.

    buffer : (N, C_out, H_out + 2, W_out + 2), the next conv's zero-padded
        input; the epilogue writes its interior
    chunk : (N, C, H_out, W_out) contiguous, the chain's input x; channels
        chunk_c0 .. chunk_c0 + C_out (x_{i+1}) are added to the conv's output
    """

    buffer: np.ndarray
    chunk: np.ndarray
    chunk_c0: int


class InputLayout(NamedTuple):
    """The buffer step 4 reads instead of x (see :func:`input_layout`).

    shape : (H_b, W_b) of each plane of the buffer
    stride, dilation : the conv's geometry on the buffer
    padding : (ph, pw), where x's first row / column sits along a padded axis
    rows, cols : None for a padded axis, else the source index in x of every
        buffer row / column, int64, -1 for a zero (a gathered axis)
    """

    shape: tuple
    stride: tuple
    dilation: tuple
    padding: tuple
    rows: np.ndarray | None
    cols: np.ndarray | None


@functools.lru_cache(maxsize=256)
def input_layout(h, w, h_out, w_out, kernel_hw, stride, padding, dilation):
    """How conv_simd lays out its input: None to read x in place, else the
    :class:`InputLayout` of the buffer to copy it into. (Memoized, as the
    tap offsets: a function of its arguments alone, index arrays read-only;
    r2n.clear_scratch empties it. Arguments: ints and tuples of ints.)

    x is read in place when it needs no padding and its rows are as wide as
    the tiles read (:func:`min_input_width`). Otherwise each axis is either

    * **padded**: x with ``padding`` zeros on both sides (and slack columns
      for rows narrower than a tile): H + 2 ph rows, max(W + 2 pw,
      min_input_width) columns; or
    * **gathered**: only the input rows (columns) that outputs read, one run
      of k per output, ``buffer[o * k + i] = x_padded[o * s + i * d]``, on
      which the conv runs with stride k and dilation 1: H_out kH rows,
      max(W_out, TILE_PIXELS) kW columns,

    whichever is shorter. So the buffer never grows with the stride, the
    padding or the dilation beyond the output's size times the kernel's (a
    4x4 input at stride 10**7, or with padding = dilation = 10**5, reads a
    few dozen values), and every conv whose windows overlap (stride <=
    kernel extent, the usual case) keeps the padded layout, copied a
    contiguous row at a time.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_hw, stride, padding, dilation
    padded_w = max(w + 2 * pw, min_input_width(w_out, kw, sw, dw))
    if (ph, pw) == (0, 0) and padded_w == w:
        return None
    rows = cols = None
    shape_h, shape_w = h + 2 * ph, padded_w
    if h_out * kh < shape_h:
        shape_h, rows = h_out * kh, _gather_index(h_out, kh, sh, ph, dh, h)
        sh, dh = kh, 1
    gathered_w = min_input_width(w_out, kw, kw, 1)
    if gathered_w < shape_w:
        shape_w = gathered_w
        cols = _gather_index(max(w_out, TILE_PIXELS), kw, sw, pw, dw, w)
        sw, dw = kw, 1
    return InputLayout((shape_h, shape_w), (sh, sw), (dh, dw), (ph, pw), rows, cols)


_scratch.on_clear(input_layout.cache_clear)


def _gather_index(n_out, k, s, p, d, size):
    """index[o * k + i] = o * s - p + i * d (the input position output o's
    tap i reads), or -1 where that lies in the padding: (n_out * k,) int64."""
    o = np.arange(n_out, dtype=np.int64)[:, None]
    i = np.arange(k, dtype=np.int64)[None, :]
    index = (o * s - p + i * d).reshape(-1)
    index[(index < 0) | (index >= size)] = -1
    index.flags.writeable = False
    return index


@kernel
def _gather_kernel(x, rows, cols, xg):
    """xg[n, c, r, q] = x[n, c, rows[r], cols[q]], 0 where either index is -1:
    every element of xg written. One job per (n, c) plane."""
    n_img, c = x.shape[0], x.shape[1]
    zero = xg.dtype.type(0)
    for job in prange(n_img * c):
        n = job // c
        ch = job % c
        for r in range(rows.size):
            dst = xg[n, ch, r]
            iy = rows[r]
            if iy < 0:
                for q in range(cols.size):
                    dst[q] = zero
            else:
                src = x[n, ch, iy]
                for q in range(cols.size):
                    ix = cols[q]
                    dst[q] = src[ix] if ix >= 0 else zero


def read_layout(x, layout, make=np.empty):
    """x (N, C, H, W) contiguous, copied into the buffer ``layout`` describes,
    every element written; ``make(shape, dtype)`` allocates the buffer
    (np.empty, or a scratch cache whose old contents then never matter)."""
    n, c, h, w = x.shape
    buf = make((n, c, *layout.shape), x.dtype)
    (ph, pw), rows, cols = layout.padding, layout.rows, layout.cols
    if rows is None and cols is None:
        pad_kernel(x, ph, pw, buf)  # the usual case: contiguous row copies
        return buf
    if rows is None:
        rows = _gather_index(layout.shape[0], 1, 1, ph, 1, h)  # row r holds x's row r - ph
    if cols is None:
        cols = _gather_index(layout.shape[1], 1, 1, pw, 1, w)
    _gather_kernel(kernel_input(x), kernel_input(rows), kernel_input(cols), buf)
    return buf


@functools.lru_cache(maxsize=256)
def _pointwise_layout(h, w, h_out, w_out, stride):
    """The :class:`InputLayout` of a strided 1x1 conv's gathered pixels:
    buffer (H_out, W_out), ``buffer[y, q] = x[y * sh, q * sw]`` (memoized as
    :func:`input_layout`; r2n.clear_scratch empties it)."""
    rows = _gather_index(h_out, 1, stride[0], 0, 1, h)
    cols = _gather_index(w_out, 1, stride[1], 0, 1, w)
    return InputLayout((h_out, w_out), (1, 1), (1, 1), (0, 0), rows, cols)


_scratch.on_clear(_pointwise_layout.cache_clear)


def _role(scratch):
    """``make(shape, dtype)`` for read_layout from a scratch cache."""
    return lambda shape, dtype: scratch("conv.input", shape, dtype)


def conv_simd(
    x,
    packed,
    c_out,
    groups,
    kernel_hw,
    stride,
    padding,
    dilation,
    bias,
    out,
    *,
    out_c0=0,
    activation=None,
    negative_slope=0.0,
    residual=None,
    residual_c0=0,
    next_input=None,
    x_c0=0,
    c_in_g=None,
    out_padding=(0, 0),
    n_conv=1,
    x_conv_step=0,
    scratch=None,
):
    """Launch step 4 on prepared arguments (the building block of fused ops).

    Parameters
    ----------
    x : (N, C, H, W) contiguous input; ``x_c0`` is the first channel read (the
        conv reads channels x_c0 .. x_c0 + groups * c_in_g). If ``padding`` is
        (0, 0) and W >= min_input_width(...), x is read in place (the chain
        passes inputs it padded itself); otherwise it is copied into the
        buffer :func:`input_layout` describes (padded, or gathered when that
        is smaller), allocated by ``scratch`` if given, else new.
    packed : pack_weights(weight, groups) ; c_out : output channels of the conv
    kernel_hw, stride, padding, dilation : pairs ; bias : (c_out,) contiguous
    out : (N, C_tot, H_out + 2*oph, W_out + 2*opw) contiguous; channels
        out_c0 .. out_c0 + c_out are written (interior only if out_padding)
    activation : None, "relu" or "leaky_relu" (``v if v >= 0 else
        negative_slope * v``), after the bias and the residual
    residual : optional (N, C_res, H_out, W_out) contiguous, channels
        residual_c0 + ch added before the activation
    next_input : optional :class:`NextInput` (the Res2Net chain's "sp +
        x_{i+1}"): its buffer (N, c_out, H_out + 2, W_out + 2) receives value +
        chunk[:, chunk_c0 + ch] in its interior, the next conv's padded input
    n_conv, x_conv_step : run ``n_conv`` independent convs of this geometry
        in one launch: ``packed`` and ``bias`` are their packed weights and
        biases concatenated, conv i reads channels from x_c0 + i * x_conv_step
        and writes out_c0 + i * c_out ... (no residual / next_input then)
    scratch : optional ``scratch(role, shape, dtype)`` (r2n.cpu._scratch)
        supplying the input copy's buffer, reused across calls

    Unpadded 1x1 convs of one group run in gemm_1x1 (strided ones on a
    gathered copy of the pixels they read): ``conv_1x1`` where
    ``gemm_1x1.usable``, else ``conv_1x1_rows`` where ``gemm_1x1.rows_usable``
    (planes of at least 7 pixels); others (grouped, smaller planes) run here,
    each plane as one long row at stride 1.
    """
    n, c_total, h, w = x.shape
    if n == 0:
        return out
    if n_conv != 1 and (residual is not None or next_input is not None):
        raise ValueError("conv_simd: n_conv > 1 takes no residual or next_input")
    if activation not in ACTIVATIONS:
        raise ValueError(f"conv_simd: activation must be one of {ACTIVATIONS}, got {activation!r}")
    c_in_g = c_total // groups if c_in_g is None else c_in_g
    (kh, kw), (sh, sw), (ph, pw) = kernel_hw, stride, padding
    oph, opw = out_padding
    h_out = out.shape[2] - 2 * oph
    w_out = out.shape[3] - 2 * opw
    flat = (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0) and (oph, opw) == (0, 0)
    gemm_args = dict(
        out_c0=out_c0, activation=activation, negative_slope=negative_slope,
        residual=residual, residual_c0=residual_c0, x_c0=x_c0, c_in=c_in_g,
    )  # fmt: skip
    if flat and n_conv == 1 and next_input is None:
        if gemm_1x1.usable(x, groups, h * w):  # pixels in the lanes (28x28, 56x56)
            return gemm_1x1.conv_1x1(x, packed, c_out, bias, out, **gemm_args)
        if gemm_1x1.rows_usable(x, groups, h * w):  # 7-pixel tiles (7x7, 14x14)
            return gemm_1x1.conv_1x1_rows(
                x, packed, c_out, bias, out, scratch=scratch, **gemm_args
            )
    pointwise = (kh, kw, ph, pw) == (1, 1, 0, 0) and (oph, opw) == (0, 0)
    if pointwise and not flat and n_conv == 1 and next_input is None:
        # A strided 1x1 conv (the shortcut): gather the pixels it reads into a
        # contiguous (N, C, H_out, W_out) copy, then a GEMM above (measured
        # 1.10-1.12x step 4 reading them in place, and 1.02-1.07x the 7-pixel
        # tiles reading them in place at stride 2: the copy is 2-6% of the
        # conv and the GEMM reads whole lines after it).
        plane_out = h_out * w_out
        gemm = gemm_1x1.conv_1x1 if gemm_1x1.usable(x, groups, plane_out) else None
        if gemm is None and gemm_1x1.rows_usable(x, groups, plane_out):
            gemm = gemm_1x1.conv_1x1_rows
        if gemm is not None:
            layout = _pointwise_layout(h, w, h_out, w_out, tuple(stride))
            xs = read_layout(x, layout, np.empty if scratch is None else _role(scratch))
            rows_scratch = {"scratch": scratch} if gemm is gemm_1x1.conv_1x1_rows else {}
            return gemm(xs, packed, c_out, bias, out, **gemm_args, **rows_scratch)
    if flat and h * w >= TILE_PIXELS:
        xp, rows, cols, row_step = x, 1, h * w, 0  # the plane is one long row: a GEMM
        in_row, in_plane = h * w, h * w
    else:
        geometry = tuple(kernel_hw), tuple(stride), tuple(padding), tuple(dilation)
        layout = input_layout(h, w, h_out, w_out, *geometry)
        xp = x
        if layout is not None:
            xp = read_layout(x, layout, np.empty if scratch is None else _role(scratch))
            (sh, sw), dilation = layout.stride, layout.dilation
        rows, cols, row_step = h_out, w_out, sh * xp.shape[3]
        in_row, in_plane = xp.shape[3], xp.shape[2] * xp.shape[3]
    offs = _cached_tap_offsets(c_in_g, tuple(kernel_hw), tuple(dilation), in_plane, in_row)
    dt = x.dtype
    unused = Channels(unused_array(dt), 0, 0, 0, 0, 0)
    residual_rows = next_rows = next_chunk = unused
    if residual is not None:
        residual_rows = Channels(
            residual.reshape(-1), residual[0].size, rows * cols, cols, 0, residual_c0
        )
    if next_input is not None:  # padded by 1 on each side: the interior starts at (1, 1)
        buf, chunk = next_input.buffer, next_input.chunk
        hp, wp = buf.shape[2], buf.shape[3]
        next_rows = Channels(buf.reshape(-1), buf[0].size, hp * wp, wp, wp + 1, 0)
        next_chunk = Channels(
            chunk.reshape(-1), chunk[0].size, rows * cols, cols, 0, next_input.chunk_c0
        )
    out_row = out.shape[3]
    # One row buffer (a row's tiles, pixel-major) per worker, from the
    # scratch cache when there is one: any contents (every value the
    # epilogue reads is written by a tile first).
    b = block_channels(dt)
    full, tail = block_layout(c_out // groups, b)
    jobs = n_conv * n * groups * (full + tail) * rows
    row_bufs = worker_buffers(jobs, (cols + TILE_PIXELS) * b, dt, "conv.rows", scratch)
    _conv_simd_kernel(
        *as_tuples(
            Channels(xp.reshape(-1), xp[0].size, in_plane, row_step, 0, x_c0),
            ConvWeights(packed, len(packed) // n_conv, offs, c_in_g, bias),
            ConvShape(n, groups, c_out // groups, rows, cols, sw, n_conv, x_conv_step),
            Channels(
                out.reshape(-1),
                out[0].size,
                out.shape[2] * out.shape[3],
                out_row,
                oph * out_row + opw,
                out_c0,
            ),
            Epilogue(
                activation is not None,
                dt.type(negative_slope if activation == "leaky_relu" else 0),
                residual is not None,
                next_input is not None,
            ),
            residual_rows,
            next_rows,
            next_chunk,
        ),
        row_bufs,
    )
    return out


def conv2d_4_simd(x, weight, bias, *, stride, padding, dilation, groups, out_shape):
    """Step 4: packed weights, register tiles in the micro-kernel.

    Arguments and shapes as :func:`r2n.cpu.conv.v1_naive.conv2d_1_naive`.
    """
    x = np.ascontiguousarray(x)
    c_out, _, kh, kw = weight.shape
    out = np.empty(out_shape, x.dtype)
    conv_simd(
        x,
        pack_weights(weight, groups),
        c_out,
        groups,
        (kh, kw),
        stride,
        padding,
        dilation,
        vector_or(bias, 0, c_out, x.dtype),
        out,
    )
    return out
