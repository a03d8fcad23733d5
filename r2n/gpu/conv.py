"""conv2d on the GPU: the ladder of kernels, one file per step, and its launcher.

The ladder (:data:`LADDER`; kernels in r2n/gpu/kernels, one idea per step,
each file a readable diff of the one before, its header saying what it
changes, why it is faster and what was measured):

====================  =========================  ==============================================
step                  kernel file                what it adds to the step before
====================  =========================  ==============================================
``1_naive``           conv_1_naive.cu            one thread per output: the definition, ~2
                                                 global loads per multiply-add
``2_smem_tiles``      conv_2_smem_tiles.cu       16 x 16 output tiles per block, an implicit
                                                 GEMM: weights and im2col columns staged in
                                                 shared memory, each value used 16 times
``3_register_tiles``  conv_3_register_tiles.cu   a 4 x 4 tile of outputs per thread, in
                                                 registers: 8 shared loads feed 16 FMAs
``4_pipelined``       conv_4_pipelined.cu        the next K slice fetched into registers
                                                 while this one is multiplied
``5_tensor_core``     conv_5_tensor_core.cu      step 4 on warp-level mma.sync, operands
                                                 rounded to TF32 or bfloat16 (``precision``;
                                                 float32 data only; conv_tensor_core.py)
====================  =========================  ==============================================

Beside the ladder, the fused launchers' building blocks (kernels/gemm_1x1.cu,
step 4's body with other loads): ``gemm_1x1`` (1x1 / stride 1 / padding 0
convs: the input plane is the GEMM's right matrix, no im2col arithmetic;
8 x 8 (float) or 8 x 4 (double) register tiles in 128-wide block tiles when
there are enough of them to fill the GPU, else step 4's 4 x 4 / 64 x 64
tile) and ``avg_pool_gemm_1x1`` (the "d" bottleneck shortcut: a ceil-mode
average pool folded into the 1x1 GEMM's loads; :func:`launch_conv` only).

Every kernel has the same parameters (R2N_CONV_PARAMS, kernels/conv_common.cuh)
and the same fused epilogue: bias, a residual add and ReLU / LeakyReLU, and
can read its input from a channel slice of a larger tensor (plus a second
slice added on load) and write into a channel slice of a larger output: the
Res2Net chain (r2n.gpu.res2net) uses this to run without split, add or cat
passes, on any step.

:func:`conv2d` (the backend's op) picks the fastest applicable kernel
(:func:`pick_variant`): 1x1/stride-1/padding-0 convs go to ``gemm_1x1``;
convs with fewer than 8 output channels per group (depthwise) to
``1_naive``, because a GEMM tile would leave >= 3/4 of its rows empty;
everything else to ``4_pipelined``. With ``precision="tf32"`` or ``"bf16"``
(the caller's choice, never the default) every conv with at least 8 output
channels per group runs on tensor cores: the 1x1 / stride-1 / padding-0 ones
as ``gemm_1x1`` on the tensor-core plane GEMM (kernels/conv_gemm_tensor_core.cu,
no im2col arithmetic), the others on ``5_tensor_core``; depthwise convs stay
on ``1_naive`` in float32, which is within the requested precision's bounds.
These rules follow from tile utilisation; the first timings on a GPU (an
H100) are in benchmarks/results/NOTES-gpu.md.

Beyond the ladder, :func:`launch_conv` runs the GEMMs of kernels/conv_gemm.cu
(and conv_gemm_tensor_core.cu on tensor cores), step 4's / step 5's bodies
with two more ideas, when a launch needs them:

* split-K: a grid of few blocks (batch 1 at 14x14 and 7x7) splits each
  output tile's K rows over ``k_splits`` blocks (:func:`split_k_for`, a
  deterministic rule from the grid, K and the GPU's SM count); each tile's
  last split to finish adds the partial sums in split order and applies the
  epilogue, in the same launch (scratch buffers: :func:`split_k_scratch`);
* a shortcut as more K rows: a bottleneck's conv3 and its shortcut conv
  (strided, or the "d" form pooled on load) as one GEMM over
  ``[W3 | W_shortcut]`` (r2n.gpu.res2net).

On tensor cores two multistage kernels (cp.async rings, operands rounded at
fragment reads) replace step 5's body where they apply: the 1x1 GEMM
(kernels/gemm_1x1_tensor_core.cu, by default when its grid fills the GPU)
and, only when :data:`TC_IM2COL_MULTISTAGE` selects it (not yet timed), the
im2col GEMM for every other unsplit conv without an add on load
(kernels/conv_im2col_tensor_core.cu).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .. import _checks
from .._ladder import Step
from . import _runtime
from . import conv_tensor_core as _tc

# Bits of the kernels' ``flags`` argument (see conv_common.cuh).
_FLAG_BIAS, _FLAG_ADD, _FLAG_RESIDUAL = 1, 2, 4
# Kernel ``activation`` codes.
ACTIVATIONS = {None: 0, "relu": 1, "leaky_relu": 2}
# Kernel ``side_mode`` codes for the chain's last chunk.
SIDE_NONE, SIDE_COPY, SIDE_AVG_POOL_3X3 = 0, 1, 2

#: Threads per block of step 1.
NAIVE_THREADS = 256

# Block tiles (BM, BN, BK, TM, TN): BM output channels x BN pixels per block,
# BK-deep slices of K, TM x TN outputs per thread (steps 3, 4 and gemm_1x1).
_TILE_WIDE = (64, 64, 16, 4, 4)
_TILE_NARROW = (32, 64, 16, 4, 4)  # groups of <= 32 output channels
_TILE_LARGE = {"float": (128, 128, 8, 8, 8), "double": (128, 64, 8, 8, 4)}
# float32 gemm_1x1: the large tile's 8 x 8 outputs per thread in a 64 x 128
# block of 128 threads. Same registers per thread (163-168 on sm_80 / sm_90),
# so 3 blocks (12 warps) fit an SM where the large tile fits 1 (8 warps).
# Measured on an H200 (benchmarks/results/2026-12-04-gpu-tiles-h200.*): the
# fastest float32 tile of every 1x1 conv of res2net50 on planes of >= 196
# pixels at batch 32 and 256 (1.5-2.3x the large tile), so the rule's default
# there (fp32_tile_rule).
_TILE_HALF = (64, 128, 8, 8, 8)
#: Step 2's block tile (BM, BN, BK): one output per thread, 256 threads.
_TILE_SMEM = (16, 16, 16)
#: gemm_1x1 takes its bigger tile (float32: half, float64: large) when that
#: still makes at least this many blocks (two per SM of a 132-SM H100/H200);
#: smaller problems keep the GPU busier with 64 x 64 tiles. (A default of
#: :func:`fp32_tile_rule`; float32's measured on an H200, float64's never.)
_LARGE_TILE_MIN_BLOCKS = 264
#: float32 gemm_1x1 takes the half tile only on planes of at least this many
#: pixels (its 128-pixel width; on 7x7 planes the wide tile measured faster).
_HALF_TILE_MIN_PIXELS = 128
#: Step 4 (im2col) takes the narrow 32 x 64 tile for groups of at most this many
#: output channels (Res2Net's 26-channel chain convs), else the wide one. (A
#: default of :func:`fp32_tile_rule`.)
_NARROW_MAX_C_OUT_G = 32
#: The SIMT kernels' block tiles by name (``launch_conv(..., tile=)``,
#: :func:`fp32_tile_rule`): (BM, BN, BK, TM, TN) of float / double.
TILES = {
    "wide": {"float": _TILE_WIDE, "double": _TILE_WIDE},
    "narrow": {"float": _TILE_NARROW, "double": _TILE_NARROW},
    "large": _TILE_LARGE,
    "half": {"float": _TILE_HALF},
}

#: The building blocks of the fused launchers beside the ladder (kernels/gemm_1x1.cu).
GEMM_1X1 = "gemm_1x1"
AVG_POOL_GEMM_1X1 = "avg_pool_gemm_1x1"

#: variant -> (kernel file, kernel template) of every fp32 kernel launch_conv runs
#: (5_tensor_core's are named by r2n.gpu.conv_tensor_core).
KERNELS = {
    "1_naive": ("conv_1_naive.cu", "conv2d_1_naive"),
    "2_smem_tiles": ("conv_2_smem_tiles.cu", "conv2d_2_smem_tiles"),
    "3_register_tiles": ("conv_3_register_tiles.cu", "conv2d_3_register_tiles"),
    "4_pipelined": ("conv_4_pipelined.cu", "conv2d_4_pipelined"),
    GEMM_1X1: ("gemm_1x1.cu", "conv2d_gemm_1x1"),
    AVG_POOL_GEMM_1X1: ("gemm_1x1.cu", "conv2d_avg_pool_gemm_1x1"),
}


def _name(kernel: str, ctype: str, tile=None) -> str:
    if tile is None:
        return f"{kernel}<{ctype}>"
    return f"{kernel}<{ctype}, {', '.join(map(str, tile))}>"


def _tiles_of(variant: str, ctype: str) -> tuple:
    """Every tile ``variant`` is launched with (None: step 1 has no tile)."""
    if variant == "1_naive":
        return (None,)
    if variant == "2_smem_tiles":
        return (_TILE_SMEM,)
    if variant == GEMM_1X1:
        return (_TILE_WIDE, _TILE_LARGE[ctype]) + ((_TILE_HALF,) if ctype == "float" else ())
    if variant == AVG_POOL_GEMM_1X1:
        return (_TILE_WIDE,)
    return (_TILE_WIDE, _TILE_NARROW)


for _variant_name, (_file, _kernel) in KERNELS.items():
    _runtime.register(
        _file,
        [
            _name(_kernel, ctype, tile)
            for ctype in ("float", "double")
            for tile in _tiles_of(_variant_name, ctype)
        ],
    )

# The fused launchers' GEMMs beyond the ladder (kernels/conv_gemm.cu and, on
# tensor cores, conv_gemm_tensor_core.cu): split-K, the 1x1 convs on tensor
# cores and the K-concatenated conv3 + shortcut, by what the GEMM's right
# matrix is (the kernels' LOAD). launch_conv runs them instead of the ladder's
# kernel when a launch splits K, has a shortcut, or is a 1x1 GEMM in tf32 /
# bf16; the ladder's files stay one idea each.
#: conv_gemm.cu: the float32 / float64 GEMMs.
GEMM_FILE = "conv_gemm.cu"
#: conv_gemm_tensor_core.cu: the same on tensor cores (float32 data).
TC_GEMM_FILE = "conv_gemm_tensor_core.cu"
LOAD_IM2COL, LOAD_PLANE, LOAD_PLANE_SHORTCUT = 0, 1, 3  # conv_common.cuh's R2N_LOAD_*


def _gemm_tiles(load: int, ctype: str) -> tuple:
    """The tiles conv_gemm.cu's kernel is instantiated with for ``load``: the
    im2col step's two (float64: the wide one); the 1x1 GEMMs split only when
    blocks are few, so the 64 x 64 tile, and the shortcut GEMM (also unsplit
    at large batch) the large tile too."""
    if load == LOAD_IM2COL:  # the double narrow tile spills 4 bytes on sm_80 here
        return (_TILE_WIDE, _TILE_NARROW) if ctype == "float" else (_TILE_WIDE,)
    if load == LOAD_PLANE:
        return (_TILE_WIDE,)
    return (_TILE_WIDE, _TILE_LARGE[ctype])


def _gemm_name(ctype: str, tile, load: int) -> str:
    return f"conv2d_pipelined_gemm<{ctype}, {', '.join(map(str, tile))}, {load}>"


def _tc_gemm_tiles(load: int) -> tuple:
    """The tensor-core GEMM's tiles for ``load``: both of step 5's, but the
    shortcut GEMM (conv3: C_out >= 64 in every Res2Net) only the wide one."""
    return (_tc.TILE_WIDE,) if load == LOAD_PLANE_SHORTCUT else _tc.TILES


def _tc_gemm_name(precision: str, tile, load: int) -> str:
    fmt = _tc.FORMATS[precision]
    return f"conv2d_tensor_core_gemm<float, {fmt}, {', '.join(map(str, tile))}, {load}>"


_runtime.register(
    GEMM_FILE,
    [
        _gemm_name(ctype, tile, load)
        for ctype in ("float", "double")
        for load in (LOAD_IM2COL, LOAD_PLANE, LOAD_PLANE_SHORTCUT)
        for tile in _gemm_tiles(load, ctype)
    ],
)
_runtime.register(
    TC_GEMM_FILE,
    [
        _tc_gemm_name(precision, tile, load)
        for precision in _tc.PRECISIONS
        for load in (LOAD_IM2COL, LOAD_PLANE, LOAD_PLANE_SHORTCUT)
        for tile in _tc_gemm_tiles(load)
    ],
)

# Split-K (kernels/conv_gemm.cu): when a conv's grid has few blocks for the
# GPU (batch 1 at 14x14 and 7x7: 4-32 blocks on an H100's or H200's 132 SMs,
# each looping over K = C_in * 9 = 936-1872 rows), split_k_for splits its K
# rows over k_splits blocks per output tile; the last of them to finish adds
# the splits (in order: deterministic) and applies the epilogue, in the same
# launch. The constants are PREDICTIONS, not measurements (no GPU has run
# split-K yet; benchmarks/results/NOTES-gpu.md says what to measure):
#: Blocks per SM a split grid aims at: the 4 x 4 and tensor-core tiles keep 2
#: or more blocks per SM resident (launch bounds), so 2 per SM is one full
#: wave in which each block's loads overlap another's multiplies.
SPLIT_K_BLOCKS_PER_SM = 2
#: The fewest K rows a split gets: a block's fixed costs (its first slice's
#: load latency, the partial store, a share of the reduction) should stay
#: below its loop, which is 4 slices of the float32 kernels (BK = 16) or 2 of
#: the tensor-core ones (BK = 32) at 64 rows.
SPLIT_K_MIN_ROWS = 64
#: The most splits: the reduction reads k_splits partial sums per output.
SPLIT_K_MAX = 16
#: The fewest K rows a conv must have to split at all (two splits of
#: SPLIT_K_MIN_ROWS). It was 512, chosen when the reduction was a second launch
#: (~20-50 us of host time at batch 1 without a graph, v2); with the reduction
#: in the split launch, an H200 timed every res2net50 conv at batch 1
#: (benchmarks/results/2026-12-04-gpu-tiles-h200.*) and the splits this rule
#: gives with 128 were the measured best on each conv of K 234-468 it had
#: left unsplit: 3x3 26->26 at 56x56 (K 234) 3 splits 0.0231 -> 0.0199 ms,
#: 3x3 52->52 at 28x28 (K 468) 7 splits 0.0418 -> 0.0204, conv3 416->1024 at
#: 14x14 (K 416) 4 splits 0.0692 -> 0.0342, conv1 256->104 at 56x56 2
#: splits 0.0425 -> 0.0236; the forward's convs 2.65 -> ~2.16 ms.
SPLIT_K_MIN_K = 128
#: The tf32 / bf16 1x1 convs run on the multistage GEMM
#: (kernels/gemm_1x1_tensor_core.cu, large tiles) when its grid has at least
#: this many blocks per SM (one wave; an executor that does not know its SM
#: count, the CPU emulator, always runs it), else on the 64 x 64 tensor-core
#: plane GEMM, which also splits K. A prediction, like split-K's constants:
#: benchmarks/gpu_tc_1x1.py times both.
TC_GEMM_1X1_MIN_WAVES = 1
#: The values of ``R2N_TC_IM2COL`` and the setting each gives.
TC_IM2COL_CHOICES = {"step5": False, "multistage": True}


def _tc_im2col_from_env(environ=os.environ) -> bool:
    """TC_IM2COL_MULTISTAGE as the environment variable ``R2N_TC_IM2COL`` sets
    it (unset or empty: False); a ValueError for any other value."""
    value = environ.get("R2N_TC_IM2COL", "")
    if value == "":
        return False
    if value not in TC_IM2COL_CHOICES:
        raise ValueError(
            f"r2n: R2N_TC_IM2COL must be one of {list(TC_IM2COL_CHOICES)} (or unset), "
            f"got {value!r}"
        )
    return TC_IM2COL_CHOICES[value]


#: The tf32 / bf16 im2col convs (3x3, KxK; step 5_tensor_core's) that have no
#: add on load and no split-K run on the multistage implicit GEMM
#: (kernels/conv_im2col_tensor_core.cu: cp.async ring, rounding at fragment
#: reads) when True, on step 5 when False. Off by default: not timed on a GPU
#: yet (its prediction is in that file's header). Set it here, or start Python
#: with the environment variable ``R2N_TC_IM2COL=multistage`` (``step5``: off);
#: plans are keyed on it, so a change reaches every later launch.
#: benchmarks/gpu_kernels.py ``--tc-im2col step5 multistage`` times both.
TC_IM2COL_MULTISTAGE = _tc_im2col_from_env()
#: The variants that split (the ladder's other steps stay one idea each).
SPLIT_K_VARIANTS = ("4_pipelined", "5_tensor_core", GEMM_1X1)
#: The float32 / float64 variants whose tile and split :func:`fp32_tile_rule`
#: decides (and ``launch_conv(..., tile=)`` can force).
_TILE_VARIANTS = ("4_pipelined", GEMM_1X1)


def split_k_for(blocks: int, k_rows: int, sm_count, rule: tuple | None = None) -> int:
    """How many blocks split each output tile's K rows (1: no split).

    The deterministic rule of the launcher, from (grid blocks without split,
    K rows of the GEMM, SMs of the GPU): aim at ``SPLIT_K_BLOCKS_PER_SM`` x
    SMs blocks in all (``floor(target / blocks)``, so a grid that already has
    more than half a wave is left alone), give every split at least
    ``SPLIT_K_MIN_ROWS`` rows, split at most ``SPLIT_K_MAX`` times, and only
    convs of at least ``SPLIT_K_MIN_K`` rows. An executor that does not know
    its SM count (the CPU emulator) never splits unless a test forces
    ``k_splits``. On an H100 / H200 (132 SMs), batch 1: 3x3 104->104 at
    14x14 (8 blocks of 64 x 64, K = 936) -> 14 splits; 3x3 208->208 at 7x7
    (4 blocks, K = 1872) -> 16; conv1 1024->416 at 14x14 (28 blocks, K =
    1024) -> 9; 3x3 26->26 at 56x56 (49 narrow blocks, K = 234) -> 3; at batch
    32, 3x3 208->208 at 7x7 (128 blocks) -> 2; every 56x56 and 28x28 conv of
    batch 32 -> 1. (The launcher then runs ceil(slices / ceil(slices /
    splits)) splits, so that none is empty.) ``rule``: the four constants
    (per SM, min rows, max, min K) as :func:`_split_rule` reads them (default:
    the module's, which tests and benchmarks may change; plans are keyed on
    them).
    """
    per_sm, min_rows, max_splits, min_k = _split_rule() if rule is None else rule
    if not sm_count or blocks <= 0 or k_rows < min_k:
        return 1
    return max(1, min(per_sm * int(sm_count) // blocks, k_rows // min_rows, max_splits))


def _split_rule() -> tuple:
    return (SPLIT_K_BLOCKS_PER_SM, SPLIT_K_MIN_ROWS, SPLIT_K_MAX, SPLIT_K_MIN_K)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def shared_limit(ex) -> int:
    """The most dynamic shared memory one block may have on ``ex``'s device:
    its ``max_shared_per_block()`` (CupyExecutor: the device's opt-in limit,
    99 KiB on sm_86 / sm_89, 163 KiB on sm_80, 227 KiB on sm_90; the test
    emulator: the device it plays), capped at r2n's own ceiling
    ``_runtime.MAX_SHARED_PER_BLOCK`` (163 KiB, which check_config enforces);
    an executor without the method gets that ceiling. The tile rules fit their
    choices under it, and launch plans are keyed on it (per device)."""
    limit_of = getattr(ex, "max_shared_per_block", None)
    return _capped_shared_limit(None if limit_of is None else limit_of())


def _capped_shared_limit(limit) -> int:
    if limit is None:
        return _runtime.MAX_SHARED_PER_BLOCK
    return min(int(limit), _runtime.MAX_SHARED_PER_BLOCK)


def simt_shared_bytes(ctype: str, tile, tables: int) -> int:
    """Dynamic shared memory of one block of a SIMT kernel (steps 2-4,
    gemm_1x1, conv_gemm.cu) with ``tile`` = (BM, BN, BK, ...) in ``ctype``
    ("float" / "double"): the weight tile (BM rows padded by one) and the
    input tile, BK deep, then ``tables`` copies (1 in steps 2 and 3; 2 in the
    pipelined body: one in use, the next slice's being written) of 3 * BK ints
    of decoded im2col rows. At most 16.5 KiB (float64's 64 x 64 tile), so
    every SIMT tile fits the 48 KiB any CUDA GPU gives a block without an
    opt-in: their rule (:func:`fp32_tile_rule`) needs no fallback."""
    bm, bn, bk = tile[:3]
    itemsize = 4 if ctype == "float" else 8
    return (bk * (bm + 1) + bk * bn) * itemsize + tables * 3 * bk * 4


# The float32 / float64 tile and split rule: ONE deterministic function of the
# GEMM's shape and the GPU's SM count (fp32_tile_rule), so that a measurement
# (benchmarks/gpu_tiles.py) sets it by changing numbers, not code: the table
# FP32_MEASURED for the shapes that were timed, and the thresholds above
# (_NARROW_MAX_C_OUT_G, _LARGE_TILE_MIN_BLOCKS, SPLIT_K_*) for every other.
#: The GEMM kinds of the rule: step 4's im2col loads (any conv), gemm_1x1's
#: plane loads (1x1 / stride 1 / padding 0), gemm_1x1 with a bottleneck's
#: shortcut as more K rows.
KIND_IM2COL, KIND_PLANE, KIND_PLANE_SHORTCUT = "im2col", "plane", "plane+shortcut"


class MeasuredTiles(Mapping):
    """A read-only table of measured (tile, k_splits) choices, keyed on
    ``(kind, c_out_g, k_rows, pixels, images_groups, sm_count)`` (the
    arguments of :func:`fp32_tile_rule`).

    Hashed and compared by identity, so that launch plans, which are keyed on
    the rule's settings (:func:`_tunables`), stay cheap to look up: change the
    rule by assigning a new table to :data:`FP32_MEASURED`, never by changing
    one in place (it has no way to be changed)."""

    __slots__ = ("_entries",)

    def __init__(self, entries=()):
        entries = dict(entries)
        for key, (tile, k_splits) in entries.items():
            kind, *sizes = key
            if kind not in (KIND_IM2COL, KIND_PLANE, KIND_PLANE_SHORTCUT) or len(sizes) != 5:
                raise ValueError(f"MeasuredTiles: bad key {key!r}")
            if tile not in TILES or not isinstance(k_splits, int) or k_splits < 1:
                raise ValueError(f"MeasuredTiles: bad choice {(tile, k_splits)!r} for {key!r}")
            if tile not in _RULE_TILES[kind] or (k_splits > 1 and tile not in _SPLIT_TILES[kind]):
                raise ValueError(
                    f"MeasuredTiles: {kind} GEMMs have no {tile} tile"
                    + (f" that splits K ({k_splits})" if k_splits > 1 else "")
                )
        self._entries = entries

    def __getitem__(self, key):
        return self._entries[key]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    __hash__ = object.__hash__
    __eq__ = object.__eq__

    def __repr__(self):
        return f"MeasuredTiles({self._entries!r})"


#: Tiles a float32 GEMM of each kind has (unsplit), and those that also split K
#: (conv_gemm.cu's instantiations, :func:`_gemm_tiles`).
_RULE_TILES = {
    KIND_IM2COL: ("wide", "narrow"),
    KIND_PLANE: ("wide", "large", "half"),  # half: float32 only
    KIND_PLANE_SHORTCUT: ("wide", "large"),
}
_SPLIT_TILES = {
    KIND_IM2COL: ("wide", "narrow"),
    KIND_PLANE: ("wide",),
    KIND_PLANE_SHORTCUT: ("wide", "large"),
}

#: Measured float32 choices (benchmarks/gpu_tiles.py prints the entries to put
#: here); empty: no measurement has set any yet, every shape follows the
#: thresholds. Keys of another SM count never match, so a table measured on
#: one GPU changes nothing on another.
FP32_MEASURED = MeasuredTiles()


def fp32_tile_rule(
    kind: str,
    c_out_g: int,
    k_rows: int,
    pixels: int,
    images_groups: int,
    sm_count,
    ctype: str = "float",
    tile: str | None = None,
    rule: tuple | None = None,
) -> tuple[str, int]:
    """The (tile name, k_splits) the launcher runs a SIMT GEMM with.

    One deterministic function of the GEMM's shape, which benchmarks/gpu_tiles.py
    times choice by choice:

    Parameters
    ----------
    kind : KIND_IM2COL (step 4), KIND_PLANE (gemm_1x1) or KIND_PLANE_SHORTCUT
        (gemm_1x1 + a bottleneck's shortcut)
    c_out_g : output channels per group (the GEMM's M)
    k_rows : K, input channels per group x kH x kW (+ the shortcut's channels)
    pixels : H_out * W_out (the GEMM's N per image)
    images_groups : N * groups, as the grid's z (at most its limit)
    sm_count : the GPU's SMs, or None (the CPU emulator: never splits)
    ctype : "float" or "double" (the measured table is float32's only)
    tile : None (the rule's), or a tile name of :data:`TILES` forced by the
        caller: then only k_splits is the rule's, for that tile's grid (1
        where that tile does not split)
    rule : the settings (:func:`_tunables`), default the module's

    Returns
    -------
    (tile, k_splits): a key of :data:`TILES` and the splits of each output
    tile's K rows (1: none). A float32 shape in :data:`FP32_MEASURED` gets its
    entry. Otherwise: step 4 the narrow tile for c_out_g <=
    ``_NARROW_MAX_C_OUT_G`` (32), else the wide one; float32 gemm_1x1 the half
    64 x 128 tile on planes of >= ``_HALF_TILE_MIN_PIXELS`` (128) pixels when
    it makes at least ``_LARGE_TILE_MIN_BLOCKS`` (264) blocks, else the wide
    one (with a shortcut: the wide one; the large 128 x 128 tile lost to both
    on every res2net50 1x1 conv an H200 timed, by 1.05-2.9x); float64
    gemm_1x1 the large tile at >= 264 blocks (not timed); and k_splits =
    :func:`split_k_for` of that tile's grid (a split plane GEMM runs on the
    wide tile, the only one conv_gemm.cu has for it). Shared memory is no
    constraint here: the largest SIMT block needs 16.5 KiB
    (:func:`simt_shared_bytes`), under the 48 KiB every CUDA GPU allows
    without an opt-in, so the rule has no fallback (a device allowing less is
    a ValueError from the launcher's plan).

    Examples (132 SMs, float32): 1x1 256 -> 104 at 56x56 (K 256), batch 32
    -> ("half", 1); batch 1 -> ("wide", 1); 3x3 26 -> 26 at 56x56 (K 234)
    -> ("narrow", 1); 3x3 104 -> 104 at 14x14 (K 936), batch 1 -> ("wide", 14).
    """
    large_min_blocks, narrow_max, measured, split_rule = _fp32_rule() if rule is None else rule
    if tile is None and ctype == "float":
        found = measured.get((kind, c_out_g, k_rows, pixels, images_groups, sm_count))
        if found is not None:
            return found
    forced = tile is not None
    if not forced:
        if kind == KIND_IM2COL:
            tile = "narrow" if c_out_g <= narrow_max else "wide"
        elif ctype == "float":
            bm, bn = TILES["half"][ctype][:2]
            n_half = _cdiv(pixels, bn) * _cdiv(c_out_g, bm) * images_groups
            big = kind == KIND_PLANE and pixels >= _HALF_TILE_MIN_PIXELS
            tile = "half" if big and n_half >= large_min_blocks else "wide"
        else:
            bm, bn = TILES["large"][ctype][:2]
            n_large = _cdiv(pixels, bn) * _cdiv(c_out_g, bm) * images_groups
            tile = "large" if n_large >= large_min_blocks else "wide"
    bm, bn = TILES[tile][ctype][:2]
    blocks = _cdiv(pixels, bn) * _cdiv(c_out_g, bm) * images_groups
    k_splits = split_k_for(blocks, k_rows, sm_count, split_rule)
    if k_splits > 1 and tile not in _SPLIT_TILES[kind]:
        if forced:  # the caller's tile, unsplit
            return tile, 1
        tile = "wide"
    return tile, k_splits


def _fp32_rule() -> tuple:
    return (_LARGE_TILE_MIN_BLOCKS, _NARROW_MAX_C_OUT_G, FP32_MEASURED, _split_rule())


def is_gemm_1x1(kernel_hw, stride, padding) -> bool:
    """True for the convs ``gemm_1x1`` computes: 1x1, stride 1, padding 0."""
    return tuple(kernel_hw) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def pick_variant(kernel_hw, stride, padding, c_out_g: int, precision: str = "fp32") -> str:
    """The kernel :func:`conv2d` runs for a conv of this shape and precision:
    the fastest applicable step of the ladder, or ``gemm_1x1`` (module docstring).
    :func:`computes_in` says in which precision."""
    if is_gemm_1x1(kernel_hw, stride, padding):
        return GEMM_1X1
    if precision != "fp32" and c_out_g >= 8:
        return "5_tensor_core"
    if c_out_g < 8:
        return "1_naive"
    return "4_pipelined"


def computes_in(variant: str, precision: str, c_out_g: int) -> str:
    """The precision :func:`pick_variant`'s ``variant`` runs a conv in when the
    caller asked for ``precision``: tf32 / bf16 on the tensor-core kernels
    (step 5, the tensor-core 1x1 GEMM) for groups of at least 8 output
    channels, else float32 (depthwise-like convs: within the requested
    precision's bounds anyway)."""
    if precision != "fp32" and c_out_g >= 8 and precision in VARIANT_PRECISIONS[variant]:
        return precision
    return "fp32"


class _Shortcut(NamedTuple):
    """A bottleneck's shortcut as more K rows of conv3's GEMM (launch_conv's
    ``shortcut``): ``x`` (N, C_sc, H_sc, W_sc), every channel of it, sampled at
    ``stride`` (a strided 1x1 conv) or, with ``pool``, averaged over the
    stride x stride window there (the "d" shortcut)."""

    x: object
    stride: tuple
    pool: bool


def launch_conv(
    ex,
    variant: str,
    x,
    weight,
    bias,
    out,
    *,
    stride,
    padding,
    dilation,
    groups: int,
    x_c0: int = 0,
    add=None,
    add_c0: int = 0,
    residual=None,
    out_c0: int = 0,
    activation=None,
    negative_slope: float = 0.0,
    side_mode: int = SIDE_NONE,
    side_c0: int = 0,
    side_c: int = 0,
    precision: str = "fp32",
    k_splits: int | None = None,
    shortcut: _Shortcut | None = None,
    op: str = "conv2d",
    tile: str | None = None,
    plan_only: bool = False,
):
    """Launch one conv kernel writing ``out[:, out_c0 : out_c0 + C_out]``.

    Parameters
    ----------
    ex : executor (r2n.gpu._runtime.CupyExecutor or the test emulator's)
    variant : a key of :data:`VARIANT_PRECISIONS` (a step of the ladder or
        ``"gemm_1x1"``), or ``"avg_pool_gemm_1x1"``: ``x`` is average-pooled
        with kernel = stride = ``stride``, ceil mode, no padding, before a 1x1
        conv at stride 1
    x : (N, X_C, H, W) C-contiguous; the conv reads channels x_c0 .. x_c0 + C_in
    weight : (C_out, C_in // groups, kH, kW) C-contiguous
    bias : (C_out,) or None
    out : (N, O_C, H_out, W_out) C-contiguous; written in channels
        out_c0 .. out_c0 + C_out only
    add : None or (N, A_C, H, W): the conv's input is x's slice plus
        add[:, add_c0 : add_c0 + C_in]
    residual : None or shaped like out: added (same channels) before the activation
    activation : None, "relu" or "leaky_relu" (with ``negative_slope``)
    side_mode, side_c0, side_c : the Res2Net chain's last chunk, x[:, side_c0 :
        side_c0 + side_c] copied (SIDE_COPY, needs H_out == H) or 3x3 / stride /
        pad-1 average-pooled (SIDE_AVG_POOL_3X3) into the same channels of out,
        by extra blocks of this launch.
    precision : "fp32" (every kernel but 5_tensor_core), or "tf32" / "bf16"
        (5_tensor_core, and gemm_1x1 on tensor cores: conv_gemm_tensor_core.cu)
    k_splits : None (:func:`split_k_for` from the grid, K and the executor's
        ``sm_count``; an executor without one, the CPU emulator, never splits)
        or the number of splits to run (tests), at most one per K slice;
        variants :data:`SPLIT_K_VARIANTS` only. Split launches write float32
        (float64) partial sums into a scratch array of k_splits x N x C_out x
        H_out*W_out, and each output tile's last split adds them in split
        order (deterministic) and applies the epilogue, in the same launch
        (the scratch arrays: :func:`split_k_scratch`).
    tile : None (:func:`fp32_tile_rule`'s) or a key of :data:`TILES` forcing
        the block tile of variants 4_pipelined ("wide", "narrow") and gemm_1x1
        ("wide", "large", float32 "half"; split or with a shortcut as
        conv_gemm.cu has them),
        float32 / float64 only (benchmarks/gpu_tiles.py times each; tests);
        ``k_splits=None`` then splits as the rule would for that tile
    plan_only : launch nothing; return the call's :class:`ConvPlan` (its
        ``file`` and ``name`` say which kernel the call would run), or None when
        it has nothing to compute (the arguments are checked all the same)
    shortcut : None, or ``(x_sc, stride, pool)`` (variant gemm_1x1, groups 1):
        the bottleneck's shortcut conv as more rows of this GEMM; ``weight``
        is then (C_out, C_in + C_sc, 1, 1), conv3's columns then the
        shortcut's, and ``bias`` their sum (conv_gemm.cu)

    Every slice and shape is checked here, before the launch, so that no
    combination of arguments can make a kernel index outside its arrays.
    """
    dtype = np.dtype(x.dtype)
    arrays = {"x": x, "weight": weight, "out": out, "bias": bias, "add": add}
    arrays["residual"] = residual
    if shortcut is not None:
        shortcut = _Shortcut(*shortcut)
        arrays["shortcut x"] = shortcut.x
    for name, a in arrays.items():
        if a is not None and (np.dtype(a.dtype) != dtype or not a.flags.c_contiguous):
            layout = "C-contiguous" if a.flags.c_contiguous else "non-contiguous"
            raise ValueError(
                f"r2n.{op}: {name} must be a C-contiguous {dtype} array, got {layout} {a.dtype}"
            )
    key = (
        variant,
        dtype,
        x.shape,
        weight.shape,
        out.shape,
        None if bias is None else bias.shape,
        None if add is None else add.shape,
        None if residual is None else residual.shape,
        tuple(stride),
        tuple(padding),
        tuple(dilation),
        groups,
        x_c0,
        add_c0,
        out_c0,
        activation,
        negative_slope,
        side_mode,
        side_c0,
        side_c,
        precision,
        op,
        _tunables(),
        k_splits,
        getattr(ex, "sm_count", None),
        # the device's shared memory per block (shared_limit, inline: host time)
        None if (limit_of := getattr(ex, "max_shared_per_block", None)) is None else limit_of(),
        None if shortcut is None else (shortcut.x.shape, tuple(shortcut.stride), shortcut.pool),
        tile,
    )
    plan = _PLANS.get(key)
    if plan is None:
        plan = _plan(*key)
        if len(_PLANS) < _MAX_PLANS:
            _PLANS[key] = plan
    if plan_only:
        return None if plan is _EMPTY else plan
    if plan is _EMPTY:
        return
    file, name, grid, block, shared_mem, _, channels, sizes, more, split = plan
    x_c_total, x_c0, add_c_total, add_c0, out_c_total, out_c0 = channels
    # An absent optional array is passed as any valid pointer of its type: never
    # read, the flags say so.
    args = (
        x,
        x_c_total,
        x_c0,
        x if add is None else add,
        add_c_total,
        add_c0,
        weight,
        weight if bias is None else bias,
        out if residual is None else residual,
        out,
        out_c_total,
        out_c0,
    ) + sizes
    if more is None:  # a step of the ladder
        ex.launch(file, name, grid, block, args, shared_mem=shared_mem)
        return
    # conv_gemm*.cu: R2N_CONV_MORE_PARAMS after the ladder's parameters
    if split is None:
        partial, counts = out, _no_counts(ex)  # never read: k_splits is 1
    else:
        partial, counts = split_k_scratch(ex, split)
    sc_x = x if shortcut is None else shortcut.x
    more_args = (partial, more[0], counts, sc_x) + more[1:]
    ex.launch(file, name, grid, block, args + more_args, shared_mem)


class ConvScalars(NamedTuple):
    """The scalar parameters of every conv kernel, named and ordered as in
    R2N_CONV_PARAMS (kernels/conv_common.cuh; tests/test_gpu_runtime.py compares
    the names), typed as the kernels take them; the arrays (x, add, weight, bias,
    residual, out) are passed beside them at each launch (:func:`launch_conv`)."""

    x_c_total: np.int64  # x's channels; the conv reads x_c0 .. x_c0 + C_in
    x_c0: np.int64
    add_c_total: np.int64  # the addend's channels (x's when there is none)
    add_c0: np.int64
    out_c_total: np.int64  # out's channels; the conv writes out_c0 .. out_c0 + C_out
    out_c0: np.int64
    n_img: np.int32
    c_in: np.int32
    h: np.int32
    w: np.int32
    c_out: np.int32
    h_out: np.int32
    w_out: np.int32
    kh: np.int32
    kw: np.int32
    sh: np.int32  # stride
    sw: np.int32
    ph: np.int32  # padding
    pw: np.int32
    dh: np.int32  # dilation
    dw: np.int32
    groups: np.int32
    flags: np.int32  # bias / add / residual bits
    activation: np.int32  # ACTIVATIONS code
    negative_slope: np.floating  # LeakyReLU's, in the data's dtype
    side_mode: np.int32  # SIDE_* code of the chain's last chunk
    side_src_c0: np.int64
    side_dst_c0: np.int64
    side_c: np.int32
    side_blocks: np.int32  # extra blocks of this launch running the side job


#: The scalars between the arrays (x_c_total .. out_c0: ConvPlan.channels) and
#: after the last array (n_img .. side_blocks: ConvPlan.sizes), kept as two
#: tuples by each plan, so that a launch builds its arguments without a lookup
#: per scalar (launch_conv unpacks ``channels`` into the fields' names;
#: tests/test_gpu_review.py checks both against R2N_CONV_PARAMS).
_SIZES_START = ConvScalars._fields.index("n_img")


class SplitK(NamedTuple):
    """What a split launch needs beside its arguments: the sizes of its two
    scratch arrays (:func:`split_k_scratch`)."""

    partial_shape: tuple  # (k_splits, N, C_out, H_out * W_out)
    partial_dtype: np.dtype  # float32 for tf32 / bf16, else the data's
    n_counts: int  # output tiles: N * groups x channel tiles x pixel tiles


class ConvPlan(NamedTuple):
    """One launch_conv call's launch, computed once per shapes and options."""

    file: str  # the kernel's source in r2n/gpu/kernels
    name: str  # its name expression
    grid: tuple
    block: tuple
    shared_mem: int  # bytes of dynamic shared memory
    scalars: ConvScalars
    channels: tuple  # scalars[:_SIZES_START], built once
    sizes: tuple  # scalars[_SIZES_START:], built once
    # conv_gemm*.cu only (None for the ladder's kernels): R2N_CONV_MORE_PARAMS'
    # scalars (k_splits, then sc_c_total .. sc_pool; the arrays partial,
    # tile_counts and sc_x are passed at launch), and split-K's scratch sizes
    # (None: no split)
    more: tuple | None = None
    split: SplitK | None = None


#: Launch plans of launch_conv by the shapes and options of a call (every check
#: in _plan depends on nothing else), so a repeated call skips the checks and
#: the launch arithmetic: at batch 1 a conv is bound by host time.
#: Why no call sees another's state: a plan is a pure function of its key
#: (every _plan argument, the module's tunables included), holds no array (the
#: arrays of each call are passed at launch), and is never changed once
#: stored; two threads computing one plan store equal values (dict get / set
#: are atomic). At most _MAX_PLANS are kept (later shapes are planned every
#: call); tests/test_stateful.py interleaves shapes and drops them.
_PLANS: dict[tuple, ConvPlan | tuple] = {}
_MAX_PLANS = 4096
_EMPTY = ()  # the plan of a call with nothing to compute (not None: "not planned yet")


# Split-K's scratch arrays (the partial sums and the per-tile counts of
# conv_split_k_finish), allocated once and reused, instead of a pool
# allocation (and, before, a second launch) per call.
#
# What outlives a call, and why no call sees another's state:
# * partials: every launch writes every element it reads (each split stores
#   its whole tile before it counts itself), so stale values are never read;
# * counts: zero when allocated (a memset on the allocating stream, before the
#   first launch that uses them), and every launch leaves them zero (each
#   tile's last split resets its count), so every launch starts from zeros;
# * sizes: the arrays are keyed on their exact shapes and dtype (a plan's
#   SplitK), so a conv of another shape never reuses a smaller (or larger)
#   array, and an array a CUDA graph has recorded is never replaced or freed
#   while its stream (the graph's capture stream) lives;
# * concurrency: the arrays belong to a CUDA stream (per-stream, not locked):
#   launches on one stream run one after another even when several host
#   threads make them, so they can share; two streams (threads with streams
#   of their own, a graph's capture stream) get separate arrays and run
#   concurrently. CUDA's per-thread default stream is one handle for many
#   streams, so there the arrays belong to the calling thread. An executor
#   without streams (the CPU emulator: one launch at a time, in call order)
#   owns its arrays itself. Owners are held weakly: a stream's arrays are
#   freed when the stream is (a captured graph's with the graph).
# * r2n.clear_scratch() drops every owner's arrays (clear_split_k_scratch)
#   except a pinned owner's (pin_split_k_scratch: r2n.gpu.capture pins its
#   capture stream before recording, since the graph keeps the arrays'
#   addresses) and a stream's that is capturing right now.
_SCRATCH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PINNED: weakref.WeakSet = weakref.WeakSet()
_SCRATCH_LOCK = threading.Lock()
#: Scratch sets kept per stream (shapes x dtypes); beyond it a call allocates
#: its own (and zeroes its counts) as a one-off.
_MAX_SCRATCH_PER_OWNER = 64
#: cudaStreamPerThread's handle: one handle, a different stream in each thread.
_PER_THREAD_STREAM = 2
_THREAD = threading.local()
_NO_COUNTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _ThreadOwner:
    """Owns the scratch arrays of one host thread's per-thread default stream
    (referenced only by that thread's threading.local: freed when it ends)."""


def _scratch_owner(ex):
    stream_of = getattr(ex, "stream", None)
    if stream_of is None:
        return ex
    stream = stream_of()
    if getattr(stream, "ptr", None) != _PER_THREAD_STREAM:
        return stream
    owner = getattr(_THREAD, "owner", None)
    if owner is None:
        owner = _THREAD.owner = _ThreadOwner()
    return owner


def _zeros(ex, shape, dtype):
    zeros = getattr(ex, "zeros", None)
    if zeros is not None:
        return zeros(shape, dtype)
    a = ex.empty(shape, dtype)
    a.fill(0)
    return a


def split_k_scratch(ex, split: SplitK) -> tuple:
    """The (partial sums, tile counts) arrays a split launch described by
    ``split`` runs with on ``ex``'s current stream: (k_splits, N, C_out,
    H_out*W_out) of ``split.partial_dtype`` and (n_counts,) int32, all zero.
    Made on the first call per (stream, device, shapes) and kept while the
    stream lives (the rules above); later calls return the same arrays."""
    owner = _scratch_owner(ex)
    key = (getattr(ex, "device_id", None), *split)
    with _SCRATCH_LOCK:
        sets = _weakly_keyed_get(
            _SCRATCH,
            owner,
            "split_k_scratch",
            "the scratch owner (ex's current stream, or ex when it has no streams) "
            "must be a hashable object that supports weak references",
        )
        if sets is None:
            sets = _SCRATCH[owner] = {}
        found = sets.get(key)
    if found is not None:
        return found
    found = (ex.empty(split.partial_shape, split.partial_dtype),
             _zeros(ex, (split.n_counts,), np.int32))  # fmt: skip
    with _SCRATCH_LOCK:
        if len(sets) < _MAX_SCRATCH_PER_OWNER:
            # two threads on one stream may both get here: the first one's stays
            found = sets.setdefault(key, found)
    return found


def pin_split_k_scratch(owner) -> None:
    """Keep ``owner``'s (a stream's) split-K arrays through
    :func:`clear_split_k_scratch`: call it before capturing a CUDA graph on
    that stream yourself (``r2n.gpu.capture`` and ``graph=True`` models do),
    since the graph writes the arrays' addresses on every replay."""
    with _SCRATCH_LOCK:
        try:
            _PINNED.add(owner)
        except TypeError:  # WeakSet's bare "cannot create weak reference" or "unhashable"
            raise _not_weakly_held(
                "pin_split_k_scratch",
                "owner must be a hashable stream object that supports weak references "
                "(a cupy.cuda.Stream)",
                owner,
            ) from None


def _not_weakly_held(where: str, expected: str, got) -> TypeError:
    """The error for a scratch owner that cannot be held weakly: owners are
    held weakly so that their arrays go with them, which takes an object that
    can be weakly referenced (not an int, a str, a tuple or a slotted object
    without ``__weakref__``) and hashed (a weak key is hashed as its object
    is); the message says which of the two ``got`` is not."""
    why = "cannot be a weak key"  # its __hash__ or __eq__ raised TypeError for another reason
    try:
        weakref.ref(got)
    except TypeError:
        why = "cannot be weakly referenced"
    else:
        try:
            hash(got)
        except TypeError:
            why = "is unhashable"
    return TypeError(f"r2n.gpu.conv.{where}: {expected}, got {type(got).__name__}, which {why}")


def _weakly_keyed_get(table: weakref.WeakKeyDictionary, owner, where: str, expected: str):
    """``table.get(owner)``, or :func:`_not_weakly_held`'s error for an owner
    that cannot be a weak key (WeakKeyDictionary's own is a bare "cannot
    create weak reference" or "unhashable type")."""
    try:
        return table.get(owner)
    except TypeError:
        raise _not_weakly_held(where, expected, owner) from None


def _is_capturing(owner) -> bool:
    is_capturing = getattr(owner, "is_capturing", None)
    try:
        return bool(is_capturing()) if is_capturing is not None else False
    except Exception:  # noqa: BLE001 (a stream CUDA cannot query: keep its arrays)
        return True


def clear_split_k_scratch() -> int:
    """Forget the split-K arrays of every stream and thread (``r2n.clear_scratch()``
    calls it), except those of pinned owners (:func:`pin_split_k_scratch`) and
    of a stream that is capturing a graph now; returns how many owners' sets
    were dropped. Their memory goes back to CuPy's memory pool (per stream, so
    a launch still in flight on the stream finishes before another allocation
    there reuses it); the next split launch allocates and zeroes new arrays."""
    with _SCRATCH_LOCK:
        owners = [o for o in list(_SCRATCH.keys()) if o not in _PINNED and not _is_capturing(o)]
        for owner in owners:
            del _SCRATCH[owner]
    return len(owners)


def _no_counts(ex):
    """An int32 array for an unsplit conv_gemm*.cu launch's tile_counts (never
    read or written there: k_splits is 1), one per executor."""
    counts = _weakly_keyed_get(
        _NO_COUNTS,
        ex,
        "launch_conv",
        "ex must be a hashable executor object that supports weak references "
        "(r2n.gpu._runtime.CupyExecutor, the emulator's)",
    )
    if counts is None:
        counts = _zeros(ex, (1,), np.int32)
        with _SCRATCH_LOCK:
            counts = _NO_COUNTS.setdefault(ex, counts)
    return counts


def _register_clear() -> None:
    from ..cpu import _scratch  # NumPy only: no Numba import

    _scratch.on_clear(clear_split_k_scratch)


_register_clear()


def _tunables() -> tuple:
    """The module settings a plan depends on (part of its key: tests and tuning
    change them)."""
    # one flat tuple (built on every launch): the rule's settings, then the grid's
    return (
        _LARGE_TILE_MIN_BLOCKS,
        _NARROW_MAX_C_OUT_G,
        FP32_MEASURED,
        SPLIT_K_BLOCKS_PER_SM,
        SPLIT_K_MIN_ROWS,
        SPLIT_K_MAX,
        SPLIT_K_MIN_K,
        _runtime.MAX_BLOCKS_1D,
        _runtime.MAX_GRID_DIM,
        TC_GEMM_1X1_MIN_WAVES,
        _tc.GEMM_1X1_LARGE_MIN_K,
        _HALF_TILE_MIN_PIXELS,  # read by fp32_tile_rule itself: here for the key
        TC_IM2COL_MULTISTAGE,
    )


def _plan(
    variant,
    dtype,
    x_shape,
    weight_shape,
    out_shape,
    bias_shape,
    add_shape,
    residual_shape,
    stride,
    padding,
    dilation,
    groups,
    x_c0,
    add_c0,
    out_c0,
    activation,
    negative_slope,
    side_mode,
    side_c0,
    side_c,
    precision,
    op,
    tunables,
    k_splits,
    sm_count,
    max_shared,
    shortcut,
    tile_forced,
):
    """Check one launch_conv call's shapes and options and compute its launch
    (a :class:`ConvPlan`), or _EMPTY when there is nothing to compute.
    ``max_shared``: the executor's ``max_shared_per_block()``, or None when it
    has none (then as :func:`shared_limit`).

    Shared memory: every tile rule picks, of the tiles its choice could step
    down to, the largest that fits ``max_shared`` (:func:`shared_limit`): the
    multistage 1x1 GEMM's 128 x 128 -> 128 x 64 -> 64 x 128, else the 64 x 64
    tensor-core plane GEMM; the multistage im2col tiles likewise, else step 5;
    step 5's 64 x 64 -> 32 x 64. The SIMT tiles (<= 16.5 KiB) have no
    fallback. A launch that still does not fit is a ValueError here, before
    any launch."""
    *settings, max_blocks_1d, max_grid_dim, tc_1x1_min_waves, _, _, tc_im2col_ms = tunables
    fp32_rule = (*settings[:3], tuple(settings[3:]))  # as _fp32_rule() has them
    max_shared = _capped_shared_limit(max_shared)
    ctype = _runtime.dtype_name(dtype)
    n_img, x_c_total, h, w = x_shape
    c_out, c_in_g, kh, kw = weight_shape
    sc_c = 0
    if shortcut is not None:
        (sc_n, sc_c, sc_h, sc_w), sc_stride, sc_pool = shortcut
        if variant != GEMM_1X1 or groups != 1 or add_shape is not None or side_mode != SIDE_NONE:
            raise ValueError(
                f"r2n.{op}: a shortcut joins variant gemm_1x1 with groups 1, no add and no "
                f"side job; got variant {variant!r}, groups {groups}"
            )
        if sc_n != n_img or not 0 < sc_c < c_in_g:
            raise ValueError(
                f"r2n.{op}: the shortcut's input ({sc_n}, {sc_c}, ...) must have x's batch "
                f"{n_img} and fewer channels than the weight's {c_in_g} columns"
            )
        c_in_g -= sc_c  # the main conv's columns; the shortcut's follow
    c_in = c_in_g * groups
    _, out_c_total, h_out, w_out = out_shape
    tensor_cores = variant == "5_tensor_core" or (variant == GEMM_1X1 and precision != "fp32")
    if tensor_cores:
        if precision not in _tc.PRECISIONS:
            raise ValueError(
                f"r2n.{op}: variant 5_tensor_core computes in {' or '.join(_tc.PRECISIONS)}; "
                f"pass precision='tf32' or 'bf16' (got {precision!r})"
            )
        if ctype != "float":
            raise ValueError(
                f"r2n.{op}: precision={precision!r} rounds float32 data; float64 has no "
                "tensor-core path (use precision='fp32')"
            )
    elif precision != "fp32":
        raise ValueError(
            f"r2n.{op}: variant {variant} computes in fp32, got precision={precision!r} "
            "(tf32 and bf16 run on variants 5_tensor_core and gemm_1x1)"
        )
    if k_splits is not None and (
        not isinstance(k_splits, (int, np.integer)) or isinstance(k_splits, bool) or k_splits < 1
    ):
        raise ValueError(f"r2n.{op}: k_splits must be None or an int >= 1, got {k_splits!r}")
    if k_splits not in (None, 1) and variant not in SPLIT_K_VARIANTS:
        raise ValueError(
            f"r2n.{op}: variant {variant} does not split K (k_splits={k_splits}); "
            f"variants {list(SPLIT_K_VARIANTS)} do"
        )
    if tile_forced is not None and (
        tile_forced not in TILES or variant not in _TILE_VARIANTS or tensor_cores
    ):
        raise ValueError(
            f"r2n.{op}: tile= forces one of {list(TILES)} on the float32 / float64 variants "
            f"{list(_TILE_VARIANTS)}; got tile={tile_forced!r} with variant {variant!r}, "
            f"precision {precision!r}"
        )
    if groups < 1 or c_out % groups:
        raise ValueError(f"r2n.{op}: groups={groups} must divide C_out={c_out}")
    if not (0 <= x_c0 and x_c0 + c_in <= x_c_total):
        raise ValueError(f"r2n.{op}: input channels {x_c0}..{x_c0 + c_in} outside x {x_shape}")
    if out_shape[0] != n_img or not (0 <= out_c0 and out_c0 + c_out <= out_c_total):
        raise ValueError(
            f"r2n.{op}: output channels {out_c0}..{out_c0 + c_out} outside out {out_shape}"
        )
    if bias_shape is not None and tuple(bias_shape) != (c_out,):
        raise ValueError(f"r2n.{op}: bias must have shape ({c_out},), got {bias_shape}")
    if add_shape is not None and not (
        add_shape[0] == n_img
        and tuple(add_shape[2:]) == (h, w)
        and 0 <= add_c0
        and add_c0 + c_in <= add_shape[1]
    ):
        raise ValueError(f"r2n.{op}: add {add_shape} does not cover the input slice")
    if residual_shape is not None and tuple(residual_shape) != tuple(out_shape):
        raise ValueError(
            f"r2n.{op}: residual must have the output's shape {tuple(out_shape)}, "
            f"got {tuple(residual_shape)}"
        )
    # The output size the geometry implies must be out's: the kernels trust it.
    if variant == AVG_POOL_GEMM_1X1:
        if (kh, kw) != (1, 1) or groups != 1:
            raise ValueError(
                f"r2n.{op}: the pooled shortcut needs a 1x1 conv, groups 1; "
                f"got kernel {(kh, kw)}, groups {groups}"
            )
        expect = tuple(
            _checks.pool_output_size(op, a, s_, k, k, 0, True)
            for a, s_, k in (("H", h, stride[0]), ("W", w, stride[1]))
        )
    else:
        if variant == GEMM_1X1 and not is_gemm_1x1((kh, kw), stride, padding):
            raise ValueError(
                f"r2n.{op}: variant gemm_1x1 computes 1x1 convs with stride 1 and "
                f"padding 0, got kernel {(kh, kw)}, stride {stride}, padding {padding}"
            )
        expect = tuple(
            _checks.conv_output_size(op, a, s_, k, st, p, d)
            for a, s_, k, st, p, d in (
                ("H", h, kh, stride[0], padding[0], dilation[0]),
                ("W", w, kw, stride[1], padding[1], dilation[1]),
            )
        )
    if expect != (h_out, w_out):
        raise ValueError(f"r2n.{op}: out has H_out, W_out = {(h_out, w_out)}, expected {expect}")
    if shortcut is not None:
        # the shortcut's output size: a 1x1 stride-s conv, or a ceil-mode s x s pool
        sc_expect = tuple(
            _checks.pool_output_size(op, a, s_, k, k, 0, True)
            if sc_pool
            else _checks.conv_output_size(op, a, s_, 1, k, 0, 1)
            for a, s_, k in (("H", sc_h, sc_stride[0]), ("W", sc_w, sc_stride[1]))
        )
        if sc_expect != (h_out, w_out):
            raise ValueError(
                f"r2n.{op}: the shortcut makes H_out, W_out = {sc_expect}, conv3 {(h_out, w_out)}"
            )
    if side_mode != SIDE_NONE:
        same_size = (h_out, w_out) == (h, w)
        if not (0 <= side_c0 and side_c0 + side_c <= min(x_c_total, out_c_total) and side_c > 0):
            raise ValueError(f"r2n.{op}: side channels {side_c0}..{side_c0 + side_c} out of range")
        if side_mode == SIDE_COPY and not same_size:
            raise ValueError(
                f"r2n.{op}: the pass-through chunk needs H_out, W_out == H, W; "
                f"got {(h_out, w_out)} and {(h, w)}"
            )
        if side_mode == SIDE_AVG_POOL_3X3 and expect != tuple(
            (s_ - 1) // stride[0] + 1 for s_ in (h, w)
        ):
            raise ValueError(
                f"r2n.{op}: the pooled chunk needs a 3x3/pad-1 output size, got {expect}"
            )
        if stride[0] != stride[1]:
            raise ValueError(f"r2n.{op}: the chain's side job needs equal strides, got {stride}")
    if n_img == 0 or h_out == 0 or w_out == 0:
        return _EMPTY

    i32 = _runtime.int32_or_error
    k_total = c_in_g * kh * kw
    for what, value in (
        ("N", n_img),
        ("C_in", c_in),
        ("H", h),
        ("W", w),
        ("C_out", c_out),
        ("H_out * W_out", h_out * w_out),
        ("C_in // groups * kH * kW (+ a K slice)", k_total + 64),
        ("H * W", h * w),
        # input coordinates oy * stride - padding + i * dilation stay inside these
        ("H + 2 * padding", h + 2 * padding[0]),
        ("W + 2 * padding", w + 2 * padding[1]),
        # the pooled shortcut's window rows end at iy0 + stride, iy0 <= H - 1
        ("H + stride", h + stride[0]),
        ("W + stride", w + stride[1]),
    ):
        i32(op, what, value)
    if shortcut is not None:
        for what, value in (
            ("the shortcut's H * W", sc_h * sc_w),
            ("the shortcut's H + stride", sc_h + sc_stride[0]),
            ("the shortcut's W + stride", sc_w + sc_stride[1]),
        ):
            i32(op, what, value)
    plane_out = h_out * w_out
    side_total = n_img * side_c * plane_out if side_mode != SIDE_NONE else 0

    if tensor_cores:
        file, kernel = _tc.FILE, None
    elif variant in KERNELS:
        file, kernel = KERNELS[variant]
    else:
        raise ValueError(
            f"r2n.{op}: unknown variant {variant!r}; expected one of "
            f"{[*VARIANT_PRECISIONS, AVG_POOL_GEMM_1X1]}"
        )
    gemm_load = None  # a conv_gemm*.cu kernel's LOAD, or None: the ladder's kernel
    if variant == "1_naive":
        block = NAIVE_THREADS
        conv_blocks = min(_cdiv(n_img * c_out * plane_out, block), max_blocks_1d)
        side_blocks = min(_cdiv(side_total, block), max_blocks_1d)
        grid = (conv_blocks + side_blocks,)
        name = _name(kernel, ctype)
        shared = 0
    else:
        c_out_g = c_out // groups
        images_groups = min(n_img * groups, max_grid_dim[2])
        k_rows = c_in_g * kh * kw + sc_c
        if tensor_cores:
            if shortcut is not None:  # conv_gemm_tensor_core.cu has the wide tile only
                tile = _tc.TILE_WIDE
            else:
                tile = _tc.tile_for(c_out_g, precision=precision, max_shared=max_shared)
            if tile is None:
                smallest = min(_tc.shared_bytes(precision, t) for t in _tc.TILES)
                raise ValueError(
                    f"r2n.{op}: no {precision} tensor-core tile fits the device's shared "
                    f"memory: the smallest needs {smallest} bytes, the device allows at "
                    f"most {max_shared} bytes per block"
                )
        elif variant in _TILE_VARIANTS:
            if variant == "4_pipelined":
                kind = KIND_IM2COL
            else:
                kind = KIND_PLANE if shortcut is None else KIND_PLANE_SHORTCUT
            if tile_forced is not None and tile_forced not in _RULE_TILES[kind]:
                raise ValueError(
                    f"r2n.{op}: variant {variant} has tiles {list(_RULE_TILES[kind])}, "
                    f"got tile={tile_forced!r}"
                )
            if tile_forced is not None and ctype not in TILES[tile_forced]:
                raise ValueError(f"r2n.{op}: the {tile_forced} tile is float32's only")
            tile_name, rule_splits = fp32_tile_rule(
                kind, c_out_g, k_rows, plane_out, images_groups, sm_count, ctype,
                tile_forced, fp32_rule,
            )  # fmt: skip
            tile = TILES[tile_name][ctype]
            if k_splits is None:
                k_splits = rule_splits
        elif variant == AVG_POOL_GEMM_1X1:
            tile = _TILE_WIDE
        elif variant == "2_smem_tiles":
            tile = _TILE_SMEM
        else:
            tile = _TILE_NARROW if c_out_g <= 32 else _TILE_WIDE
        bm, bn, bk = tile[:3]
        if tensor_cores:
            threads = _tc.threads(tile)
        elif variant == "2_smem_tiles":
            threads = bm * bn
        else:
            threads = (bm // tile[3]) * (bn // tile[4])
        pixel_tiles = _cdiv(plane_out, bn)
        channel_tiles = _cdiv(c_out_g, bm)
        if variant not in SPLIT_K_VARIANTS:
            k_splits = 1
        elif k_splits is None:  # 5_tensor_core (the SIMT variants' came from the rule)
            blocks = pixel_tiles * channel_tiles * images_groups
            k_splits = split_k_for(blocks, k_rows, sm_count, fp32_rule[3])
        # tf32 / bf16 1x1 convs whose grid fills the GPU: the multistage GEMM
        # (kernels/gemm_1x1_tensor_core.cu; R2N_CONV_PARAMS only, so no split,
        # add or shortcut); fewer blocks keep the 64 x 64 tiles and split-K
        multistage = (
            tensor_cores
            and variant == GEMM_1X1
            and k_splits == 1
            and shortcut is None
            and add_shape is None
            and side_mode == SIDE_NONE
        )
        if multistage:
            ms_tile = _tc.gemm_1x1_tile(
                c_out_g, plane_out, c_in_g, precision=precision, max_shared=max_shared
            )
            multistage = ms_tile is not None
        if multistage:
            ms_pixel_tiles = _cdiv(plane_out, ms_tile[1])
            ms_channel_tiles = _cdiv(c_out_g, ms_tile[0])
            ms_blocks = ms_pixel_tiles * ms_channel_tiles * images_groups
            multistage = not sm_count or ms_blocks >= tc_1x1_min_waves * sm_count
        # tf32 / bf16 im2col convs, when selected (TC_IM2COL_MULTISTAGE): the
        # multistage implicit GEMM (kernels/conv_im2col_tensor_core.cu), which
        # copies its input with cp.async, so never with an add on load, and
        # does not split K
        im2col_multistage = (
            tc_im2col_ms
            and variant == "5_tensor_core"
            and k_splits == 1
            and add_shape is None
            and _tc.im2col_fits(c_in_g, h, w, kh, kw, *dilation)
        )
        if im2col_multistage:
            im2col_tile = _tc.im2col_tile(c_out_g, precision=precision, max_shared=max_shared)
            im2col_multistage = im2col_tile is not None
        if multistage:
            tile, threads = ms_tile, _tc.gemm_1x1_threads(ms_tile)
            bm, bn, bk = tile[:3]
            pixel_tiles, channel_tiles = ms_pixel_tiles, ms_channel_tiles
        elif im2col_multistage:
            tile = im2col_tile
            threads = _tc.gemm_1x1_threads(tile)
            bm, bn, bk = tile[:3]
            pixel_tiles, channel_tiles = _cdiv(plane_out, bn), _cdiv(c_out_g, bm)
        elif k_splits > 1 or shortcut is not None or tensor_cores and variant == GEMM_1X1:
            if shortcut is not None:
                gemm_load = LOAD_PLANE_SHORTCUT
            else:
                gemm_load = LOAD_IM2COL if variant != GEMM_1X1 else LOAD_PLANE
            if not tensor_cores and tile not in _gemm_tiles(gemm_load, ctype):
                if tile_forced is not None:
                    raise ValueError(
                        f"r2n.{op}: the {tile_forced} tile has no {ctype} kernel that "
                        f"splits K ({k_splits}) or adds a shortcut for variant {variant}"
                    )
                # conv_gemm.cu has the 64 x 64 tile for every LOAD (split_k_for
                # never splits a grid of large tiles: >= 264 blocks)
                tile, threads = _TILE_WIDE, (_TILE_WIDE[0] // 4) * (_TILE_WIDE[1] // 4)
                bm, bn, bk = tile[:3]
                pixel_tiles, channel_tiles = _cdiv(plane_out, bn), _cdiv(c_out_g, bm)
        # at most one split per K slice, and none empty: ceil(slices / per)
        # splits of ``per`` consecutive slices (conv_split_k_range)
        n_slices = _cdiv(k_rows, bk)
        k_splits = _cdiv(n_slices, _cdiv(n_slices, min(int(k_splits), n_slices)))
        if channel_tiles * k_splits > max_grid_dim[1]:
            raise ValueError(
                f"r2n.{op}: {c_out_g} output channels per group in {k_splits} K splits is too many"
            )
        per_side_block = threads * channel_tiles * k_splits * images_groups
        side_blocks = min(_cdiv(side_total, per_side_block), max_blocks_1d)
        grid = (pixel_tiles + side_blocks, channel_tiles * k_splits, images_groups)
        block = threads
        if multistage:
            file, name = _tc.GEMM_1X1_FILE, _tc.gemm_1x1_name(precision, tile)
            shared = _tc.gemm_1x1_shared_bytes(precision, tile)
        elif im2col_multistage:
            file, name = _tc.IM2COL_FILE, _tc.im2col_name(precision, tile)
            shared = _tc.im2col_shared_bytes(precision, tile)
        elif tensor_cores:
            shared = _tc.shared_bytes(precision, tile)
            if gemm_load is None:
                name = _tc.name(precision, tile)
            else:
                file, name = TC_GEMM_FILE, _tc_gemm_name(precision, tile, gemm_load)
        else:
            name = _name(kernel, ctype, tile)
            # the two tiles (weight rows padded by one), then 3 * BK ints of
            # decoded im2col rows, twice in the pipelined body (one copy in use,
            # the next slice's being written)
            tables = 1 if variant in ("2_smem_tiles", "3_register_tiles") else 2
            shared = simt_shared_bytes(ctype, tile, tables)
            if gemm_load is not None:
                file, name = GEMM_FILE, _gemm_name(ctype, tile, gemm_load)
        if gemm_load is not None and name not in _runtime.names_of(file):
            raise AssertionError(f"r2n.{op}: {name} is not instantiated in {file}")
        if shared > max_shared:
            raise ValueError(
                f"r2n.{op}: {name} needs {shared} bytes of shared memory per block, but the "
                f"device allows at most {max_shared} bytes per block (no smaller tile of "
                f"variant {variant} applies)"
            )

    flags = 0
    if bias_shape is not None:
        flags |= _FLAG_BIAS
    if add_shape is not None:
        flags |= _FLAG_ADD
    if residual_shape is not None:
        flags |= _FLAG_RESIDUAL
    i64 = np.int64
    scalars = ConvScalars(
        x_c_total=i64(x_c_total),
        x_c0=i64(x_c0),
        add_c_total=i64(x_c_total if add_shape is None else add_shape[1]),
        add_c0=i64(add_c0),
        out_c_total=i64(out_c_total),
        out_c0=i64(out_c0),
        n_img=i32(op, "N", n_img),
        c_in=i32(op, "C_in", c_in),
        h=i32(op, "H", h),
        w=i32(op, "W", w),
        c_out=i32(op, "C_out", c_out),
        h_out=i32(op, "H_out", h_out),
        w_out=i32(op, "W_out", w_out),
        kh=i32(op, "kH", kh),
        kw=i32(op, "kW", kw),
        sh=i32(op, "stride", stride[0]),
        sw=i32(op, "stride", stride[1]),
        ph=i32(op, "padding", padding[0]),
        pw=i32(op, "padding", padding[1]),
        dh=i32(op, "dilation", dilation[0]),
        dw=i32(op, "dilation", dilation[1]),
        groups=i32(op, "groups", groups),
        flags=np.int32(flags),
        activation=np.int32(ACTIVATIONS[activation]),
        negative_slope=np.dtype(dtype).type(negative_slope),
        side_mode=np.int32(side_mode),
        side_src_c0=i64(side_c0),
        side_dst_c0=i64(side_c0),
        side_c=i32(op, "side channels", side_c),
        side_blocks=i32(op, "side blocks", side_blocks),
    )
    more = split = None
    if gemm_load is not None:
        sc_h, sc_w, sc_sh, sc_sw, sc_pool_code = (1, 1, 1, 1, 0)
        if shortcut is not None:
            sc_h, sc_w = shortcut[0][2:]
            (sc_sh, sc_sw), sc_pool_code = shortcut[1], int(shortcut[2])
        more = (
            np.int32(k_splits),
            i64(sc_c if shortcut is not None else 0),
            np.int32(sc_c),
            i32(op, "the shortcut's H", sc_h),
            i32(op, "the shortcut's W", sc_w),
            i32(op, "the shortcut's stride", sc_sh),
            i32(op, "the shortcut's stride", sc_sw),
            np.int32(sc_pool_code),
        )
        if k_splits > 1:
            split = SplitK(
                (k_splits, n_img, c_out, plane_out),
                np.dtype(np.float32) if tensor_cores else np.dtype(dtype),
                # one count per output tile of every (image, group), also those
                # the z grid-stride loop reaches (conv_split_k_tile)
                n_img * groups * channel_tiles * pixel_tiles,
            )
    return ConvPlan(
        file,
        name,
        grid,
        (block,),
        shared,
        scalars,
        channels=scalars[:_SIZES_START],
        sizes=scalars[_SIZES_START:],
        more=more,
        split=split,
    )


def conv2d_fused(
    x,
    weight,
    bias,
    *,
    stride,
    padding,
    dilation,
    groups,
    out_shape,
    residual=None,
    activation=None,
    negative_slope=0.0,
    executor=None,
    variant=None,
    precision="fp32",
):
    """``act(conv2d(x, weight) + bias + residual)`` in one launch.

    Parameters
    ----------
    x : (N, C_in, H, W)
    weight : (C_out, C_in // groups, kH, kW)
    bias : (C_out,) or None
    stride, padding, dilation, groups, out_shape : as r2n._checks.conv2d_args
    residual : (N, C_out, H_out, W_out) or None
    activation : None, "relu" or "leaky_relu" (``negative_slope``)
    executor : None (the current GPU's) or an executor (the test emulator)
    variant : None (by shape and precision, :func:`pick_variant`) or a key of
        :data:`VARIANT_PRECISIONS` (a step of the ladder or ``"gemm_1x1"``) that
        computes in ``precision``
    precision : "fp32" (default), "tf32" or "bf16" (tensor cores, float32 data
        only; error bounds in r2n.gpu.conv_tensor_core)

    Returns
    -------
    (N, C_out, H_out, W_out), a new array.
    """
    ex = _runtime.executor() if executor is None else executor
    xp = ex.xp
    x = xp.ascontiguousarray(x)
    weight = xp.ascontiguousarray(weight)
    bias = None if bias is None else xp.ascontiguousarray(bias)
    residual = None if residual is None else xp.ascontiguousarray(residual)
    if activation not in ACTIVATIONS:
        raise ValueError(f"r2n.conv2d: activation must be one of {list(ACTIVATIONS)}")
    _checks.precision_arg("conv2d", precision, "cupy", x.dtype)
    if variant is None:
        c_out_g = weight.shape[0] // groups
        variant = pick_variant(weight.shape[2:], stride, padding, c_out_g, precision)
        # a conv tensor cores do not speed up runs in float32 (computes_in)
        precision = computes_in(variant, precision, c_out_g)
    elif variant not in VARIANT_PRECISIONS:
        raise ValueError(
            f"r2n.conv2d: variant must be one of {list(VARIANT_PRECISIONS)}, got {variant!r}"
        )
    out = ex.empty(out_shape, x.dtype)
    launch_conv(
        ex,
        variant,
        x,
        weight,
        bias,
        out,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        residual=residual,
        activation=activation,
        negative_slope=negative_slope,
        precision=precision,
    )
    return out


def conv2d(
    x,
    weight,
    bias,
    *,
    stride,
    padding,
    dilation,
    groups,
    out_shape,
    executor=None,
    variant=None,
    precision="fp32",
):
    """2-D cross-correlation (PyTorch's conv2d), NCHW; arguments as the reference.

    Parameters
    ----------
    x : (N, C_in, H, W)
    weight : (C_out, C_in // groups, kH, kW)
    bias : (C_out,) or None
    stride, padding, dilation : (h, w) pairs; groups : int
    out_shape : (N, C_out, H_out, W_out), from r2n._checks.conv2d_args
    executor, variant, precision : see :func:`conv2d_fused`

    Returns
    -------
    (N, C_out, H_out, W_out)
    """
    return conv2d_fused(
        x,
        weight,
        bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        out_shape=out_shape,
        executor=executor,
        variant=variant,
        precision=precision,
    )


def _variant(name: str, precision: str | None = None):
    def run(x, weight, bias, **kwargs):
        if precision is not None:
            kwargs.setdefault("precision", precision)
        return conv2d(x, weight, bias, variant=name, **kwargs)

    run.__name__ = f"conv2d_{name}"
    run.__doc__ = f"conv2d through variant {name} (arguments as :func:`conv2d`)."
    if precision is not None:
        run.__doc__ += f" Computes in precision={precision!r} unless told otherwise."
    return run


# The ladder's steps, in order: name -> (the precisions it computes in, what it
# changes relative to the step before, in one line).
_STEPS = {
    "1_naive": (
        ("fp32",),
        "one thread per output, the definition: two global loads per multiply-add",
    ),
    "2_smem_tiles": (
        ("fp32",),
        "16 x 16 output tiles: weights and im2col columns staged in shared memory",
    ),
    "3_register_tiles": (
        ("fp32",),
        "a 4 x 4 tile of outputs per thread: 8 shared loads feed 16 multiply-adds",
    ),
    "4_pipelined": (
        ("fp32",),
        "the next K slice fetched into registers while this one is multiplied",
    ),
    "5_tensor_core": (
        _tc.PRECISIONS,
        "step 4 on mma.sync tensor cores, operands rounded to TF32 (the ladder's run)",
    ),
}

#: variant name -> the precisions it computes in (``precision=`` of conv2d): the
#: ladder's steps and ``gemm_1x1``, every variant :func:`conv2d` takes.
VARIANT_PRECISIONS = {name: precisions for name, (precisions, _) in _STEPS.items()}
VARIANT_PRECISIONS[GEMM_1X1] = ("fp32", *_tc.PRECISIONS)  # tf32 / bf16: conv_gemm_tensor_core.cu

#: The ladder's steps: name -> conv2d with that step forced (same signature as
#: conv2d; ``5_tensor_core`` needs ``precision="tf32"`` or ``"bf16"``).
VARIANTS = {name: _variant(name) for name in _STEPS}


def _source(name: str) -> str:
    file = _tc.FILE if name == "5_tensor_core" else KERNELS[name][0]
    return f"r2n/gpu/kernels/{file}"


#: The conv2d ladder (r2n._ladder.Step), in order. ``5_tensor_core`` runs with
#: precision="tf32" (float32 data only; its error is TF32's, see
#: r2n.gpu.conv_tensor_core.tolerance).
def _float32_only(x, weight, bias, **args) -> bool:
    """TF32 tensor cores take float32 data only (float64 has no tensor-core path)."""
    return np.dtype(x.dtype) == np.float32


LADDER = tuple(
    Step(
        name,
        summary,
        _variant(name, "tf32" if name == "5_tensor_core" else None),
        applies=_float32_only if name == "5_tensor_core" else None,
        source=_source(name),
        tolerance=_tc.tolerance("tf32") if name == "5_tensor_core" else None,
    )
    for name, (_, summary) in _STEPS.items()
)
