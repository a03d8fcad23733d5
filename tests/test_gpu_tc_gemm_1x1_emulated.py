"""The multistage tensor-core 1x1 GEMM (kernels/gemm_1x1_tensor_core.cu) under the emulator.

Small odd shapes that reach every path of the kernel: K (= C_in per group)
not a multiple of 4 (4-byte weight copies) and a multiple of 4 with a tail
slice (16-byte copies), planes whose H*W is odd, not a multiple of 4, or a
multiple of 4 (4- or 16-byte input copies, scalar or paired stores), each
of the three block tiles, batch 1-3, groups, and the fused epilogue (bias,
residual, ReLU, LeakyReLU) writing a channel slice of a NaN-filled output
from a channel slice of the input. Each result gets the three checks of
tests/test_gpu_tensor_core_emulated.py (the format's norm-wise bound, the
element-wise bound, and the float64 product of operands rounded as the
kernel rounds them, to 1e-5); the channels around the slice must still be
NaN, and the slice must have no NaN left (every element written once).
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_emu import EmuExecutor
from test_gpu_tensor_core_emulated import canary_launch, check_conv

from r2n import _checks
from r2n.gpu import _runtime
from r2n.gpu import conv as gconv
from r2n.gpu import conv_tensor_core as tc


@pytest.fixture(scope="module")
def ex():
    return EmuExecutor()


# n, c_in, h, w, c_out, groups, epilogue (bias, residual, activation), x_c0, out_c0
CASES = [
    (2, 5, 7, 9, 26, 1, (True, False, None), 0, 0),  # K = 5, 63 pixels: 4-byte copies
    (2, 13, 3, 5, 40, 1, (True, True, "relu"), 2, 3),  # K = 13, 15 pixels, slices
    (3, 36, 4, 4, 7, 1, (False, True, "leaky_relu"), 0, 1),  # 16-byte copies, a K tail
    (1, 36, 9, 9, 70, 1, (True, True, "relu"), 1, 0),  # 128 x 64, two pixel tiles
    (2, 36, 8, 8, 70, 1, (True, False, "leaky_relu"), 0, 2),  # 128 x 64, 16-byte copies
    (1, 516, 9, 9, 70, 1, (True, True, "relu"), 0, 0),  # 128 x 128: K >= 512, 17 slices
    (1, 26, 4, 6, 52, 2, (True, True, None), 0, 0),  # 2 groups of 13 -> 26
]


def _case_id(case):
    n, c_in, h, w, c_out, groups, (bias, residual, act), x_c0, out_c0 = case
    epilogue = ("b" if bias else "") + ("r" if residual else "") + (act or "")
    return f"n{n}-{c_in}x{h}x{w}-{c_out}-g{groups}-{epilogue}"


def _run(ex, rng, case, precision, **launch):
    """The 1x1 GEMM on the case (tests/test_gpu_tensor_core_emulated.py's
    canary_launch)."""
    n, c_in, h, w, c_out, groups, epilogue, x_c0, out_c0 = case
    return canary_launch(
        ex, gconv.GEMM_1X1, rng, n, c_in, h, w, c_out, (1, 1), (1, 1), (0, 0), (1, 1), groups,
        epilogue, x_c0, out_c0, precision, **launch,
    )  # fmt: skip


@pytest.mark.parametrize("precision", tc.PRECISIONS)
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_multistage_1x1_matches_reference(ex, rng, case, precision):
    n, c_in, h, w, c_out, groups = case[:6]
    ex.launches.clear()
    out, x, weight, bias, args, residual, activation = _run(ex, rng, case, precision)
    tile = tc.gemm_1x1_tile(c_out // groups, h * w, c_in // groups)
    assert ex.launches == [(tc.GEMM_1X1_FILE, tc.gemm_1x1_name(precision, tile))]
    check_conv(out, x, weight, bias, args, precision, residual, activation)


def test_every_tile_is_reached_by_the_cases():
    tiles = {tc.gemm_1x1_tile(c[4] // c[5], c[2] * c[3], c[1] // c[5]) for c in CASES}
    assert tiles == set(tc.GEMM_1X1_TILES)


def test_multistage_1x1_loops_over_images_and_groups_past_grid_z(ex, rng, monkeypatch):
    # 3 images x 2 groups in a grid of z = 2: each block runs 3 (image, group)
    # pairs, refilling its ring each time (the barrier at the end of each).
    monkeypatch.setattr(_runtime, "MAX_GRID_DIM", (2**31 - 1, 65535, 2))
    case = (3, 26, 3, 5, 52, 2, (True, True, "relu"), 0, 0)
    ex.launches.clear()
    out, x, weight, bias, args, residual, activation = _run(ex, rng, case, "tf32")
    assert ex.launches[0][0] == tc.GEMM_1X1_FILE
    check_conv(out, x, weight, bias, args, "tf32", residual, activation)


def _file_of(emu, rng, case, **launch):
    emu.launches.clear()
    _run(emu, rng, case, "tf32", **launch)
    return emu.launches[0][0]


def test_routing_by_blocks_split_and_options(rng, monkeypatch):
    """The multistage GEMM when its grid has a wave of blocks (or the executor
    has no SM count); the 64 x 64 plane GEMM for fewer blocks, forced splits,
    an add on load, a shortcut; the rule's constant is part of the plan."""
    case = (2, 13, 3, 5, 40, 1, (True, False, None), 0, 0)  # 2 blocks of 64 x 128
    emu = EmuExecutor(check_order=False)
    assert _file_of(emu, rng, case) == tc.GEMM_1X1_FILE  # no SM count
    emu.sm_count = 2
    assert _file_of(emu, rng, case) == tc.GEMM_1X1_FILE  # one wave
    emu.sm_count = 3
    assert _file_of(emu, rng, case) == gconv.TC_GEMM_FILE  # less than a wave
    monkeypatch.setattr(gconv, "TC_GEMM_1X1_MIN_WAVES", 0.5)
    assert _file_of(emu, rng, case) == tc.GEMM_1X1_FILE  # re-planned
    emu.sm_count = None
    assert _file_of(emu, rng, case, k_splits=2) == gconv.TC_GEMM_FILE
    assert _file_of(emu, rng, case, k_splits=1) == tc.GEMM_1X1_FILE
    # an add on load (the chain's form) stays on the plane GEMM, which sums it
    x = rng.standard_normal((1, 13, 3, 5)).astype(np.float32)
    a = rng.standard_normal((1, 13, 3, 5)).astype(np.float32)
    weight = rng.standard_normal((40, 13, 1, 1)).astype(np.float32)
    out = np.full((1, 40, 3, 5), np.nan, np.float32)
    emu.launches.clear()
    gconv.launch_conv(emu, gconv.GEMM_1X1, x, weight, None, out, stride=(1, 1),
                      padding=(0, 0), dilation=(1, 1), groups=1, add=a,
                      precision="bf16")  # fmt: skip
    assert emu.launches[0][0] == gconv.TC_GEMM_FILE
    args = _checks.conv2d_args("conv2d", x + a, weight, None, 1, 0, 1, 1)
    check_conv(out, x + a, weight, None, args, "bf16")


def test_shared_memory_and_threads_of_the_tiles():
    # 128 x 128 x 32 in 4 stages of (128 x 36 + 32 x 136) floats: 140 KB (TF32)
    large = tc.GEMM_1X1_TILE_LARGE
    assert tc.gemm_1x1_shared_bytes("tf32", large) == 4 * (128 * 36 + 32 * 136) * 4
    assert tc.gemm_1x1_shared_bytes("bf16", large) == 4 * (128 * 40 + 32 * 132) * 4
    for tile in tc.GEMM_1X1_TILES:
        for precision in tc.PRECISIONS:
            assert tc.gemm_1x1_shared_bytes(precision, tile) <= _runtime.MAX_SHARED_PER_BLOCK
    assert [tc.gemm_1x1_threads(t) for t in tc.GEMM_1X1_TILES] == [128, 128, 256]
