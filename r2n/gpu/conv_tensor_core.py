"""conv2d step ``5_tensor_core``: its tiles, launch sizes and error bounds.

The kernel (kernels/conv_5_tensor_core.cu, the last step of the conv2d
ladder) is step 4's pipelined implicit GEMM with the multiply on warp-level
``mma.sync`` (sm_80 and later), the operands rounded to a lower precision
that the caller chose:

=========  ============================================  =========================
precision  operands                                      instruction
=========  ============================================  =========================
``tf32``   TF32: float32 rounded to 10 mantissa bits     mma.sync.m16n8k8 .tf32
           (to nearest, ties away from zero; cvt.rna)
``bf16``   bfloat16: 7 mantissa bits (to nearest even)    mma.sync.m16n8k16 .bf16
=========  ============================================  =========================

Both accumulate in float32, and every other step (bias, residual, ReLU, the
chain's adds on load, the side job) stays float32. ``fp32`` (the default of
every op) never uses this step. float64 has no tensor-core path. The same
body, with the 1x1 convs' plane loads, split-K and a bottleneck's shortcut as
more K rows, is kernels/conv_gemm_tensor_core.cu (r2n.gpu.conv); the bounds
below hold for it with K the GEMM's rows (C_mid + C_in for conv3 + shortcut).

Error bounds
------------
Let u be the format's unit roundoff (:data:`UNIT_ROUNDOFF`: TF32 2^-11,
bfloat16 2^-8) and K = C_in / groups * kH * kW. Each weight and each input
value (for the chain: x_i + y_{i-1}, summed in float32 first) is rounded
once, with relative error at most u; the product of two rounded values is
exact in float32, so it is the exact product times (1 + e), |e| <= 2u + u^2,
and K of them are summed in float32 (relative error gamma_K = K 2^-24 /
(1 - K 2^-24) of the sum of magnitudes). Per output element y = sum_k w_k x_k::

    |y_computed - y| <= ((2u + u^2) (1 + gamma_K) + gamma_K) * sum_k |w_k x_k|

plus the float32 rounding of the epilogue (bias, residual). The sum of
magnitudes can exceed |y| by any factor (cancellation), so no relative bound
holds per element. Norm-wise, on data whose rounding errors are independent
(random inputs: the tests'), the error is a random walk as the sum is:
||y_computed - y|| / ||y|| is about 0.6 u (the rms relative rounding error of
one operand is 0.42 u; two operands: x sqrt(2)), whatever K is. The tests
assert 2 u per conv (:func:`tolerance`), and the element-wise bound above
exactly (``|W| * |X|`` computed by the float64 reference). Through layers the
errors of independent roundings add up as a random walk: a chain whose c convs
feed each other, a bottleneck (conv1, chain, conv3) and a network are tested
at ``tolerance(precision, layers)`` = 2 u sqrt(layers), layers = the convs on
the longest dependent path (measured: about a third of it for chains, a
seventh for bottlenecks, under the emulator).
"""

from __future__ import annotations

import numpy as np

from . import _runtime

FILE = "conv_5_tensor_core.cu"

#: The precisions of step 5 (``fp32`` is every other conv kernel's).
PRECISIONS = ("tf32", "bf16")
#: Unit roundoff of each precision's operands (half the spacing of numbers in [1, 2)).
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "tf32": 2.0**-11, "bf16": 2.0**-8}

#: The kernel's input-format types (conv_5_tensor_core.cu), by precision.
FORMATS = {"tf32": "r2n_tf32", "bf16": "r2n_bf16"}
# Padding of a weight row in shared memory, in floats (the formats' A_PAD).
_A_PAD = {"tf32": 4, "bf16": 8}
# Bytes of an input element in shared memory (the formats' B_BYTES).
_B_BYTES = {"tf32": 4, "bf16": 2}

# Block tiles (BM, BN, BK, WARPS_M, WARPS_N): BM output channels x BN pixels
# per block, BK-deep K slices, WARPS_M x WARPS_N warps of 32 threads, each
# owning a (BM / WARPS_M) x (BN / WARPS_N) tile of 16 x 8 mma tiles.
TILE_WIDE = (64, 64, 32, 2, 2)
#: Groups of <= 32 output channels (Res2Net's 26-channel chain convs).
TILE_NARROW = (32, 64, 32, 2, 2)
TILES = (TILE_WIDE, TILE_NARROW)


def tile_for(c_out_g: int, *, precision: str | None = None, max_shared: int | None = None):
    """The block tile for ``c_out_g`` output channels per group: the narrow
    one for <= 32, else the wide one; with ``max_shared`` (the device's
    shared memory per block, r2n.gpu.conv.shared_limit), the largest tile no
    larger than that choice that fits in ``precision`` (:func:`fits_within`),
    or None when none does (the wide tile needs 36.75 KiB in tf32, 29.75 in
    bf16; the narrow one 27.75 / 19.75: every GPU r2n runs on, with 48 KiB
    without an opt-in, fits both)."""
    tile = TILE_NARROW if c_out_g <= 32 else TILE_WIDE
    return fits_within(tile, TILES, shared_bytes, precision, max_shared)


def fits_within(tile, tiles, shared_of, precision: str | None, max_shared: int | None):
    """``tile`` (a rule's choice) if its ``shared_of(precision, tile)`` bytes of
    shared memory fit ``max_shared`` (None: no limit), else the tile of
    ``tiles`` needing the most shared memory no more than ``tile``'s that
    fits, else None. Deterministic: the same arguments give the same tile."""
    if max_shared is None:
        return tile
    if precision not in PRECISIONS:
        raise ValueError(
            f"r2n.gpu: a tile that fits max_shared={max_shared} needs precision "
            f"{' or '.join(map(repr, PRECISIONS))} (its bytes depend on it), got {precision!r}"
        )
    own = shared_of(precision, tile)
    smaller = sorted(
        (t for t in tiles if t != tile and shared_of(precision, t) <= own),
        key=lambda t: shared_of(precision, t),
        reverse=True,
    )
    for candidate in (tile, *smaller):
        if shared_of(precision, candidate) <= max_shared:
            return candidate
    return None


def threads(tile) -> int:
    """Threads per block of ``tile``."""
    return tile[3] * tile[4] * 32


def name(precision: str, tile) -> str:
    """The name expression of the kernel for ``precision`` and ``tile``."""
    return f"conv2d_5_tensor_core<float, {FORMATS[precision]}, {', '.join(map(str, tile))}>"


def shared_bytes(precision: str, tile) -> int:
    """Dynamic shared memory of one block: two stages of raw float32 weights
    (BM rows of BK + pad floats), two of rounded inputs (BK rows of BN + 8
    elements), two copies of 3 * BK ints of decoded im2col rows."""
    bm, bn, bk = tile[:3]
    weights = 2 * bm * (bk + _A_PAD[precision]) * 4
    inputs = 2 * bk * (bn + 8) * _B_BYTES[precision]
    return weights + inputs + 2 * 3 * bk * 4


def tolerance(precision: str, layers: int = 1) -> float:
    """The tests' norm-wise relative error bound against float64: 2 u per conv
    for ``layers = 1`` (the expected error is 0.6 u, see the module docstring),
    growing as sqrt(layers) for layers whose errors are independent, and
    float32's 1e-5 floor."""
    return max(2.0 * UNIT_ROUNDOFF[precision] * float(np.sqrt(layers)), 1e-5)


_runtime.register(FILE, [name(p, t) for p in PRECISIONS for t in TILES])


# --------------------------------------------------------------------------- #
# The 1x1 convs at batch throughput: kernels/gemm_1x1_tensor_core.cu
# --------------------------------------------------------------------------- #

#: The multistage 1x1 GEMM's source (cp.async for both operands, a ring of
#: STAGES slices, operands rounded when fragments are read; r2n.gpu.conv
#: routes a 1x1 / stride-1 / padding-0 tf32 / bf16 conv to it when its grid
#: fills the GPU and the launch needs no split-K, add or shortcut).
GEMM_1X1_FILE = "gemm_1x1_tensor_core.cu"
# Block tiles (BM, BN, BK, WARPS_M, WARPS_N, STAGES): warps of 64 x 32 (4 x 4
# mma tiles) each, rings of 32-deep slices. The compiler keeps the next k
# step's fragments in registers beside the 64 accumulators (~190-255
# registers a thread; capped at 128, the 8-warp tile spills), so a 4-warp
# block runs two per SM on sm_90 (3 stages, 78-85.5 KiB each; on an A100 the
# bf16 128 x 64 block runs alone and two tf32 ones fill the SM exactly: the
# table in the .cu file's header) and the 8-warp one alone (4 stages, 140-146
# KiB): 8 warps per SM either way, but two blocks overlap each other's
# prologue (the ring's first loads) and epilogue (stores, residual loads),
# which a conv with a short K loop (conv3: K = 104) spends much of its time
# in, while the 8-warp tile loads each weight and input once per 128 x 128
# outputs instead of per 128 x 64 (half the L2 -> SM traffic). The 8-warp
# tile's 140-146 KiB exceed sm_86 / sm_89's 99 KiB per block: there
# gemm_1x1_tile (given the device's limit) steps down to 128 x 64.
#: More than 64 output channels per group: 128 x 64, 4 warps.
GEMM_1X1_TILE = (128, 64, 32, 2, 2, 3)
#: Groups of <= 64 output channels: 64 x 128, 4 warps.
GEMM_1X1_TILE_FEW_CHANNELS = (64, 128, 32, 1, 4, 3)
#: Long K loops (K >= GEMM_1X1_LARGE_MIN_K) on planes of more than 64 pixels:
#: 128 x 128, 8 warps.
GEMM_1X1_TILE_LARGE = (128, 128, 32, 2, 4, 4)
GEMM_1X1_TILES = (GEMM_1X1_TILE, GEMM_1X1_TILE_FEW_CHANNELS, GEMM_1X1_TILE_LARGE)
#: The K (input channels per group) from which the 128 x 128 tile is used: 16
#: slices or more, where one block's prologue and epilogue are a small part of
#: its time (a prediction: benchmarks/gpu_tc_1x1.py times both tiles).
GEMM_1X1_LARGE_MIN_K = 512
# Row paddings in floats (the .cu file's bank arithmetic): weights BK + pad,
# inputs BN + pad.
_GEMM_1X1_PAD = {"tf32": (4, 8), "bf16": (8, 4)}


def gemm_1x1_tile(
    c_out_g: int, plane: int, k: int, *, precision: str | None = None, max_shared=None
):
    """The multistage 1x1 GEMM's block tile for ``c_out_g`` output channels
    per group, ``plane`` = H * W pixels and ``k`` input channels per group (a
    deterministic rule, see the tiles above).

    With ``max_shared`` (the device's shared memory per block,
    r2n.gpu.conv.shared_limit) and ``precision``: the largest tile no larger
    than the rule's that fits (:func:`fits_within`), or None when none does
    (the launcher then runs the 64 x 64 plane GEMM of
    conv_gemm_tensor_core.cu). The 128 x 128 tile's 140 KiB (tf32) / 146 KiB
    (bf16) fit sm_80 (163 KiB) and sm_90 (227 KiB), not sm_86 / sm_89 (99
    KiB), where the rule steps down to 128 x 64 (81 / 85.5 KiB); with 48 KiB
    (no opt-in) no multistage tile fits."""
    if c_out_g <= 64:
        tile = GEMM_1X1_TILE_FEW_CHANNELS
    elif k >= GEMM_1X1_LARGE_MIN_K and plane > 64:
        tile = GEMM_1X1_TILE_LARGE
    else:
        tile = GEMM_1X1_TILE
    return fits_within(tile, GEMM_1X1_TILES, gemm_1x1_shared_bytes, precision, max_shared)


def gemm_1x1_name(precision: str, tile) -> str:
    """The name expression of the multistage 1x1 GEMM for ``precision`` and ``tile``."""
    return f"conv2d_gemm_1x1_tensor_core<float, {FORMATS[precision]}, {', '.join(map(str, tile))}>"


def gemm_1x1_threads(tile) -> int:
    """Threads per block of a multistage 1x1 GEMM tile."""
    return tile[3] * tile[4] * 32


def gemm_1x1_shared_bytes(precision: str, tile) -> int:
    """Dynamic shared memory of one block: STAGES x (BM rows of BK + pad raw
    float32 weights, BK rows of BN + pad raw float32 inputs)."""
    bm, bn, bk, _, _, stages = tile
    a_pad, b_pad = _GEMM_1X1_PAD[precision]
    return stages * (bm * (bk + a_pad) + bk * (bn + b_pad)) * 4


_runtime.register(GEMM_1X1_FILE, [gemm_1x1_name(p, t) for p in PRECISIONS for t in GEMM_1X1_TILES])


# --------------------------------------------------------------------------- #
# Any conv on a multistage ring: kernels/conv_im2col_tensor_core.cu
# --------------------------------------------------------------------------- #

#: The multistage implicit GEMM's source (the 1x1 GEMM's cp.async ring with
#: step 5's im2col rows: 4-byte input copies, zero-filled in the padding).
#: r2n.gpu.conv runs it instead of step 5 only when selected
#: (r2n.gpu.conv.TC_IM2COL_MULTISTAGE; not timed on a GPU yet), for launches
#: with no add on load and no split-K.
IM2COL_FILE = "conv_im2col_tensor_core.cu"
# Block tiles (BM, BN, BK, WARPS_M, WARPS_N, STAGES), 4 warps, 3 stages, two
# blocks per SM on sm_90, as the 1x1 GEMM's (on an A100 one of 128 x 64: its
# 81.75-86.25 KiB + 1 KiB reserved, twice, exceed 164 KiB; two of the others,
# 65.25-80.25 KiB): 64 x 32 warp tiles where the channels fill
# them, 32 x 32 for groups of <= 32 output channels (Res2Net's 26-channel chain).
#: More than 64 output channels per group: 128 x 64.
IM2COL_TILE = (128, 64, 32, 2, 2, 3)
#: Groups of 33-64 output channels: 64 x 128.
IM2COL_TILE_FEW_CHANNELS = (64, 128, 32, 1, 4, 3)
#: Groups of <= 32 output channels: 32 x 128.
IM2COL_TILE_NARROW = (32, 128, 32, 1, 4, 3)
IM2COL_TILES = (IM2COL_TILE, IM2COL_TILE_FEW_CHANNELS, IM2COL_TILE_NARROW)


def im2col_tile(c_out_g: int, *, precision: str | None = None, max_shared: int | None = None):
    """The multistage implicit GEMM's block tile for ``c_out_g`` output
    channels per group: the smallest of BM 32 / 64 / 128 that holds them.
    With ``max_shared`` and ``precision``: the largest tile no larger than
    that one that fits (:func:`fits_within`; 65.25-86.25 KiB, so all of them
    on sm_80 / sm_86 / sm_89 / sm_90), or None (the launcher then runs step 5)."""
    if c_out_g <= 32:
        tile = IM2COL_TILE_NARROW
    elif c_out_g <= 64:
        tile = IM2COL_TILE_FEW_CHANNELS
    else:
        tile = IM2COL_TILE
    return fits_within(tile, IM2COL_TILES, im2col_shared_bytes, precision, max_shared)


def im2col_name(precision: str, tile) -> str:
    """The name expression of the multistage implicit GEMM for ``precision`` and ``tile``."""
    return f"conv2d_im2col_tensor_core<float, {FORMATS[precision]}, {', '.join(map(str, tile))}>"


def im2col_shared_bytes(precision: str, tile) -> int:
    """Dynamic shared memory of one block: the 1x1 GEMM's stages
    (:func:`gemm_1x1_shared_bytes`) and STAGES tables of BK int2 (the decoded
    im2col rows: offset, packed dy and dx)."""
    bk, stages = tile[2], tile[5]
    return gemm_1x1_shared_bytes(precision, tile) + stages * bk * 8


#: The kernel's decoded rows hold a tap's offset in a group's input as int32
#: and its dy, dx in 16 bits each (conv_im2col_tensor_core.cu,
#: im2col_decode_rows): :func:`im2col_fits` says where it can run.
IM2COL_MAX_TAP = 2**15 - 1


def im2col_fits(c_in_g: int, h: int, w: int, kh: int, kw: int, dh: int, dw: int, bk=32) -> bool:
    """Whether the multistage implicit GEMM can take a conv of ``c_in_g``
    input channels per group on H x W inputs with a kH x kW kernel dilated by
    (dh, dw): every tap offset fits 16 bits, and every decoded row's offset,
    up to one K slice past the last channel, fits int32."""
    dy, dx = (kh - 1) * dh, (kw - 1) * dw
    if dy > IM2COL_MAX_TAP or dx > IM2COL_MAX_TAP:
        return False
    channels = c_in_g + _cdiv(bk, kh * kw) + 1
    return channels * h * w + dy * w + dx < 2**31


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


_runtime.register(IM2COL_FILE, [im2col_name(p, t) for p in PRECISIONS for t in IM2COL_TILES])
