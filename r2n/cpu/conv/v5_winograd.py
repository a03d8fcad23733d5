"""conv2d step ``5_winograd``: Winograd F(2x2, 3x3), through step 4's micro-kernel.

What changes (from ``4_simd``)
    The algorithm, for 3x3 stride-1 dilation-1 convs (else ValueError): 2x2
    output tiles cost 16 multiplies per (input, output channel) instead of
    36. Per job (a block of tile rows, sized for L2): the input transform,
    16 GEMMs (C_out x C_in) @ (C_in x tiles) through step 4's micro-kernel
    (r2n.cpu.microkernel: the same tiles and packed weights), and the output
    transform with bias and the activation.
Why it is faster
    2.25x fewer FMAs, at the same FMA rate (the GEMMs run at 94-96% of the
    peak on the FMAs they issue), paid for with the transforms (additions,
    O(C x pixels)): a net win from ~16 input channels per group up
    (``use_winograd``); below that the transforms dominate.
Measured
    ~157 GFLOP/s in direct-conv FLOPs per second (one thread, float32, 104 ->
    104 channels, 14x14, batch 8, on the 2-core Zen 4 machine of 2026-11-25:
    117.4 GFLOP/s FMA peak; step 4 runs this conv at ~90 there). See
    NOTES.md "Winograd F(2x2,3x3) (v6)".

What it computes
----------------
A 3x3, stride-1, dilation-1 convolution, cut into 2x2 output tiles. Each tile
reads a 4x4 input window ``d`` and, per (input channel, output channel), needs
16 multiplications instead of 36 (Lavin & Gray, 2015)::

    V = B^T d B        (input transform, per input channel and tile)
    U = G g G^T        (weight transform, once per weight tensor)
    M[xi] = U[xi] @ V[xi]   for each of the 16 positions xi of the 4x4 tile:
                            a GEMM (C_out x C_in) @ (C_in x tiles)
    Y = A^T M A        (output transform: 2x2 outputs per tile)

So the multiply-adds drop by 36/16 = 2.25x; the price is the two transforms
(additions only, O(C x pixels) instead of O(C^2 x pixels)) and larger float
error: the transforms' +-1/2 coefficients add a few ulps per term (measured
below the 1e-5 float32 tolerance on 104-channel convs, tests/test_cpu_winograd.py).

How it runs
-----------
One parallel launch per conv (or per ``n_conv`` independent convs). A job is
(conv, image, block of tile rows); each worker thread takes a contiguous range
of jobs and owns scratch buffers sized for L2 (``SCRATCH_BYTES``, ``plan``):

1. input transform into ``V[16][C_in][tiles]``, one input channel at a time:
   the block's padded input rows are split by row and column parity (a
   stride-2 read, optionally of the sum of two sources: the Res2Net "normal"
   chain's ``sp + x_{i+1}``, added on the read instead of written out
   first); then V = B^T d B a vector of 16 tiles at a time, in registers
   (``winograd_registers``: 16 loads, 16 stores, the sums between them).
   Zero padding and partial edge tiles (odd sizes) come from zero-filled
   parity rows: nothing outside the input is read.
2. per group and output-channel block (32 float32 / 16 float64 channels, as in
   step 4): 16 GEMMs ``M[xi] = U[xi] @ V[xi]`` through the register-tiled
   micro-kernel of ``microkernel`` (7 tiles x 32 channels per call, the reduction
   over the group's input channels), U packed like ``microkernel.pack_weights``
   per ``xi``.
3. the output transform of that block, a tile row at a time while M is in
   L2: A^T M A in registers, a vector of (tile, channel) pairs at a time,
   into Y laid out pixel-major; then the transpose from channels-in-lanes
   to rows of pixels, 16 x 16 blocks in registers (:func:`rows_from_y`),
   with bias, residual and ReLU, into the output's channel slice; outputs
   past an odd edge are not written (masked stores).

``TRANSFORMS_IN_REGISTERS`` switches the transforms (and the parity split,
by whole vectors with masked loads) back to the flat loops they replaced,
for side-by-side timing: 8 + 16 loops of one addition over the block's tiles
for the input, 8 + 4 for the output, through the intermediate sums T and S,
and a scalar transposing loop into the output rows.

Measured on the 2-core Zen 4 (one thread, batch 8, float32), with the flat
loops: 104 ch 14x14 1.86 ms per conv (input transform 0.31, GEMMs 1.30 =
94% of the peak on the FMAs issued, output 0.24) vs 3.4-3.7 ms for step 4;
26 ch 56x56 3.55 ms (0.85 + 1.49 + 0.68) vs 3.9-4.3. The transforms in
registers: NOTES.md "Winograd transforms in registers".

``use_winograd`` is the rule the fused chain dispatches on (measured,
benchmarks/results/NOTES.md "Winograd F(2x2,3x3) (v6)").
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
    tile_half_prefetch,
    tile_prefetch,
)
from .gemm_1x1 import transposed_epilogue_kernel
from .winograd_registers import separable_transform_kernel, split_row_kernel

#: Target size of a worker's V and M scratch (16 x (C_in + 32) floats per
#: tile): a job's tile rows are chosen so that both stay in the 1 MiB L2.
SCRATCH_BYTES = 512 * 2**10
#: ... times this when one worker runs the launch: fewer, larger blocks, each
#: streaming U (16/9 the conv's weights) once. Measured with the transforms
#: in registers (1 thread, against 512 KiB): 2 MiB 1.07-1.20x at batch 1
#: (256 and 512 ch at 14x14, 64 ch at 56x56), 1.0-1.10x at batch 8; at 2
#: threads larger blocks measured 0.74-1.08x (16 channels at 56x56 worst),
#: so there the target stays (NOTES.md "Winograd transforms in registers").
ONE_WORKER_SCRATCH_FACTOR = 4

# The transforms' loop helpers, inlined into the kernel by Numba (as calls
# they cost ~25 cycles each, 24 calls per input channel and tile block).
_inline = numba.njit(inline="always", fastmath=FASTMATH)

#: Whether the GEMMs ask for their next block of transformed weights while
#: one runs (:func:`winograd_gemms`). At batch 1 each block (C_in x 32
#: values per xi: 32 KiB at 256 channels) is used by few tiles, and in a
#: forward the weights come from memory: U is 16/9 (F(2x2)) or 4 (F(4x4))
#: times the conv's weights, 4 MB for one 256-channel conv. A switch for
#: side-by-side timing (NOTES.md).
PREFETCH_WEIGHTS = True

#: Whether the transforms run in registers, a vector of tiles at a time
#: (r2n.cpu.conv.winograd_registers), instead of flat loops over a block
#: through the intermediate sums T and S. A switch for side-by-side timing
#: (NOTES.md); bits: 1 input transform, 2 output transform, 4 parity split.
TRANSFORMS_IN_REGISTERS = 7
#: Elements of padding between V's (and M's) transform positions. Their
#: strides would otherwise be multiples of 4 KiB (C_in x tbp floats), and the
#: 16 (36) rows a transform vector reads or writes at once would all map to
#: one or two sets of the 8-way L1: one cache line apart spreads them.
LINE_PAD = 16
#: Elements past each parity plane: the split's whole-vector stores run past
#: a row, and the last row's past the plane.
PLANE_SLACK = 16
# The transforms' whole vectors (VECTOR_BYTES / itemsize lanes) must fit in it.
assert PLANE_SLACK >= VECTOR_BYTES // 4

#: use_winograd's lines: input channels per group, image height and width,
#: and for wide groups, 2x2 output tiles in the batch or the tiles' waste.
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_SIZE = 7
WIDE_CHANNELS = 128
WIDE_MIN_TILES = 64
WIDE_MAX_WASTE = 1.15

# Weight transform G (4x3) of F(2x2, 3x3).
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# Input and output transforms B^T (4x4) and A^T (2x4).
_BT = ((1.0, 0.0, -1.0, 0.0), (0.0, 1.0, 1.0, 0.0), (0.0, -1.0, 1.0, 0.0), (0.0, 1.0, 0.0, -1.0))
_AT = ((1.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, -1.0))
# V[4 r + col] = (B^T d B)[r][col] from the parity planes: d[m][j] of a tile
# is plane (m % 2, j % 2) at row + m // 2, tile + j // 2 (k1 * p_len + k2 *
# pitch + k3); V[xi] is xi * v_xi past the channel's row.
_input_in_registers = separable_transform_kernel(
    _BT,
    _BT,
    tuple(tuple((2 * (m % 2) + j % 2, m // 2, j // 2) for j in range(4)) for m in range(4)),
    tuple(tuple((4 * r + col, 0) for col in range(4)) for r in range(4)),
)
# Y[a][b] = (A^T M A)[a][b]: M[4 r + col] is (4 r + col) * m_step past the
# tile row's start. Y is pixel-major per output row a (d2 apart): pixel 2 tx
# + b's channels side by side (d1 = bw), the layout rows_from_y reads.
_output_in_registers = separable_transform_kernel(
    _AT,
    _AT,
    tuple(tuple((4 * r + col, 0, 0) for col in range(4)) for r in range(4)),
    tuple(tuple((b, a) for b in range(2)) for a in range(2)),
)
_split_in_registers = split_row_kernel(2)


def applicable(kernel_hw, stride, dilation) -> bool:
    """True for the convs F(2x2, 3x3) computes: 3x3, stride 1, dilation 1."""
    return tuple(kernel_hw) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)


def step_applies(x, weight, bias, *, stride, dilation, **_) -> bool:
    """Winograd F(2x2, 3x3) computes 3x3 kernels at stride 1, dilation 1 only.

    The ladder's ``applies`` (r2n._ladder.Step): the arguments of
    :func:`conv2d_5_winograd`, checked and normalised.
    """
    return applicable(weight.shape[2:], stride, dilation)


def use_winograd(width, groups, n, h, w) -> bool:
    """Whether the fused chain runs its 3x3 stride-1 convs as Winograd.

    A deterministic function of the chunk conv's shape: ``width`` channels in
    ``groups`` groups, batch ``n``, ``h`` x ``w`` images (n, h, w None: not
    known yet; the chain asks at prepare time, to decide whether to transform
    its weights). Winograd when

    * each group has >= WINOGRAD_MIN_CHANNELS input channels (shorter GEMMs
      do not pay for the transforms; 26 channels still gain 1.2x),
    * the images are >= WINOGRAD_MIN_SIZE on both sides, and
    * groups of >= WIDE_CHANNELS channels, whose U (16 x C_in x C_out
      floats, >= 1 MiB) does not stay in L2 and is streamed again by every
      job, have >= WIDE_MIN_TILES 2x2 output tiles in the batch, or images
      whose 2x2 tiles compute at most WIDE_MAX_WASTE times the outputs
      (even sides: 1.0; 7x7: 1.31).

    Measured on the 2-core Zen 4 (benchmarks/results/NOTES.md "Winograd
    F(2x2,3x3) (v6)"): at 1 and 2 threads Winograd won on every Res2Net-50
    chain shape at batch 1 and 8 (26 ch 56x56 1.13-1.26x, 52 ch 28x28
    1.34-1.56x, 104 ch 14x14 1.48-1.91x) except 208 ch at 7x7 below batch 4
    (2 threads: 0.80x at batch 1, 0.94x at 2, 0.84x at 3; 1.10x at 4). On
    the 2-core EPYC (NOTES.md "TResNet's wide 3x3 convs at batch 1"), batch
    1, 1 / 2 threads: 256 ch 14x14 1.68x / 1.56x, 8x8 1.94x / 1.61x, 10x10
    1.67x / 1.59x, 512 ch 14x14 1.54x / 1.31x, 8x8 1.52x / 1.69x, but 512
    ch 7x7 0.82x / 0.85x: what loses at 7x7 is the odd edge's waste, not the
    few tiles.
    """
    c_in_g = width // groups
    if c_in_g < WINOGRAD_MIN_CHANNELS:
        return False
    if n is None:
        return True
    if h < WINOGRAD_MIN_SIZE or w < WINOGRAD_MIN_SIZE:
        return False
    tiles = n * ((h + 1) // 2) * ((w + 1) // 2)
    if c_in_g < WIDE_CHANNELS or tiles >= WIDE_MIN_TILES:
        return True
    computed = (-(-h // 2) * 2) * (-(-w // 2) * 2)
    return computed <= WIDE_MAX_WASTE * h * w


def transform_weights(weight, groups, out=None):
    """U = G g G^T of every (C_out, C_in/g) 3x3 kernel, packed for the micro-kernel.

    weight (C_out, C_in/groups, 3, 3) -> 1-D array of 16 consecutive parts, one
    per tile position xi = 4 * row + col, each ``microkernel.pack_weights`` of the
    (C_out, C_in/groups, 1, 1) matrix U[:, :, row, col]. Computed in float64,
    then cast to the weight's dtype, by one Numba kernel that writes the packed
    layout directly (:func:`_transform_kernel`), every element of it (the
    padding channels' zeros too): ``out``, if given, a 1-D array of the
    weight's dtype and :func:`transformed_size`, receives it (e.g. a slice of
    several convs' buffer) whatever it held.
    """
    weight = np.asarray(weight)
    if weight.ndim != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"winograd: weight must be (C_out, C_in/g, 3, 3), got {weight.shape}")
    size = transformed_size(weight.shape, groups, weight.dtype)
    if out is None:
        out = np.empty(size, weight.dtype)
    elif out.shape != (size,) or out.dtype != weight.dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"winograd: out must be a contiguous ({size},) {weight.dtype} array, got "
            f"{out.dtype} {out.shape}"
        )
    _transform_kernel(kernel_input(np.ascontiguousarray(weight)), groups, out)
    return out


def transformed_size(weight_shape, groups, dtype):
    """Elements of transform_weights' result for a (C_out, C_in/g, 3, 3) weight."""
    c_out, c_in_g = weight_shape[:2]
    b = block_channels(dtype)
    full, tail = block_layout(c_out // groups, b)
    return 16 * groups * c_in_g * (full * b + tail * (b // 2))


@kernel
def _transform_kernel(weight, groups, packed):
    """packed <- transform_weights(weight, groups): per (output channel,
    input channel), T = G g (4x3) and U = T G^T (4x4) in float64, each of the
    16 values written where pack_weights puts U[xi][g] (xi = 4 * row + col,
    the matrices laid out as one conv of 16 x groups groups). One job per
    output channel; the 0.5 factors are exact, so the values match the
    former NumPy matrix products' to the last bit but for summation order.

    Written as a kernel because the NumPy form (two float64 matrix
    products through OpenBLAS) cost 0.25-1.5 ms for one 104 x 104 weight,
    10x apart between processes (NOTES.md, "Should the one-call
    r2n.res2net_chain use Winograd too?").
    """
    c_out, c_in_g = weight.shape[0], weight.shape[1]
    c_out_g = c_out // groups
    b = TILE_VECTORS * (VECTOR_BYTES // weight.itemsize)  # = block_channels(dtype)
    full, tail = block_layout(c_out_g, b)
    group_stride = c_in_g * (full * b + tail * (b // 2))
    for co in prange(c_out):
        t = np.empty((4, 3), np.float64)  # G g of one kernel, this job's own
        g = co // c_out_g
        c = co - g * c_out_g
        ob = c // b
        if ob < full:
            base, width = ob * c_in_g * b + (c - ob * b), b
        else:
            base, width = full * c_in_g * b + (c - full * b), b // 2
        if c == c_out_g - 1:
            # The group's last channel writes the zeros of its block's padding
            # channels (c_out_g .. the block's end), for every ci and xi.
            for pad in range(1, width - (c - (ob * b if ob < full else full * b))):
                for ci in range(c_in_g):
                    for xi in range(16):
                        packed[(xi * groups + g) * group_stride + base + pad + ci * width] = 0
        for ci in range(c_in_g):
            w = weight[co, ci]
            for j in range(3):  # T = G g
                g0, g1, g2 = np.float64(w[0, j]), np.float64(w[1, j]), np.float64(w[2, j])
                t[0, j] = g0
                t[1, j] = 0.5 * (g0 + g1 + g2)
                t[2, j] = 0.5 * (g0 - g1 + g2)
                t[3, j] = g2
            for r in range(4):  # U = T G^T, row r
                t0, t1, t2 = t[r, 0], t[r, 1], t[r, 2]
                u = (t0, 0.5 * (t0 + t1 + t2), 0.5 * (t0 - t1 + t2), t2)
                for col in range(4):
                    xi = 4 * r + col
                    at = (xi * groups + g) * group_stride + base + ci * width
                    packed[at] = u[col]


@_inline
def _pass_through_share(a, a_img, out, out_img, plane, n_img, c0, out_c0, count, wk, n_workers):
    """Worker ``wk`` of ``n_workers``'s share of the pass-through: channels c0 ..
    c0 + count of every image of the flat input ``a`` copied, plane by plane,
    to channels out_c0 .. of the flat output ``out`` (``a_img`` / ``out_img``
    elements per image, ``plane`` per channel). Used by step 6 too."""
    n_pass = n_img * count
    for pass_i in range(wk * n_pass // n_workers, (wk + 1) * n_pass // n_workers):
        pass_n = pass_i // count
        pass_c = pass_i % count
        from_at = np.uint64(pass_n * a_img + (c0 + pass_c) * plane)
        to_at = np.uint64(pass_n * out_img + (out_c0 + pass_c) * plane)
        for e in range(np.uint64(plane)):
            out[to_at + e] = a[from_at + e]


@_inline
def winograd_gemms(
    n_xi, u, u_conv, xi_stride, g, group_stride, groups, ob, blocks, blk, bw,
    v_xi, c_in_g, v, offs, tbp, m, m_step, n_calls, per_row, calls_per_row, pitch,
    w_prefetch,
):  # fmt: skip
    """A job's ``n_xi`` GEMMs for output-channel block ``ob`` of group ``g``
    (steps 5 and 6): ``M[xi] = U[xi] @ V[xi]`` through the micro-kernel, 7
    tiles x ``bw`` channels per call (``n_calls`` calls, per tile row when
    ``per_row``). With ``w_prefetch``, every call also asks for the weight
    lines of the block the loop runs next: ``xi + 1``, else the next
    channel block's, else the next group's, else this conv's first (the
    worker's next job, a later tile block of the same conv, starts there).
    """
    for xi in range(n_xi):
        u_base = u_conv + xi * xi_stride + g * group_stride + ob * c_in_g * blk
        if xi + 1 < n_xi:
            u_next = u_base + xi_stride
        elif ob + 1 < blocks:
            u_next = u_conv + g * group_stride + (ob + 1) * c_in_g * blk
        elif g + 1 < groups:
            u_next = u_conv + (g + 1) * group_stride
        else:
            u_next = u_conv
        ahead = u_next - u_base if w_prefetch else 0
        x_base = xi * v_xi + g * c_in_g * tbp
        for call in range(n_calls):
            if per_row:
                i0 = (call // calls_per_row) * pitch + (call % calls_per_row) * TILE_PIXELS
            else:
                i0 = call * TILE_PIXELS
            dst_m = m[xi * m_step + i0 * bw :]
            if bw == blk:
                tile_prefetch(u, u_base, v, x_base + i0, offs, c_in_g, 1, dst_m, ahead)
            else:
                tile_half_prefetch(u, u_base, v, x_base + i0, offs, c_in_g, 1, dst_m, ahead)


@_inline
def _pair_sum(dst, d0, src, x0, x1, y0, y1, kind, count, one):
    """One of the 4 sums of the input transform, over ``count`` elements:
    dst[d0 + i] = (x0 - x1, y0 + x1, x1 - y0, y0 - y1)[kind] where x0 stands
    for src[x0 + i] and so on (offsets >= 0). Written as x + sign * y, which
    is exact for sign = +-1, so that one loop serves all 4."""
    x = x0 if kind == 0 else (x1 if kind == 2 else y0)
    y = x1 if kind <= 1 else (y0 if kind == 2 else y1)
    sign = one if kind == 1 else -one
    ux = np.uint64(x)
    uy = np.uint64(y)
    for i in range(count):
        dst[d0 + i] = src[ux + i] + sign * src[uy + i]


@_inline
def _triple_sum(dst, d0, src, x0, step, negate, count, one):
    """One sum of the output transform, over ``count`` elements:
    dst[d0 + i] = x + y + z (negate 0) or x - y - z (negate 1), where x, y, z
    are src at x0 + i, x0 + step + i, x0 + 2 step + i."""
    sign = -one if negate else one
    y0 = x0 + step
    z0 = y0 + step
    for i in range(count):
        dst[d0 + i] = src[x0 + i] + sign * src[y0 + i] + sign * src[z0 + i]


_finish_block = transposed_epilogue_kernel(partial=True)


@_inline
def rows_from_y(ys, y_row, bw, n_ch, lanes, out, o_row, plane_out, w_out, bias, bias_c0,
                resid, has_resid, relu, slope):  # fmt: skip
    """One output row of ``n_ch`` channels from the output transform's Y
    (steps 5 and 6, transforms in registers): for c < n_ch, px < w_out::

        v = ys[y_row + px * bw + c] + bias[bias_c0 + c]
        v += resid[o_row + c * plane_out + px]             (if has_resid)
        v = v if not v < 0 else slope * v (0 if slope 0)  (if relu)
        out[o_row + c * plane_out + px] = v

    Y holds the row pixel-major (a pixel's ``bw`` channels side by side) and
    the output wants each channel's pixels side by side: blocks of L
    channels x L pixels (L = 16 float32) are transposed in registers and
    stored as whole (masked) vectors (``gemm_1x1.transposed_epilogue_kernel``,
    the order of the scalar loop it replaced, so the same bits).
    """
    for cb in range(0, n_ch, lanes):
        ch_count = min(lanes, n_ch - cb)
        o = o_row + cb * plane_out
        for q in range(0, w_out, lanes):
            _finish_block(
                ys, y_row + q * bw + cb, bw, out, o + q, plane_out, bias, bias_c0 + cb,
                resid, o + q, plane_out, has_resid, relu, slope, min(lanes, w_out - q), ch_count,
            )  # fmt: skip


class Source(NamedTuple):
    """An input the convs read: conv i reads channels ``c0 + i * conv_step``
    onwards of ``data``, the flattened (N, C, H, W) array of ``image``
    elements per image; ``present`` False: none (data: any array of the
    first source's type, never read)."""

    data: np.ndarray
    image: int
    c0: int
    conv_step: int
    present: bool


class WinogradWeights(NamedTuple):
    """transform_weights(...) of each conv, concatenated (``conv_stride``
    elements per conv), ``offsets`` (k * tbp for the micro-kernel), the
    grouping, the (n_conv * C_out,) bias, and whether the GEMMs prefetch
    their next block of weights (:data:`PREFETCH_WEIGHTS`)."""

    packed_u: np.ndarray
    conv_stride: int
    offsets: np.ndarray
    c_in_g: int
    groups: int
    c_out_g: int
    bias: np.ndarray
    prefetch: bool


class WinogradOutput(NamedTuple):
    """Conv i writes channels ``c0 + i * C_out`` onwards of ``data`` (flattened
    (N, C, h_out, w_out), ``image`` elements per image); adds ``residual``
    (laid out as data) if ``has_residual``; then ReLU if ``activation``
    (leaky, of slope ``negative_slope``, if that is not 0)."""

    data: np.ndarray
    image: int
    c0: int
    h_out: int
    w_out: int
    activation: bool
    residual: np.ndarray
    has_residual: bool
    negative_slope: float


class WinogradPlan(NamedTuple):
    """The input's size and padding, and how the launch splits into jobs
    (:func:`plan`): ``n_conv * n_img * n_row_blocks`` jobs of
    ``rows_per_block`` tile rows, V's row pitch ``tbp``; which parts run in
    registers (:data:`TRANSFORMS_IN_REGISTERS`)."""

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


class WinogradScratch(NamedTuple):
    """Per-worker scratch, (workers, ...) each: V, M, S and Y, the parity
    planes P and the vertical sums T (see :func:`_winograd_kernel`)."""

    v: np.ndarray
    m: np.ndarray
    y: np.ndarray
    planes: np.ndarray


class PassThrough(NamedTuple):
    """Channels a launch also copies, unchanged, from its input to its output:
    ``count`` planes per image, channels ``c0`` onwards of the source ``a``
    into channels ``out_c0`` onwards of ``out`` (count 0: none). The Res2Net
    "normal" chain's last chunk, moved in its first conv's launch instead of
    a launch of its own: one parallel region, one wake-up of the sleeping
    workers (50-90 us at 2 threads, benchmarks/region_overhead.py), fewer per
    chain. Each worker copies its contiguous share of the N x count planes
    after its conv jobs. Also step 6's (r2n.cpu.conv.v6_winograd_4x4)."""

    c0: int
    out_c0: int
    count: int


def pass_through_record(fname, pass_through, a, out):
    """The :class:`PassThrough` of a launcher's ``pass_through`` argument
    (``None`` or ``(c0, out_c0, count)``), checked against ``a`` (N, C_a, H,
    W) and ``out`` (N, C_out, H_out, W_out): the planes must be of one size
    and the channels inside both arrays (else ValueError naming ``fname``)."""
    if pass_through is None:
        return PassThrough(0, 0, 0)
    if len(pass_through) != 3 or any(int(v) != v for v in pass_through):
        raise ValueError(
            f"{fname}: pass_through must be None or 3 ints (c0, out_c0, count), "
            f"got {pass_through!r}"
        )
    c0, out_c0, count = (int(v) for v in pass_through)
    if count == 0:
        return PassThrough(0, 0, 0)
    if a.shape[2:] != out.shape[2:]:
        raise ValueError(
            f"{fname}: pass_through copies planes of a {a.shape[2:]} into out, whose "
            f"planes are {out.shape[2:]}"
        )
    if min(c0, out_c0, count) < 0 or c0 + count > a.shape[1] or out_c0 + count > out.shape[1]:
        raise ValueError(
            f"{fname}: pass_through copies channels {c0} .. {c0 + count - 1} of a "
            f"({a.shape[1]} channels) to {out_c0} .. {out_c0 + count - 1} of out "
            f"({out.shape[1]}); both must lie inside"
        )
    return PassThrough(c0, out_c0, count)


@kernel
def _winograd_kernel(source, add, weights, output, geometry, scratch, pass_through):
    """One launch of ``n_conv`` Winograd convs (see the module docstring).

    For conv i, image n and output channel ch = g * c_out_g + c:

        s = source[n, C_in-slice of conv i] (+ add[n, C_in-slice of conv i])
        v = conv3x3(s zero-padded by (ph, pw))[ch] + bias[i * C_out + ch]
        v += residual[same element]                    (if has_residual)
        v = v if not v < 0 else slope * v              (if activation; slope 0: 0)
        out[n, out.c0 + i * C_out + ch] = v                           (NaN kept)
    out[n, pass.out_c0 + c] = source[n, pass.c0 + c]  for c < pass.count

    The arguments are the records above, unpacked into locals first (the
    loops below see plain arrays and ints); ``add`` is read only if
    ``add.present``; ``pass_through`` (:class:`PassThrough`) needs the
    source's planes as large as the output's (the launcher checks).

    Layouts. A job's tiles are numbered ``idx = lt * R + tx`` (local tile row
    lt, column tx, R = ntx + 1: one unused column per row, so that every
    transform is a flat loop over the block). V[xi][c][idx] has the row pitch
    TBP (``geometry.tbp``, >= rows * R + TILE_PIXELS: a micro-kernel call
    may run past the block), V[xi] and M[xi] LINE_PAD apart beyond their
    rows, M[xi][idx][channel of the block]; per tile row, S (8 rows) and Y (4
    rows) of R x bw with the flat loops, or (transforms in registers) Y per
    output row pixel-major, pixel 2 tx + b's bw channels side by side (S
    unused). The input of one channel: the parity planes
    P[ri][cj][pr * R + k] = padded[2 pr + ri][2 k + cj] (rows+1 rows of R),
    so that the 4 rows of tile row lt are P[0] and P[1] at row lt and lt + 1
    and its 4 columns P[.][0] and P[.][1] at k = tx and tx + 1; then the 8
    vertical sums T[a][cj][idx]. ``offs[k] = k * TBP``.

    What made it fast (each measured): loops that store one array (a loop
    storing 4 needs more runtime alias checks than LLVM allows and stays
    scalar); unsigned offsets in them (a signed ``i + offset`` index gets
    Numba's wraparound select, which stops LLVM's vectoriser; a stride-2 read
    vectorises only when both parities are read); no slices in the loops
    (each one costs ~30 cycles here, where Numba keeps their reference
    counts); the transforms' 36 loops as 4 loops over tables of rows,
    inlined (written out, they took 30 s more to compile).
    """
    a, a_img, a_c0, a_conv_step, _ = source
    add_data, add_img, add_c0, add_conv_step, has_add = add
    u, u_conv_stride, offs, c_in_g, groups, c_out_g, bias, w_prefetch = weights
    out, out_img, out_c0, h_out, w_out, apply_relu, resid, has_resid, slope_f = output
    h, w, ph, pw, n_img, n_conv, rows_per_block, n_row_blocks, tbp, in_registers = geometry
    v_scr, m_scr, y_scr, p_scr = scratch
    pass_c0, pass_out_c0, pass_count = pass_through
    n_workers = v_scr.shape[0]
    c_in = groups * c_in_g
    c_out = groups * c_out_g
    blk = TILE_VECTORS * (VECTOR_BYTES // u.itemsize)  # = block_channels(dtype)
    full, tail = block_layout(c_out_g, blk)
    blocks = full + tail
    group_stride = c_in_g * (full * blk + tail * (blk // 2))
    xi_stride = groups * group_stride
    plane = h * w
    plane_out = h_out * w_out
    nty = (h_out + 1) // 2
    ntx = (w_out + 1) // 2
    pitch = ntx + 1  # R
    lanes = VECTOR_BYTES // u.itemsize
    # One parity plane (with a vector of room: the split's whole-vector stores)
    p_len = (rows_per_block + 1) * pitch + PLANE_SLACK
    t_len = rows_per_block * pitch + 1  # one vertical sum (+1: read at idx + 1)
    m_step = tbp * blk + LINE_PAD  # M[xi] stride
    v_xi = c_in * tbp + LINE_PAD  # V[xi] stride
    zero = out.dtype.type(0)
    slope = out.dtype.type(slope_f)
    leaky = slope_f != 0.0
    jobs = n_conv * n_img * n_row_blocks
    # Unsigned copies of the offsets the flat loops add to their counter.
    one = np.uint64(1)
    two = np.uint64(2)
    u_m_step = np.uint64(m_step)
    m_rows4 = np.uint64(4 * m_step)  # M[xi] to M[xi + 4]: one row of the 4x4 tile
    one_f = out.dtype.type(1)
    # Trip counts of the transforms' table loops (2 and 4 row pairs), read
    # from an array so that LLVM does not unroll them into copies of the loop.
    n_pairs = np.array([2, 4])
    # Columns k whose two padded pixels 2k + cj - pw (cj = 0, 1) are both inside a row.
    k_a = (pw + 1) // 2
    k_b = max(k_a, min(pitch, (w + pw) // 2))
    # Micro-kernel calls: per tile row (skips the unused column) or, for
    # rows shorter than a call, straight over the flat tile numbering.
    calls_per_row = (ntx + TILE_PIXELS - 1) // TILE_PIXELS
    for wk in prange(n_workers):
        v = v_scr[wk]
        m = m_scr[wk]
        ys = y_scr[wk]  # one tile row: S (8 rows of (ntx + 1) x bw), then Y (4)
        ps = p_scr[wk]  # the parity planes P, then T
        for job in range(wk * jobs // n_workers, (wk + 1) * jobs // n_workers):
            rb = job % n_row_blocks
            rest = job // n_row_blocks
            n = rest % n_img
            conv_i = rest // n_img
            ty0 = rb * rows_per_block
            rows = min(nty, ty0 + rows_per_block) - ty0
            span = rows * pitch  # flat tile numbers of this block
            u_span = np.uint64(span)
            # 1. Input transform, one input channel at a time.
            for c in range(c_in):
                a_base = n * a_img + (a_c0 + conv_i * a_conv_step + c) * plane
                add_base = n * add_img + (add_c0 + conv_i * add_conv_step + c) * plane
                # The padded rows 2l + ri, split by column parity:
                # P[ri][cj][pr * R + k] = padded[2 pr + ri][2k + cj].
                for ri in range(2):
                    for pr in range(rows + 1):
                        iy = 2 * (ty0 + pr) + ri - ph
                        pe = (2 * ri) * p_len + pr * pitch
                        po = pe + p_len
                        if iy < 0 or iy >= h:
                            for k in range(pitch):
                                ps[pe + k] = zero
                                ps[po + k] = zero
                            continue
                        row = a_base + iy * w
                        row_add = add_base + iy * w
                        if in_registers & 4:
                            _split_in_registers(
                                a, row, add_data, row_add, has_add, w, pw, ps, pe, p_len, pitch,
                                lanes,
                            )  # fmt: skip
                            continue
                        for kk in range(pitch - (k_b - k_a)):  # the edges, one at a time
                            k = kk if kk < k_a else kk + k_b - k_a
                            for cj in range(2):
                                ix = 2 * k + cj - pw
                                val = zero
                                if 0 <= ix < w:
                                    val = a[row + ix]
                                    if has_add:
                                        val += add_data[row_add + ix]
                                ps[pe + cj * p_len + k] = val
                        # the interior, both parities in one loop (a stride-2
                        # read that vectorises)
                        src = np.uint64(row + 2 * k_a - pw)
                        src_add = np.uint64(row_add + 2 * k_a - pw)
                        de = np.uint64(pe + k_a)
                        do = np.uint64(po + k_a)
                        if has_add:  # the chain's sp + x_{i+1}, added on the read
                            for j in range(np.uint64(k_b - k_a)):
                                ps[de + j] = a[src + two * j] + add_data[src_add + two * j]
                                ps[do + j] = (
                                    a[src + two * j + one] + add_data[src_add + two * j + one]
                                )
                        else:
                            for j in range(np.uint64(k_b - k_a)):
                                ps[de + j] = a[src + two * j]
                                ps[do + j] = a[src + two * j + one]
                if in_registers & 1:  # V = B^T d B, a vector of tiles at a time
                    for e in range(np.uint64(0), u_span, np.uint64(lanes)):
                        _input_in_registers(
                            ps, e, p_len, pitch, v, np.uint64(c * tbp) + e, v_xi, 0
                        )
                    continue
                # B^T d, per column parity cj: rows 2l .. 2l+3 of tile row l are
                # P[0] row l, P[1] row l, P[0] row l+1, P[1] row l+1. Then
                # (B^T d) B: columns 2tx .. 2tx+3 are (even tx, odd tx, even
                # tx+1, odd tx+1). Both are 4 sums of the same form
                #     (x0 - x1, y0 + x1, x1 - y0, y0 - y1)
                # over 2 and 4 pairs of rows: one loop each, over a table of
                # rows (24 written-out loops took ~30 s to compile).
                for q in range(n_pairs[0] * 4):
                    x0 = (q >> 2) * p_len  # P[0][cj], P[0][cj] next row, P[1][cj], ...
                    x1 = x0 + pitch
                    y0 = x0 + 2 * p_len
                    y1 = y0 + pitch
                    dst = np.uint64(4 * p_len + (2 * (q & 3) + (q >> 2)) * t_len)
                    _pair_sum(ps, dst, ps, x0, x1, y0, y1, q & 3, u_span, one_f)
                for q in range(n_pairs[1] * 4):
                    x0 = 4 * p_len + 2 * (q >> 2) * t_len  # T[a][0], T[a][0] shifted, T[a][1], ...
                    x1 = x0 + 1
                    y0 = x0 + t_len
                    y1 = y0 + 1
                    dst = np.uint64(q * v_xi + c * tbp)
                    _pair_sum(v, dst, ps, x0, x1, y0, y1, q & 3, u_span, one_f)
            # 2.-3. Per group and channel block: 16 GEMMs, then the output transform.
            per_row = rows * calls_per_row <= (span + TILE_PIXELS - 1) // TILE_PIXELS
            n_calls = rows * calls_per_row if per_row else (span + TILE_PIXELS - 1) // TILE_PIXELS
            for g in range(groups):
                for ob in range(blocks):
                    bw = blk if ob < full else blk // 2
                    winograd_gemms(
                        16, u, conv_i * u_conv_stride, xi_stride, g, group_stride, groups, ob,
                        blocks, blk, bw, v_xi, c_in_g, v, offs, tbp, m, m_step, n_calls,
                        per_row, calls_per_row, pitch, w_prefetch,
                    )  # fmt: skip
                    # Y = A^T M A, a tile row at a time (S and Y stay in L1; the
                    # unused tile and channels too: flat loops) ...
                    el = np.uint64(pitch * bw)
                    ch0 = g * c_out_g + ob * blk
                    n_ch = min(bw, c_out_g - ob * blk)
                    pairs = w_out // 2  # tiles whose 2 columns are inside
                    u_bw = np.uint64(bw)
                    for lt in range(rows):
                        mr = np.uint64(lt * pitch * bw)
                        if in_registers & 2:
                            # Y = A^T M A, a vector of (tile, channel)s at a
                            # time, then the 2 output rows through
                            # transposes in registers.
                            for e in range(0, pitch * bw, lanes):
                                tx = e // bw
                                y_at = 8 * pitch * bw + 2 * tx * bw + (e - tx * bw)
                                _output_in_registers(
                                    m, mr + np.uint64(e), m_step, 0, ys, y_at, bw, 2 * pitch * bw
                                )
                            oy = 2 * (ty0 + lt)
                            o_c = n * out_img + (out_c0 + conv_i * c_out + ch0) * plane_out
                            for half in range(2 if oy + 1 < h_out else 1):
                                rows_from_y(
                                    ys, (8 + 2 * half) * pitch * bw, bw, n_ch, lanes, out,
                                    o_c + (oy + half) * w_out, plane_out, w_out, bias,
                                    conv_i * c_out + ch0, resid, has_resid, apply_relu, slope,
                                )  # fmt: skip
                            continue
                        else:
                            for q in range(n_pairs[1] * 2):  # S = A^T M, 2 x 4
                                col, second = q & 3, q >> 2
                                m_at = mr + np.uint64(col + 4 * second) * u_m_step
                                s_at = np.uint64(col + 4 * second) * el
                                _triple_sum(ys, s_at, m, m_at, m_rows4, second, el, one_f)
                            for q in range(n_pairs[1]):  # Y = S A, 2 x 2
                                row, second = q >> 1, q & 1
                                s_at = np.uint64(4 * row + second) * el
                                y_at = np.uint64(8 + 2 * row + second) * el
                                _triple_sum(ys, y_at, ys, s_at, el, second, el, one_f)
                        # ... then channel by channel into the output rows, with
                        # bias, residual and (leaky) ReLU (the transpose; outputs
                        # past an odd edge are not written).
                        oy = 2 * (ty0 + lt)
                        for c in range(n_ch):
                            o_c = n * out_img + (out_c0 + conv_i * c_out + ch0 + c) * plane_out
                            bc = bias[conv_i * c_out + ch0 + c]
                            for half in range(2 if oy + 1 < h_out else 1):
                                o_row = np.uint64(o_c + (oy + half) * w_out)
                                ye = np.uint64(8 + 2 * half) * el + np.uint64(c)
                                yo = ye + el
                                if not (has_resid or leaky):  # the chains' case, kept lean
                                    for tx in range(np.uint64(pairs)):
                                        v0 = ys[ye + tx * u_bw] + bc
                                        v1 = ys[yo + tx * u_bw] + bc
                                        if apply_relu:  # NaN stays NaN, as in PyTorch
                                            v0 = zero if v0 < zero else v0
                                            v1 = zero if v1 < zero else v1
                                        out[o_row + two * tx] = v0
                                        out[o_row + two * tx + one] = v1
                                for tx in range(np.uint64(pairs if has_resid or leaky else 0)):
                                    v0 = ys[ye + tx * u_bw] + bc
                                    v1 = ys[yo + tx * u_bw] + bc
                                    if has_resid:
                                        v0 += resid[o_row + two * tx]
                                        v1 += resid[o_row + two * tx + one]
                                    if apply_relu:  # NaN stays NaN, as in PyTorch
                                        # Selects, not branches on the sign
                                        # (half the values: mispredicted
                                        # branches made this loop 1.5x slower).
                                        n0 = slope * v0 if leaky else zero
                                        n1 = slope * v1 if leaky else zero
                                        v0 = n0 if v0 < zero else v0
                                        v1 = n1 if v1 < zero else v1
                                    out[o_row + two * tx] = v0
                                    out[o_row + two * tx + one] = v1
                                if pairs < ntx:  # odd width: the last column
                                    v0 = ys[ye + np.uint64(pairs) * u_bw] + bc
                                    if has_resid:
                                        v0 += resid[o_row + np.uint64(2 * pairs)]
                                    if apply_relu:
                                        n0 = slope * v0 if leaky else zero
                                        v0 = n0 if v0 < zero else v0
                                    out[o_row + np.uint64(2 * pairs)] = v0
        # This worker's share of the pass-through planes (plane = plane_out,
        # as the launcher checked), after its conv jobs.
        _pass_through_share(
            a, a_img, out, out_img, plane, n_img, pass_c0, pass_out_c0, pass_count, wk,
            n_workers,
        )  # fmt: skip


def plan(n_jobs_outer, c_in, h_out, w_out, dtype, workers):
    """(rows_per_block, n_row_blocks, tbp): how a conv's tile rows split into jobs.

    ``n_jobs_outer`` (convs x images) jobs of ``c_in`` input channels and
    h_out x w_out outputs in ``dtype``, on ``workers`` threads.

    Blocks of tile rows no larger than keeps V (16 x c_in per tile) and M (16
    x one channel block per tile) within SCRATCH_BYTES (times
    ONE_WORKER_SCRATCH_FACTOR on one worker); among those sizes,
    the one whose busiest worker has the fewest tile rows to do (counting
    half a row per job for its fixed costs): 7 blocks on 2 workers leave
    one idle an eighth of the time, so batch 1 takes 10 blocks there.
    ``tbp``: V's row pitch, the block's flat tile numbers (rows x (ntx + 1))
    rounded up to whole vectors (PLANE_SLACK, >= the lane count), and at
    least a micro-kernel call (TILE_PIXELS) past them: not always a multiple
    of 16 (every vector access is unaligned).
    """
    nty, ntx = (h_out + 1) // 2, (w_out + 1) // 2
    dtype = np.dtype(dtype)
    per_row = 16 * (c_in + block_channels(dtype)) * (ntx + 1) * dtype.itemsize
    target = SCRATCH_BYTES * (ONE_WORKER_SCRATCH_FACTOR if workers == 1 else 1)
    max_rows = max(1, min(nty, target // per_row))
    best = None
    for rows in range(max_rows, 0, -1):
        n_blocks = -(-nty // rows)
        jobs = n_jobs_outer * n_blocks
        cost = -(-jobs // workers) * (2 * rows + 1)  # in half rows
        if best is None or cost < best[0]:
            best = (cost, rows, n_blocks)
    _, rows, n_blocks = best
    # Room for the transforms' whole vectors of tiles (winograd_registers) and
    # for a micro-kernel call past the block's tiles; no more (a larger pitch
    # measured 1-2.5% slower: V's rows spread over more lines).
    span = rows * (ntx + 1)
    tbp = max(-(-span // PLANE_SLACK) * PLANE_SLACK, span + TILE_PIXELS)
    return rows, n_blocks, tbp


def check_launch(
    fname,
    tile_values,
    a,
    packed_u,
    c_out,
    groups,
    padding,
    bias,
    out,
    *,
    a_c0,
    c_in_g,
    add,
    add_c0,
    out_c0,
    activation,
    residual,
    n_conv,
    a_conv_step,
    add_conv_step,
):
    """The Winograd launchers' argument checks (step 5's :func:`conv_winograd`
    and step 6's ``conv_winograd_4x4``, whose arguments these are):
    ``tile_values`` transformed weights per (input, output) channel pair (16
    for F(2x2, 3x3), 36 for F(4x4, 3x3)); errors name ``fname``.

    Returns (c_in_g, per_conv): input channels per group and the packed
    weights' elements per conv; None when the output is empty (nothing to
    compute).
    """
    n, c_a, h, w = a.shape
    c_in_g = c_a // groups if c_in_g is None else c_in_g
    c_in = groups * c_in_g
    ph, pw = padding
    h_out, w_out = out.shape[2], out.shape[3]
    if (h_out, w_out) != (h + 2 * ph - 2, w + 2 * pw - 2) or out.shape[0] != n:
        raise ValueError(
            f"{fname}: out must be (N={n}, C, {h + 2 * ph - 2}, {w + 2 * pw - 2}), got {out.shape}"
        )
    if n == 0 or h_out <= 0 or w_out <= 0:
        return None
    if activation not in (None, "relu", "leaky_relu"):
        raise ValueError(
            f"{fname}: activation must be None, 'relu' or 'leaky_relu', got {activation!r}"
        )
    if residual is not None and residual.shape != out.shape:
        raise ValueError(
            f"{fname}: residual must be shaped like out {out.shape}, got {residual.shape}"
        )
    if add is not None and (add.shape[0] != n or add.shape[2:] != (h, w)):
        raise ValueError(f"{fname}: add must be (N={n}, C, {h}, {w}), got {add.shape}")
    for name, arr, c0, step, verb in (
        ("a", a, a_c0, a_conv_step, "read"),
        ("add", add, add_c0, add_conv_step, "read"),
        ("out", out, out_c0, c_out, "write"),
        ("residual", residual, out_c0, c_out, "read"),
    ):
        if arr is None:
            continue
        if not arr.flags.c_contiguous or arr.dtype != a.dtype:
            raise ValueError(
                f"{fname}: {name} must be a C-contiguous {a.dtype} array, got {arr.dtype}"
                + ("" if arr.flags.c_contiguous else ", not C-contiguous")
            )
        last = c0 + (n_conv - 1) * step + (c_in if name in ("a", "add") else c_out) - 1
        if last >= arr.shape[1]:
            raise ValueError(
                f"{fname}: the convs {verb} channels {c0} .. {last} of {name}, which "
                f"has {arr.shape[1]}"
            )
    if packed_u.dtype != a.dtype or bias.dtype != a.dtype:
        raise ValueError(
            f"{fname}: packed_u and bias must be {a.dtype}, got {packed_u.dtype} and {bias.dtype}"
        )
    dt = a.dtype
    blk = block_channels(dt)
    full, tail = block_layout(c_out // groups, blk)
    per_conv = tile_values * groups * c_in_g * (full * blk + tail * (blk // 2))
    if packed_u.size != n_conv * per_conv or bias.size != n_conv * c_out:
        raise ValueError(
            f"{fname}: packed_u / bias of {packed_u.size} / {bias.size} elements do "
            f"not fit {n_conv} conv(s) of {c_in} -> {c_out} channels in {groups} groups"
        )
    return c_in_g, per_conv


def conv_winograd(
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
    """Launch the Winograd kernel on prepared arguments (the chain's building block).

    Parameters
    ----------
    a : (N, C_a, H, W) C-contiguous input; the conv reads channels
        a_c0 .. a_c0 + groups * c_in_g (plus i * a_conv_step for conv i)
    packed_u : transform_weights(weight, groups) (n_conv of them concatenated)
    c_out : output channels of one conv ; groups : int ; padding : (ph, pw)
    bias : (n_conv * c_out,) contiguous
    out : (N, C_tot, H + 2*ph - 2, W + 2*pw - 2) C-contiguous; conv i writes
        channels out_c0 + i * c_out .. out_c0 + (i + 1) * c_out
    add : optional array shaped like ``a``: conv i reads a + add, add's channels
        from add_c0 + i * add_conv_step (the Res2Net chain's sp + x_{i+1})
    activation : None, "relu" or "leaky_relu" (slope ``negative_slope``), after
        the bias and the residual
    residual : optional array shaped like ``out`` (C-contiguous, a's dtype),
        added element by element after the bias
    scratch : optional ``scratch(role, shape, dtype, make)`` supplying reusable
        buffers (r2n.cpu._scratch.scratch); default: new zero-filled arrays
    pass_through : optional ``(c0, out_c0, count)``: the same launch also
        copies channels c0 .. c0 + count of ``a`` into out_c0 .. of ``out``
        (:class:`PassThrough`; a's planes must be out's size: padding (1, 1))
    """
    checked = check_launch(
        "conv_winograd",
        16,
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
    passing = pass_through_record("conv_winograd", pass_through, a, out)
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
    ntx = (w_out + 1) // 2
    make = scratch or (lambda role, shape, dtype, fill=np.zeros: fill(shape, dtype))
    # The scratch buffers may come from an earlier call of another geometry
    # with the same buffer size (r2n.cpu._scratch keys them on role and shape
    # only), so nothing this call reads may depend on what they held: every
    # value that reaches the output is written first by this job. The parity
    # planes are rewritten for every input channel (all R columns of rows+1
    # rows), V for every input channel over the block's tiles, M by the GEMMs
    # over the same tiles, S and Y for every tile row. Columns past a block's
    # tiles (V's slack up to TBP, the unused tile column, T's one extra
    # element) and channels past its outputs are computed from whatever the
    # buffers hold and never written out: every tile's values depend on its
    # own column of V only. np.zeros at creation only keeps denormals out of
    # those lanes (tests/test_stateful.py fills the buffers with NaN).
    v_scr = make("wino.v", (workers, 16 * (c_in * tbp + LINE_PAD)), dt, np.zeros)
    m_scr = make("wino.m", (workers, 16 * (tbp * blk + LINE_PAD)), dt, np.zeros)
    y_scr = make("wino.y", (workers, 12 * (ntx + 1) * blk), dt, np.zeros)
    p_len, t_len = (rows + 1) * (ntx + 1) + PLANE_SLACK, rows * (ntx + 1) + 1
    p_scr = make("wino.planes", (workers, 4 * p_len + 8 * t_len), dt, np.zeros)
    offs = kernel_input(np.arange(c_in_g, dtype=np.int64) * tbp)
    add_arr = a if add is None else add
    # Inputs read-only (kernel_input): one compiled signature per dtype, whether
    # the caller's arrays are writeable (the chain) or not (vector_or's bias).
    _winograd_kernel(
        *as_tuples(
            Source(kernel_input(a.reshape(-1)), a[0].size, a_c0, a_conv_step, True),
            Source(
                kernel_input(add_arr.reshape(-1)),
                add_arr[0].size,
                add_c0,
                add_conv_step,
                add is not None,
            ),
            WinogradWeights(
                kernel_input(packed_u),
                per_conv,
                offs,
                c_in_g,
                groups,
                c_out // groups,
                kernel_input(bias),
                PREFETCH_WEIGHTS,
            ),
            WinogradOutput(
                out.reshape(-1),
                out[0].size,
                out_c0,
                h_out,
                w_out,
                activation is not None,
                unused_array(dt) if residual is None else kernel_input(residual.reshape(-1)),
                residual is not None,
                float(negative_slope) if activation == "leaky_relu" else 0.0,
            ),
            WinogradPlan(h, w, ph, pw, n, n_conv, rows, n_blocks, tbp, TRANSFORMS_IN_REGISTERS),
            WinogradScratch(v_scr, m_scr, y_scr, p_scr),
            passing,
        )
    )
    return out


def conv2d_5_winograd(x, weight, bias, *, stride, padding, dilation, groups, out_shape):
    """Step 5: Winograd F(2x2, 3x3). 3x3, stride 1, dilation 1 only (else ValueError).

    x (N, C_in, H, W), weight (C_out, C_in/groups, 3, 3) -> (N, C_out, H_out, W_out)
    """
    c_out, _, kh, kw = weight.shape
    if not applicable((kh, kw), stride, dilation):
        raise ValueError(
            "conv2d step 5_winograd: needs a 3x3 kernel, stride 1 and dilation 1, got "
            f"kernel {(kh, kw)}, stride {tuple(stride)}, dilation {tuple(dilation)}"
        )
    x = np.ascontiguousarray(x)
    out = np.empty(out_shape, x.dtype)
    conv_winograd(
        x,
        transform_weights(np.ascontiguousarray(weight), groups),
        c_out,
        groups,
        tuple(padding),
        vector_or(bias, 0, c_out, x.dtype),
        out,
    )
    return out
