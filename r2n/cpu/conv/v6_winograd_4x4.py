"""conv2d step ``6_winograd_4x4``: Winograd F(4x4, 3x3), through step 4's micro-kernel.

What changes (from ``5_winograd``)
    4x4 output tiles from 6x6 input windows: 36 multiplies per tile and
    (input, output channel) for 16 outputs, 2.25 per output instead of
    F(2x2, 3x3)'s 4 (and the direct conv's 9). So 36 GEMMs per channel
    block instead of 16, each over a quarter as many tiles. The transforms
    are no longer sums of two or three terms with coefficients +-1: each
    value is a combination of up to 5 terms with coefficients such as 5/2
    or 8, written as one table-driven loop (``_combo``). The epilogue is
    step 5's: bias, a residual, ReLU or leaky ReLU.
Why it can be faster
    1.78x fewer FMAs than step 5 in the GEMMs, at the same FMA rate; the
    transforms cost more per value but there are fewer values per output
    (36 per 16 outputs instead of 16 per 4).
Measured
    See benchmarks/results/NOTES.md "Winograd F(4x4,3x3) (issue 13, item 4)".

Interpolation points, and the float error
-----------------------------------------
F(4, 3) needs 6 points: here 0, -1, 1, 1/2, -2 and infinity (Toom-Cook;
Barabasz et al., "Error analysis and improving the accuracy of Winograd
convolution for deep neural networks", 2020, found such mixed sets of
x and 1/x more accurate than Lavin & Gray's 0, +-1, +-2). Measured before
writing this file (NumPy, float32 transforms and sums against a float64
direct conv, ReLU'd inputs and BN-scaled Kaiming weights): 0, -1, 1, 1/2, -2
gave a relative error of 0.7 / 1.2 / 1.8 / 2.5e-6 at 26 / 104 / 256 / 512
input channels, against 1.0 / 1.8 / 2.8 / 3.8e-6 for 0, +-1, +-2 and
1.0 / 1.8 / 2.7 / 3.7e-6 for 0, +-1, +-1/2 (F(2x2, 3x3): 0.2-0.6e-6). All
within the tests' 1e-5; the error grows like sqrt(C_in), so 1e-5 is reached
near 8000 input channels per group, which no network here has.

The matrices (A^T 4x6, G 6x3, B^T 6x6) are the Toom-Cook ones of those
points, with the divisions (by 15 and 3) in G, which is applied once in
float64 when the weights are transformed; B^T and A^T hold only integers
and halves, quarters and eighths.

How it runs
-----------
As step 5 (one parallel launch; a job is a block of tile rows of one image
and conv; worker scratch sized for L2), with 4x4 tiles:

1. input transform, one input channel at a time: the block's padded input
   rows, split by row and column mod 4 into 16 phase planes
   ``P[ri][cj][pr * R + k] = padded[4 pr + ri][4 k + cj]`` (R = ntx + 1), so
   that the 6 rows of tile row lt are planes ri = m % 4 at row lt + m // 4,
   and its 6 columns planes cj = j % 4 at k = tx + j // 4 (the split by
   whole vectors: masked loads of 4 x 16 values, dealt out by shuffles);
   then V = B^T d B in registers, 16 tiles at a time: the 36 window vectors
   are plain loads from the planes, and the 36 V vectors stores
   (``winograd_registers``).
2. 36 GEMMs ``M[xi] = U[xi] @ V[xi]`` per group and output-channel block,
   through ``microkernel.tile``.
3. per tile row, Y = A^T M A in registers (36 loads, 16 stores per vector of
   (tile, channel) pairs) into Y laid out pixel-major, then step 5's
   ``rows_from_y``: 16 x 16 transposes in registers with bias, residual and
   the activation, into the output's rows (outputs past an edge that is not
   a multiple of 4 are not written: masked stores).

Step 5's ``TRANSFORMS_IN_REGISTERS`` switches both steps back to the flat
loops the register code replaced, for side-by-side timing: ``T[r][cj] =
sum_m B^T[r, m] P[m % 4][cj] (row lt + m // 4)`` (24 loops over the block's
tiles) and ``V[6 r + c] = sum_j B^T[c, j] T[r][j % 4] (tile tx + j // 4)``
(36); ``S[a][col] = sum_r A^T[a, r] M[6 r + col]`` (24) and ``Y[a][b] =
sum_col A^T[b, col] S[a][col]`` (16), then a scalar transposing loop.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from .._jit import FASTMATH, as_tuples, kernel, prange
from ..elementwise import kernel_input, unused_array, vector_or
from ..microkernel import (
    TILE_PIXELS,
    TILE_VECTORS,
    VECTOR_BYTES,
    block_channels,
    block_layout,
)
from . import v5_winograd
from .v5_winograd import (
    LINE_PAD,
    _pass_through_share,
    check_launch,
    pass_through_record,
    rows_from_y,
    winograd_gemms,
)
from .winograd_registers import as_table, separable_transform_kernel, split_row_kernel

#: Target size of a worker's V and M scratch (36 x (C_in + 32) floats per
#: tile). Larger than step 5's 512 KiB, and than the 1 MiB L2: a job streams
#: all of U (36 x C_in x C_out floats, 2.25x step 5's) through the cache
#: once, so more tiles per job pay for it. Measured (1 thread, 52-512
#: channels): 2 MiB 1.04-1.6x faster than 512 KiB, 4 MiB no better.
SCRATCH_BYTES = 2 * 2**20

_inline = numba.njit(inline="always", fastmath=FASTMATH)

# The Toom-Cook matrices of the points 0, -1, 1, 1/2, -2, infinity (module
# docstring). G is applied in float64 by _transform_kernel.
_G = np.array(
    [
        [1.0, 0.0, 0.0],
        [-1 / 3, 1 / 3, -1 / 3],
        [1 / 3, 1 / 3, 1 / 3],
        [-16 / 15, -8 / 15, -4 / 15],
        [1 / 15, -2 / 15, 4 / 15],
        [0.0, 0.0, 1.0],
    ]
)
_BT = np.array(
    [
        [1.0, -1.5, -2.0, 1.5, 1.0, 0.0],
        [0.0, 1.0, -2.5, 0.5, 1.0, 0.0],
        [0.0, -1.0, 0.5, 2.5, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 0.5, -1.0, -0.5, 1.0, 0.0],
        [0.0, 1.0, -1.5, -2.0, 1.5, 1.0],
    ]
)
_AT = np.array(
    [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 0.5, -2.0, 0.0],
        [0.0, 1.0, 1.0, 0.25, 4.0, 0.0],
        [0.0, -1.0, 1.0, 0.125, -8.0, 1.0],
    ]
)


def _terms(matrix):
    """(index, coefficient) tables of each row's nonzero entries, padded to
    TERMS with the row's first entry at coefficient 0 (a term that reads a
    value of the same tile, so it adds nothing a finite input can show)."""
    rows = matrix.shape[0]
    index = np.zeros((rows, TERMS), np.int64)
    coef = np.zeros((rows, TERMS), np.float64)
    for r in range(rows):
        nz = np.flatnonzero(matrix[r])
        index[r, : nz.size] = nz
        index[r, nz.size :] = nz[0]
        coef[r, : nz.size] = matrix[r, nz]
    return index, coef


#: Terms per transform row: B^T's and A^T's rows have 4 or 5 nonzeros.
TERMS = 5
_B_INDEX, _B_COEF = _terms(_BT)
_A_INDEX, _A_COEF = _terms(_AT)

#: use_winograd_4x4's lines: input channels per group, image sides, and the
#: most the 4x4 tiles may compute past the image (14x14 computes 16x16, 1.31x).
MIN_CHANNELS = 24
MIN_SIZE = 16
MAX_WASTE = 1.15
#: From this many input channels per group on, F(4x4) whatever the waste.
WIDE_CHANNELS = 512


def applicable(kernel_hw, stride, dilation) -> bool:
    """True for the convs F(4x4, 3x3) computes: 3x3, stride 1, dilation 1."""
    return tuple(kernel_hw) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)


def step_applies(x, weight, bias, *, stride, dilation, **_) -> bool:
    """Winograd F(4x4, 3x3) computes 3x3 kernels at stride 1, dilation 1 only.

    The ladder's ``applies`` (r2n._ladder.Step); its first line is the reason
    ``r2n ladder`` prints when it skips the step."""
    return applicable(weight.shape[2:], stride, dilation)


def use_winograd_4x4(width, groups, n, h, w) -> bool:
    """Whether a 3x3 stride-1 conv that takes Winograd runs F(4x4, 3x3), not F(2x2, 3x3).

    A deterministic function of the shape: ``width`` input channels in
    ``groups`` groups, batch ``n``, ``h`` x ``w`` images (the output's size:
    the convs here pad by 1; n, h, w None: not known yet, asked at prepare
    time). Asked only where step 5's ``use_winograd`` already chose
    Winograd. F(4x4) when

    * each group has >= MIN_CHANNELS input channels (with the transforms in
      registers, 24-26: 1.11-1.38x at 28x28-112x112, batch 1 and 8; 16:
      0.96-1.14x; with the flat loops before, 26 measured 0.88-1.1x),
    * the images are >= MIN_SIZE on both sides, and
    * the 4x4 tiles compute at most MAX_WASTE times the outputs (14x14 and
      7x7, 1.31x: F(4x4) lost 0.6-0.9x to F(2x2) at 104-256 channels there),
      unless the groups have >= WIDE_CHANNELS channels (512 at 14x14 and 7x7,
      batch 8: 1.1-1.5x) and the batch has >= step 5's WIDE_MIN_TILES 2x2
      tiles (512 ch at batch 1, against F(2x2), 1 / 2 threads: 14x14 1.10x /
      0.93x, 8x8 1.20x / 0.57x: too few jobs for the second thread).

    Measured on the 2-core EPYC (NOTES.md "Winograd F(4x4,3x3)").
    """
    c_in_g = width // groups
    if c_in_g < MIN_CHANNELS:
        return False
    if n is None:
        return True
    if c_in_g >= WIDE_CHANNELS:
        # Few tiles (batch 1 at 14x14 or 8x8, which step 5's rule admits by
        # their waste): too few jobs for F(4x4)'s bigger blocks to share.
        return n * ((h + 1) // 2) * ((w + 1) // 2) >= v5_winograd.WIDE_MIN_TILES
    if h < MIN_SIZE or w < MIN_SIZE:
        return False
    computed = (-(-h // 4) * 4) * (-(-w // 4) * 4)
    return computed <= MAX_WASTE * h * w


def transform_weights(weight, groups, out=None):
    """U = G g G^T of every (C_out, C_in/g) 3x3 kernel, packed for the micro-kernel.

    weight (C_out, C_in/groups, 3, 3) -> 1-D array of 36 consecutive parts,
    one per tile position xi = 6 * row + col, each ``microkernel.pack_weights``
    of the (C_out, C_in/groups, 1, 1) matrix U[:, :, row, col]. Computed in
    float64, then cast to the weight's dtype, by one Numba kernel that writes
    every element of the packed layout (padding channels' zeros too), into
    ``out`` if given (a contiguous 1-D array of the weight's dtype and
    :func:`transformed_size`).
    """
    weight = np.asarray(weight)
    if weight.ndim != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"winograd 4x4: weight must be (C_out, C_in/g, 3, 3), got {weight.shape}")
    size = transformed_size(weight.shape, groups, weight.dtype)
    if out is None:
        out = np.empty(size, weight.dtype)
    elif out.shape != (size,) or out.dtype != weight.dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"winograd 4x4: out must be a contiguous ({size},) {weight.dtype} array, got "
            f"{out.dtype} {out.shape}"
        )
    _transform_kernel(kernel_input(np.ascontiguousarray(weight)), groups, out)
    return out


def transformed_size(weight_shape, groups, dtype):
    """Elements of transform_weights' result for a (C_out, C_in/g, 3, 3) weight."""
    c_out, c_in_g = weight_shape[:2]
    b = block_channels(dtype)
    full, tail = block_layout(c_out // groups, b)
    return 36 * groups * c_in_g * (full * b + tail * (b // 2))


@kernel
def _transform_kernel(weight, groups, packed):
    """packed <- transform_weights(weight, groups): per (output channel, input
    channel), T = G g (6x3) and U = T G^T (6x6) in float64, each of the 36
    values written where pack_weights puts U[xi][g]. One job per output
    channel (as step 5's kernel)."""
    c_out, c_in_g = weight.shape[0], weight.shape[1]
    c_out_g = c_out // groups
    b = TILE_VECTORS * (VECTOR_BYTES // weight.itemsize)  # = block_channels(dtype)
    full, tail = block_layout(c_out_g, b)
    group_stride = c_in_g * (full * b + tail * (b // 2))
    gm = _G
    for co in prange(c_out):
        t = np.empty((6, 3), np.float64)  # G g of one kernel, this job's own
        g = co // c_out_g
        c = co - g * c_out_g
        ob = c // b
        if ob < full:
            base, width = ob * c_in_g * b + (c - ob * b), b
        else:
            base, width = full * c_in_g * b + (c - full * b), b // 2
        if c == c_out_g - 1:
            # The group's last channel writes its block's padding channels' zeros.
            for pad in range(1, width - (c - (ob * b if ob < full else full * b))):
                for ci in range(c_in_g):
                    for xi in range(36):
                        packed[(xi * groups + g) * group_stride + base + pad + ci * width] = 0
        for ci in range(c_in_g):
            w = weight[co, ci]
            for j in range(3):  # T = G g
                for r in range(6):
                    acc = 0.0
                    for k in range(3):
                        acc += gm[r, k] * np.float64(w[k, j])
                    t[r, j] = acc
            for r in range(6):  # U = T G^T
                for col in range(6):
                    acc = 0.0
                    for k in range(3):
                        acc += t[r, k] * gm[col, k]
                    at = ((6 * r + col) * groups + g) * group_stride + base + ci * width
                    packed[at] = acc


#: The transforms' loops run in chunks of CHUNK elements (one or two vectors):
#: their trip counts (a block's tiles: 10-60) are too short for LLVM's
#: vectorised loop body (4 vectors an iteration), which would leave them to its
#: scalar remainder loop; a fixed-length inner loop is vectorised whole.
CHUNK = 16


@_inline
def _combo(dst, d0, src, offsets, coefs, count):
    """dst[d0 + i] = sum over 5 terms t of coefs[t] * src[offsets[t] + i], for
    i < count rounded up to a multiple of CHUNK (offsets >= 0; the caller's
    buffers have room for the rounding)."""
    o0, o1, o2, o3, o4 = offsets
    c0, c1, c2, c3, c4 = coefs
    n = (count + np.uint64(CHUNK - 1)) // np.uint64(CHUNK) * np.uint64(CHUNK)
    for i in range(n):
        dst[d0 + i] = (
            c0 * src[o0 + i] + c1 * src[o1 + i] + c2 * src[o2 + i] + c3 * src[o3 + i]
            + c4 * src[o4 + i]
        )  # fmt: skip


# V[6 r + col] = (B^T d B)[r][col] from the phase planes: d[m][j] of a tile
# is plane (m % 4, j % 4) at row + m // 4, tile + j // 4 (k1 * p_len + k2 *
# pitch + k3); V[xi] is xi * v_xi past the channel's row.
_input_in_registers = separable_transform_kernel(
    as_table(_BT),
    as_table(_BT),
    tuple(tuple(((m % 4) * 4 + j % 4, m // 4, j // 4) for j in range(6)) for m in range(6)),
    tuple(tuple((6 * r + col, 0) for col in range(6)) for r in range(6)),
)
_split_in_registers = split_row_kernel(4)
# Y[a][b] = (A^T M A)[a][b]: M[6 r + col] is (6 r + col) * m_step past the
# tile row's start. Y is pixel-major per output row a (d2 apart): pixel 4 tx
# + b's channels side by side (d1 = bw), the layout step 5's rows_from_y reads.
_output_in_registers = separable_transform_kernel(
    as_table(_AT),
    as_table(_AT),
    tuple(tuple((6 * r + col, 0, 0) for col in range(6)) for r in range(6)),
    tuple(tuple((b, a) for b in range(4)) for a in range(4)),
)


def _round_up(count, chunk=CHUNK):
    return -(-count // chunk) * chunk


class Source4(NamedTuple):
    """An input the convs read (as step 5's ``Source``): conv i reads channels
    ``c0 + i * conv_step`` onwards of ``data`` (flattened (N, C, H, W),
    ``image`` elements per image); ``present`` False: none."""

    data: np.ndarray
    image: int
    c0: int
    conv_step: int
    present: bool


class Weights4(NamedTuple):
    """transform_weights(...) of each conv concatenated (``conv_stride``
    elements per conv), ``offsets`` (k * tbp), the grouping, the bias, and
    whether the GEMMs prefetch their next block of weights (step 5's
    ``PREFETCH_WEIGHTS``)."""

    packed_u: np.ndarray
    conv_stride: int
    offsets: np.ndarray
    c_in_g: int
    groups: int
    c_out_g: int
    bias: np.ndarray
    prefetch: bool


class Output4(NamedTuple):
    """Conv i writes channels ``c0 + i * C_out`` onwards of ``data``
    (flattened (N, C, h_out, w_out), ``image`` elements per image); adds
    ``residual`` (same layout as data) if ``has_residual``; then ReLU if
    ``relu`` (leaky with ``negative_slope`` if that is not 0)."""

    data: np.ndarray
    image: int
    c0: int
    h_out: int
    w_out: int
    residual: np.ndarray
    has_residual: bool
    relu: bool
    negative_slope: float


class Plan4(NamedTuple):
    """The input's size and padding, the job split (:func:`plan`), and step 5's
    ``TRANSFORMS_IN_REGISTERS`` bits."""

    h: int
    w: int
    ph: int
    pw: int
    n_img: int
    n_conv: int
    rows_per_block: int
    n_row_blocks: int
    tbp: int
    in_registers: int


class Scratch4(NamedTuple):
    """Per-worker scratch, (workers, ...) each: V, M, S + Y, the phase planes
    P followed by the row sums T."""

    v: np.ndarray
    m: np.ndarray
    y: np.ndarray
    planes: np.ndarray


@kernel
def _winograd_kernel(source, add, weights, output, geometry, scratch, pass_through):
    """One launch of ``n_conv`` F(4x4, 3x3) convs (see the module docstring).

    For conv i, image n and output channel ch = g * c_out_g + c:

        s = source[n, C_in-slice of conv i] (+ add[n, C_in-slice of conv i])
        v = conv3x3(s zero-padded by (ph, pw))[ch] + bias[i * C_out + ch]
        v += residual[same element]                    (if has_residual)
        v = v if not v < 0 else slope * v              (if relu; slope 0: ReLU)
        out[n, out.c0 + i * C_out + ch] = v
        out[n, pass.out_c0 + c] = source[n, pass.c0 + c]  for c < pass.count

    (``pass_through``: step 5's PassThrough, the planes of one size.)
    Layouts as step 5's kernel, with 36 positions: V[xi][c][idx] (idx = lt *
    R + tx, R = ntx + 1, row pitch tbp), M[xi][idx][channel of the block];
    per tile row S[a][col] (24) and Y[a][b] (16) of R x bw with the flat
    loops, or Y per output row pixel-major (in registers, as step 5's).
    Planes P[ri][cj]
    of (rows + 1) x R, then T[r][cj] of rows x R + 1.
    """
    a, a_img, a_c0, a_conv_step, _ = source
    add_data, add_img, add_c0, add_conv_step, has_add = add
    u, u_conv_stride, offs, c_in_g, groups, c_out_g, bias, w_prefetch = weights
    out, out_img, out_c0, h_out, w_out, resid, has_resid, apply_relu, slope_f = output
    h, w, ph, pw, n_img, n_conv, rows_per_block, n_row_blocks, tbp, in_registers = geometry
    v_scr, m_scr, y_scr, p_scr = scratch
    pass_c0, pass_out_c0, pass_count = pass_through
    n_workers = v_scr.shape[0]
    c_in = groups * c_in_g
    c_out = groups * c_out_g
    lanes = VECTOR_BYTES // u.itemsize
    blk = TILE_VECTORS * lanes  # = block_channels(dtype)
    full, tail = block_layout(c_out_g, blk)
    blocks = full + tail
    group_stride = c_in_g * (full * blk + tail * (blk // 2))
    xi_stride = groups * group_stride
    plane = h * w
    plane_out = h_out * w_out
    nty = (h_out + 3) // 4
    ntx = (w_out + 3) // 4
    pitch = ntx + 1  # R
    # One phase plane and one row sum, with room for the transforms' chunks
    # (CHUNK) and T's read at idx + 1; the same lengths as conv_winograd_4x4's.
    p_len = (rows_per_block + 1) * pitch + CHUNK
    t_len = (rows_per_block * pitch + CHUNK - 1) // CHUNK * CHUNK + CHUNK
    t0 = 16 * p_len  # T after the 16 planes
    m_step = tbp * blk + LINE_PAD  # M[xi] stride
    v_xi = c_in * tbp + LINE_PAD  # V[xi] stride
    zero = out.dtype.type(0)
    slope = out.dtype.type(slope_f)
    leaky = slope_f != 0.0
    jobs = n_conv * n_img * n_row_blocks
    b_index, b_coef = _B_INDEX, _B_COEF
    a_index, a_coef = _A_INDEX, _A_COEF
    # Columns k whose 4 padded pixels 4k + cj - pw (cj < 4) are all inside a row.
    k_a = (pw + 3) // 4
    k_b = max(k_a, min(pitch, (w + pw) // 4))
    four = np.uint64(4)
    # The transforms' source offsets, per loop q and term: T[r][cj] reads
    # plane (m % 4, cj) at row + m // 4; V[6 r + col] reads T[r][j % 4] at
    # tile + j // 4; S[a][col] reads M[6 r + col] (plus the tile row's start).
    row_off = np.empty((24, TERMS), np.uint64)
    col_off = np.empty((36, TERMS), np.uint64)
    s_off = np.empty((24, TERMS), np.uint64)
    for t in range(TERMS):
        for q in range(24):
            mi = b_index[q >> 2, t]
            row_off[q, t] = ((mi % 4) * 4 + (q & 3)) * p_len + (mi // 4) * pitch
            s_off[q, t] = (6 * a_index[q // 6, t] + q % 6) * m_step
        for q in range(36):
            ji = b_index[q % 6, t]
            col_off[q, t] = t0 + (4 * (q // 6) + ji % 4) * t_len + ji // 4
    calls_per_row = (ntx + TILE_PIXELS - 1) // TILE_PIXELS
    for wk in prange(n_workers):
        v = v_scr[wk]
        m = m_scr[wk]
        ys = y_scr[wk]
        ps = p_scr[wk]
        for job in range(wk * jobs // n_workers, (wk + 1) * jobs // n_workers):
            rb = job % n_row_blocks
            rest = job // n_row_blocks
            n = rest % n_img
            conv_i = rest // n_img
            ty0 = rb * rows_per_block
            rows = min(nty, ty0 + rows_per_block) - ty0
            span = np.uint64(rows * pitch)
            # 1. Input transform, one input channel at a time.
            for c in range(c_in):
                a_base = n * a_img + (a_c0 + conv_i * a_conv_step + c) * plane
                add_base = n * add_img + (add_c0 + conv_i * add_conv_step + c) * plane
                for pr in range(rows + 1):
                    for ri in range(4):
                        iy = 4 * (ty0 + pr) + ri - ph
                        p_row = ri * 4 * p_len + pr * pitch  # P[ri][0] at row pr
                        if iy < 0 or iy >= h:
                            for cj in range(4):
                                for k in range(pitch):
                                    ps[p_row + cj * p_len + k] = zero
                            continue
                        row = a_base + iy * w
                        row_add = add_base + iy * w
                        if in_registers & 4:
                            _split_in_registers(
                                a, row, add_data, row_add, has_add, w, pw, ps, p_row, p_len, pitch,
                                lanes,
                            )  # fmt: skip
                            continue
                        for kk in range(pitch - (k_b - k_a)):  # the edges, one at a time
                            k = kk if kk < k_a else kk + k_b - k_a
                            for cj in range(4):
                                ix = 4 * k + cj - pw
                                val = zero
                                if 0 <= ix < w:
                                    val = a[row + ix]
                                    if has_add:
                                        val += add_data[row_add + ix]
                                ps[p_row + cj * p_len + k] = val
                        # the interior: all 4 phases in one loop (a stride-4 read)
                        src = np.uint64(row + 4 * k_a - pw)
                        src_add = np.uint64(row_add + 4 * k_a - pw)
                        d = np.uint64(p_row + k_a)
                        u_p = np.uint64(p_len)
                        if has_add:
                            for j in range(np.uint64(k_b - k_a)):
                                for cj in range(np.uint64(4)):
                                    ps[d + cj * u_p + j] = (
                                        a[src + four * j + cj] + add_data[src_add + four * j + cj]
                                    )
                        else:
                            for j in range(np.uint64(k_b - k_a)):
                                for cj in range(np.uint64(4)):
                                    ps[d + cj * u_p + j] = a[src + four * j + cj]
                if in_registers & 1:  # V = B^T d B, a vector of tiles at a time
                    for e in range(np.uint64(0), span, np.uint64(lanes)):
                        _input_in_registers(
                            ps, e, p_len, pitch, v, np.uint64(c * tbp) + e, v_xi, 0
                        )
                    continue
                # T[r][cj] = sum_m B^T[r, m] P[m % 4][cj] at row + m // 4.
                for q in range(24):
                    r = q >> 2
                    o = (row_off[q, 0], row_off[q, 1], row_off[q, 2], row_off[q, 3], row_off[q, 4])
                    cf = (
                        out.dtype.type(b_coef[r, 0]), out.dtype.type(b_coef[r, 1]),
                        out.dtype.type(b_coef[r, 2]), out.dtype.type(b_coef[r, 3]),
                        out.dtype.type(b_coef[r, 4]),
                    )  # fmt: skip
                    _combo(ps, np.uint64(t0 + q * t_len), ps, o, cf, span)
                # V[6 r + col] = sum_j B^T[col, j] T[r][j % 4] at tile + j // 4.
                for q in range(36):
                    r, col = q // 6, q % 6
                    o = (col_off[q, 0], col_off[q, 1], col_off[q, 2], col_off[q, 3], col_off[q, 4])
                    cf = (
                        out.dtype.type(b_coef[col, 0]), out.dtype.type(b_coef[col, 1]),
                        out.dtype.type(b_coef[col, 2]), out.dtype.type(b_coef[col, 3]),
                        out.dtype.type(b_coef[col, 4]),
                    )  # fmt: skip
                    _combo(v, np.uint64(q * v_xi + c * tbp), ps, o, cf, span)
            # 2.-3. Per group and channel block: 36 GEMMs, then the output transform.
            i_span = rows * pitch
            per_row = rows * calls_per_row <= (i_span + TILE_PIXELS - 1) // TILE_PIXELS
            n_calls = (
                rows * calls_per_row if per_row else (i_span + TILE_PIXELS - 1) // TILE_PIXELS
            )
            for g in range(groups):
                for ob in range(blocks):
                    bw = blk if ob < full else blk // 2
                    winograd_gemms(
                        36, u, conv_i * u_conv_stride, xi_stride, g, group_stride, groups, ob,
                        blocks, blk, bw, v_xi, c_in_g, v, offs, tbp, m, m_step, n_calls,
                        per_row, calls_per_row, pitch, w_prefetch,
                    )  # fmt: skip
                    # A tile row of M is el values; S and Y rows are el rounded
                    # up to CHUNK apart (the loops run over whole chunks).
                    el_count = np.uint64(pitch * bw)
                    el = (pitch * bw + CHUNK - 1) // CHUNK * CHUNK
                    u_el = np.uint64(el)
                    ch0 = g * c_out_g + ob * blk
                    n_ch = min(bw, c_out_g - ob * blk)
                    quads = w_out // 4  # tiles whose 4 columns are inside
                    u_bw = np.uint64(bw)
                    for lt in range(rows):
                        mr = np.uint64(lt * pitch * bw)
                        if in_registers & 2:
                            # Y = A^T M A, a vector of (tile, channel)s at a
                            # time, then the 4 output rows through transposes
                            # in registers.
                            y0 = 24 * el
                            for e in range(0, pitch * bw, lanes):
                                tx = e // bw
                                y_at = y0 + 4 * tx * bw + (e - tx * bw)
                                _output_in_registers(
                                    m, mr + np.uint64(e), m_step, 0, ys, y_at, bw, 4 * pitch * bw
                                )
                            oy0 = 4 * (ty0 + lt)
                            o_c = n * out_img + (out_c0 + conv_i * c_out + ch0) * plane_out
                            for ar in range(min(4, h_out - oy0)):
                                rows_from_y(
                                    ys, y0 + ar * 4 * pitch * bw, bw, n_ch, lanes, out,
                                    o_c + (oy0 + ar) * w_out, plane_out, w_out, bias,
                                    conv_i * c_out + ch0, resid, has_resid, apply_relu, slope,
                                )  # fmt: skip
                            continue
                        else:
                            # S[a][col] = sum_r A^T[a, r] M[6 r + col], a tile row
                            for q in range(24):
                                ar = q // 6
                                o = (
                                    mr + s_off[q, 0], mr + s_off[q, 1], mr + s_off[q, 2],
                                    mr + s_off[q, 3], mr + s_off[q, 4],
                                )  # fmt: skip
                                cf = (
                                    out.dtype.type(a_coef[ar, 0]), out.dtype.type(a_coef[ar, 1]),
                                    out.dtype.type(a_coef[ar, 2]), out.dtype.type(a_coef[ar, 3]),
                                    out.dtype.type(a_coef[ar, 4]),
                                )  # fmt: skip
                                _combo(ys, np.uint64(q * el), m, o, cf, el_count)
                            # Y[a][b] = sum_col A^T[b, col] S[a][col]
                            for q in range(16):
                                ar, bc = q >> 2, q & 3
                                s0 = 6 * ar * el
                                o = (
                                    np.uint64(s0 + a_index[bc, 0] * el),
                                    np.uint64(s0 + a_index[bc, 1] * el),
                                    np.uint64(s0 + a_index[bc, 2] * el),
                                    np.uint64(s0 + a_index[bc, 3] * el),
                                    np.uint64(s0 + a_index[bc, 4] * el),
                                )
                                cf = (
                                    out.dtype.type(a_coef[bc, 0]), out.dtype.type(a_coef[bc, 1]),
                                    out.dtype.type(a_coef[bc, 2]), out.dtype.type(a_coef[bc, 3]),
                                    out.dtype.type(a_coef[bc, 4]),
                                )  # fmt: skip
                                _combo(ys, np.uint64((24 + q) * el), ys, o, cf, el_count)
                        # ... then channel by channel into the output rows, with
                        # bias, residual and the activation.
                        oy0 = 4 * (ty0 + lt)
                        for c in range(n_ch):
                            o_c = n * out_img + (out_c0 + conv_i * c_out + ch0 + c) * plane_out
                            bc = bias[conv_i * c_out + ch0 + c]
                            for ar in range(min(4, h_out - oy0)):
                                o_row = np.uint64(o_c + (oy0 + ar) * w_out)
                                y_row = np.uint64((24 + 4 * ar) * el + c)
                                for tx in range(np.uint64(quads * 4)):
                                    q4 = tx >> np.uint64(2)
                                    at = y_row + (tx & np.uint64(3)) * u_el + q4 * u_bw
                                    val = ys[at] + bc
                                    if has_resid:
                                        val += resid[o_row + tx]
                                    if apply_relu:  # NaN stays NaN; selects, not
                                        # branches on the sign (mispredicted)
                                        neg = slope * val if leaky else zero
                                        val = neg if val < zero else val
                                    out[o_row + tx] = val
                                for ox in range(quads * 4, w_out):  # the last, partial tile
                                    at = y_row + np.uint64(ox % 4) * u_el
                                    at += np.uint64(ox // 4) * u_bw
                                    val = ys[at] + bc
                                    if has_resid:
                                        val += resid[o_row + np.uint64(ox)]
                                    if apply_relu:
                                        neg = slope * val if leaky else zero
                                        val = neg if val < zero else val
                                    out[o_row + np.uint64(ox)] = val
        # This worker's share of the pass-through planes (plane = plane_out,
        # as the launcher checked), after its conv jobs: as in step 5.
        _pass_through_share(
            a, a_img, out, out_img, plane, n_img, pass_c0, pass_out_c0, pass_count, wk,
            n_workers,
        )  # fmt: skip


def plan(n_jobs_outer, c_in, h_out, w_out, dtype, workers):
    """(rows_per_block, n_row_blocks, tbp): how a conv's tile rows split into jobs.

    As step 5's ``plan``, with 36 x (c_in + one channel block) floats of V
    and M per tile, and 4x4 tiles.
    """
    nty, ntx = (h_out + 3) // 4, (w_out + 3) // 4
    dtype = np.dtype(dtype)
    per_row = 36 * (c_in + block_channels(dtype)) * (ntx + 1) * dtype.itemsize
    max_rows = max(1, min(nty, SCRATCH_BYTES // per_row))
    best = None
    for rows in range(max_rows, 0, -1):
        n_blocks = -(-nty // rows)
        jobs = n_jobs_outer * n_blocks
        cost = -(-jobs // workers) * (2 * rows + 1)  # in half rows
        if best is None or cost < best[0]:
            best = (cost, rows, n_blocks)
    _, rows, n_blocks = best
    span = rows * (ntx + 1)
    tbp = max(_round_up(span), span + TILE_PIXELS)  # as step 5's
    return rows, n_blocks, tbp


def conv_winograd_4x4(
    a,
    packed_u,
    c_out,
    groups,
    padding,
    bias,
    out,
    *,
    a_c0=0,
    c_in_g=None,
    add=None,
    add_c0=0,
    out_c0=0,
    activation=None,
    negative_slope=0.0,
    residual=None,
    n_conv=1,
    a_conv_step=0,
    add_conv_step=0,
    scratch=None,
    pass_through=None,
):
    """Launch the F(4x4, 3x3) kernel on prepared arguments.

    The arguments of step 5's ``conv_winograd``, with ``packed_u`` from this
    module's :func:`transform_weights`, plus

    activation : None, "relu" or "leaky_relu" (slope ``negative_slope``)
    residual : optional array shaped like ``out`` (C-contiguous, same dtype),
        added after the bias, before the activation, element by element.
    pass_through : optional ``(c0, out_c0, count)``, as step 5's.
    """
    checked = check_launch(
        "conv_winograd_4x4",
        36,
        a,
        packed_u,
        c_out,
        groups,
        padding,
        bias,
        out,
        a_c0=a_c0,
        c_in_g=c_in_g,
        add=add,
        add_c0=add_c0,
        out_c0=out_c0,
        activation=activation,
        residual=residual,
        n_conv=n_conv,
        a_conv_step=a_conv_step,
        add_conv_step=add_conv_step,
    )
    passing = pass_through_record("conv_winograd_4x4", pass_through, a, out)
    if checked is None:
        return out
    c_in_g, per_conv = checked
    n, _, h, w = a.shape
    c_in = groups * c_in_g
    ph, pw = padding
    h_out, w_out = out.shape[2], out.shape[3]
    dt = a.dtype
    blk = block_channels(dt)
    workers = numba.get_num_threads()
    rows, n_blocks, tbp = plan(n_conv * n, c_in, h_out, w_out, dt, workers)
    workers = max(1, min(workers, n_conv * n * n_blocks))
    ntx = (w_out + 3) // 4
    make = scratch or (lambda role, shape, dtype, fill=np.zeros: fill(shape, dtype))
    # As in step 5: every value that reaches the output is written by this
    # job first (planes for every input channel, all R columns of rows + 1
    # quad rows; V over the block's tiles; M by the GEMMs; S and Y per tile
    # row). Lanes past the block (V's slack, the unused tile column, T's
    # extra element, channels past the outputs) are computed from whatever
    # the buffers hold and never written out.
    v_scr = make("wino4.v", (workers, 36 * (c_in * tbp + LINE_PAD)), dt, np.zeros)
    m_scr = make("wino4.m", (workers, 36 * (tbp * blk + LINE_PAD)), dt, np.zeros)
    y_scr = make("wino4.y", (workers, 40 * _round_up((ntx + 1) * blk)), dt, np.zeros)
    p_len, t_len = (rows + 1) * (ntx + 1) + CHUNK, _round_up(rows * (ntx + 1)) + CHUNK
    p_scr = make("wino4.planes", (workers, 16 * p_len + 24 * t_len), dt, np.zeros)
    offs = kernel_input(np.arange(c_in_g, dtype=np.int64) * tbp)
    add_arr = a if add is None else add
    in_registers = v5_winograd.TRANSFORMS_IN_REGISTERS
    res_arr = unused_array(dt) if residual is None else kernel_input(residual.reshape(-1))
    _winograd_kernel(
        *as_tuples(
            Source4(kernel_input(a.reshape(-1)), a[0].size, a_c0, a_conv_step, True),
            Source4(
                kernel_input(add_arr.reshape(-1)),
                add_arr[0].size,
                add_c0,
                add_conv_step,
                add is not None,
            ),
            Weights4(
                kernel_input(packed_u),
                per_conv,
                offs,
                c_in_g,
                groups,
                c_out // groups,
                kernel_input(bias),
                v5_winograd.PREFETCH_WEIGHTS,
            ),
            Output4(
                out.reshape(-1),
                out[0].size,
                out_c0,
                h_out,
                w_out,
                res_arr,
                residual is not None,
                activation is not None,
                float(negative_slope) if activation == "leaky_relu" else 0.0,
            ),
            Plan4(h, w, ph, pw, n, n_conv, rows, n_blocks, tbp, in_registers),
            Scratch4(v_scr, m_scr, y_scr, p_scr),
            passing,
        )
    )
    return out


def conv2d_6_winograd_4x4(x, weight, bias, *, stride, padding, dilation, groups, out_shape):
    """Step 6: Winograd F(4x4, 3x3). 3x3, stride 1, dilation 1 only (else ValueError).

    x (N, C_in, H, W), weight (C_out, C_in/groups, 3, 3) -> (N, C_out, H_out, W_out)
    """
    c_out, _, kh, kw = weight.shape
    if not applicable((kh, kw), stride, dilation):
        raise ValueError(
            "conv2d step 6_winograd_4x4: needs a 3x3 kernel, stride 1 and dilation 1, got "
            f"kernel {(kh, kw)}, stride {tuple(stride)}, dilation {tuple(dilation)}"
        )
    x = np.ascontiguousarray(x)
    out = np.empty(out_shape, x.dtype)
    conv_winograd_4x4(
        x,
        transform_weights(np.ascontiguousarray(weight), groups),
        c_out,
        groups,
        tuple(padding),
        vector_or(bias, 0, c_out, x.dtype),
        out,
    )
    return out
