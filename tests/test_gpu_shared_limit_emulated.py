"""Every conv launch fits its device's shared memory per block (no GPU needed).

The multistage tensor-core tiles need 65-146 KiB of dynamic shared memory per
block, more than some GPUs r2n runs on allow: the opt-in limit is 99 KiB on
sm_86 / sm_89, 163 KiB on sm_80, 227 KiB on sm_90 (r2n's own ceiling,
``_runtime.MAX_SHARED_PER_BLOCK``, is 163 KiB), and 48 KiB is the limit
without an opt-in. Here the emulator plays each of those devices
(``EmuExecutor(max_shared=...)``, which refuses a launch over its limit as
``CupyExecutor.launch`` does) and every route of r2n.gpu.conv.launch_conv
(the SIMT steps, split-K, the shortcut GEMM, step 5, the multistage 1x1 and
im2col GEMMs, float32 / float64 / tf32 / bf16) is planned on it: each plan
must fit, with the largest tile that fits (the rules' fallbacks); a few run
under the emulator against the float64 reference; a limit below every tile
of a route is a ValueError before any launch.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
from cuda_emu import EmuExecutor
from test_gpu_tensor_core_emulated import canary_launch, check_conv

from r2n.gpu import _runtime
from r2n.gpu import conv as gconv
from r2n.gpu import conv_tensor_core as tc

KIB = 1024
#: The devices played: the limit without opt-in, sm_86 / sm_89, sm_80, sm_90.
LIMITS = (48 * KIB, 99 * KIB, 163 * KIB, 227 * KIB)

F32, F64 = np.float32, np.float64


class Route(NamedTuple):
    """One conv per route of launch_conv: (N, C_in, H, W) in, C_out out, a
    k x k kernel at stride s with padding p, in groups."""

    variant: str
    precision: str
    dtype: type
    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    k: int
    s: int = 1
    p: int = 0
    groups: int = 1
    launch: dict = {}


SPLIT2, SPLIT3, LARGE = {"k_splits": 2}, {"k_splits": 3}, {"tile": "large"}
ROUTES = {
    "1x1 tc large": Route("gemm_1x1", "tf32", F32, 1, 516, 9, 9, 70, 1),
    "1x1 tc large bf16": Route("gemm_1x1", "bf16", F32, 1, 516, 9, 9, 70, 1),
    "1x1 tc 128x64": Route("gemm_1x1", "bf16", F32, 1, 36, 9, 9, 70, 1),
    "1x1 tc 64x128": Route("gemm_1x1", "tf32", F32, 2, 13, 3, 5, 40, 1),
    "1x1 tc split": Route("gemm_1x1", "bf16", F32, 1, 64, 3, 5, 40, 1, launch=SPLIT2),
    "3x3 step5 wide": Route("5_tensor_core", "tf32", F32, 1, 8, 7, 9, 40, 3, p=1),
    "3x3 step5 narrow": Route("5_tensor_core", "bf16", F32, 1, 8, 7, 9, 26, 3, p=1),
    "3x3 step5 split": Route("5_tensor_core", "tf32", F32, 1, 26, 7, 9, 26, 3, p=1, launch=SPLIT3),
    "3x3 fp32 wide": Route("4_pipelined", "fp32", F32, 1, 8, 7, 9, 40, 3, p=1),
    "3x3 fp64 narrow": Route("4_pipelined", "fp32", F64, 1, 8, 7, 9, 26, 3, p=1),
    "3x3 fp32 split": Route("4_pipelined", "fp32", F32, 1, 26, 7, 9, 26, 3, p=1, launch=SPLIT3),
    "1x1 fp32 large": Route("gemm_1x1", "fp32", F32, 1, 16, 16, 16, 130, 1, launch=LARGE),
    "1x1 fp64 large": Route("gemm_1x1", "fp32", F64, 1, 16, 16, 16, 130, 1, launch=LARGE),
    "1x1 fp32 half": Route("gemm_1x1", "fp32", F32, 1, 16, 16, 16, 70, 1, launch={"tile": "half"}),
    "1x1 fp64 split": Route("gemm_1x1", "fp32", F64, 1, 200, 3, 5, 40, 1, launch=SPLIT2),
    "avg pool 1x1": Route("avg_pool_gemm_1x1", "fp32", F64, 1, 8, 7, 9, 16, 1, s=2),
    "naive grouped": Route("1_naive", "fp32", F32, 1, 8, 7, 9, 8, 3, p=1, groups=4),
    "smem tiles": Route("2_smem_tiles", "fp32", F64, 1, 8, 7, 9, 16, 3, p=1),
    "register tiles": Route("3_register_tiles", "fp32", F64, 1, 8, 7, 9, 40, 3, p=1),
}


def _arrays(route, rng):
    r = route
    x = rng.standard_normal((r.n, r.c_in, r.h, r.w)).astype(r.dtype)
    weight = rng.standard_normal((r.c_out, r.c_in // r.groups, r.k, r.k)).astype(r.dtype)
    if r.variant == "avg_pool_gemm_1x1":
        size = (-(-r.h // r.s), -(-r.w // r.s))
    else:
        size = ((r.h + 2 * r.p - r.k) // r.s + 1, (r.w + 2 * r.p - r.k) // r.s + 1)
    out = np.full((r.n, r.c_out, *size), np.nan, r.dtype)
    return x, weight, out


def _launch(ex, route, rng, **more):
    """launch_conv on the route's conv (``plan_only=True`` in ``more``: its plan)."""
    r = route
    x, weight, out = _arrays(route, rng)
    return gconv.launch_conv(
        ex, r.variant, x, weight, None, out, stride=(r.s, r.s), padding=(r.p, r.p),
        dilation=(1, 1), groups=r.groups, precision=r.precision, **{**r.launch, **more},
    )  # fmt: skip


def _shortcut_plan(ex, rng, precision, dtype):
    """conv3 + a strided shortcut as one GEMM (tile: the rule's, the large one
    in float64 at >= 264 blocks, which 300 images make here)."""
    x = rng.standard_normal((300, 8, 2, 2)).astype(dtype)
    sc_x = rng.standard_normal((300, 4, 4, 4)).astype(dtype)
    weight = rng.standard_normal((130, 12, 1, 1)).astype(dtype)
    out = np.empty((300, 130, 2, 2), dtype)
    return gconv.launch_conv(
        ex, "gemm_1x1", x, weight, None, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
        groups=1, precision=precision, shortcut=(sc_x, (2, 2), False), plan_only=True,
    )  # fmt: skip


def test_every_simt_tile_fits_without_an_opt_in():
    """The audit behind the SIMT rules having no fallback: their largest block
    (float64's 64 x 64 tile, 16.5 KiB) is far under the 48 KiB every CUDA GPU
    gives a block without opting in."""
    for name, by_type in gconv.TILES.items():
        for ctype, tile in by_type.items():
            for tables in (1, 2):
                assert gconv.simt_shared_bytes(ctype, tile, tables) <= 48 * KIB, (name, ctype)
    assert gconv.simt_shared_bytes("double", gconv._TILE_SMEM, 1) <= 48 * KIB


@pytest.mark.parametrize("multistage_im2col", [False, True], ids=["step5", "ms-im2col"])
def test_every_route_fits_the_device_with_the_largest_tile_that_does(
    rng, monkeypatch, multistage_im2col
):
    """Planned on each device in turn (the plans are keyed on the limit: the
    same shapes get other tiles on another device), every launch fits, and the
    multistage tiles step down as the limit asks: 128 x 128 -> 128 x 64 on
    sm_86, the 64 x 64 plane GEMM (1x1) and step 5 (im2col) at 48 KiB."""
    monkeypatch.setattr(gconv, "TC_IM2COL_MULTISTAGE", multistage_im2col)
    for limit in (227 * KIB, 99 * KIB, 48 * KIB, 163 * KIB):
        ex = EmuExecutor(check_order=False, max_shared=limit)
        fits = min(limit, _runtime.MAX_SHARED_PER_BLOCK)
        plans = {name: _launch(ex, route, rng, plan_only=True) for name, route in ROUTES.items()}
        for precision, dtype in (("fp32", np.float32), ("fp32", np.float64), ("bf16", np.float32)):
            plans[f"shortcut {precision} {dtype.__name__}"] = _shortcut_plan(
                ex, rng, precision, dtype
            )
        for name, plan in plans.items():
            assert plan.shared_mem <= fits, (limit, name, plan.name, plan.shared_mem)
        # the 1x1 GEMM's tiles: the largest that fits
        large = {"1x1 tc large": "tf32", "1x1 tc large bf16": "bf16"}
        for name, precision in large.items():
            if limit >= 146 * KIB:
                expected = (tc.GEMM_1X1_FILE, tc.gemm_1x1_name(precision, tc.GEMM_1X1_TILE_LARGE))
            elif limit >= 86 * KIB:
                expected = (tc.GEMM_1X1_FILE, tc.gemm_1x1_name(precision, tc.GEMM_1X1_TILE))
            else:  # no multistage tile fits: step 5's 64 x 64 plane GEMM
                tile_name = gconv._tc_gemm_name(precision, tc.TILE_WIDE, gconv.LOAD_PLANE)
                expected = (gconv.TC_GEMM_FILE, tile_name)
            assert (plans[name].file, plans[name].name) == expected, (limit, name)
        for name in ("1x1 tc 128x64", "1x1 tc 64x128"):
            multistage = plans[name].file == tc.GEMM_1X1_FILE
            assert multistage == (limit > 48 * KIB), (limit, name, plans[name].name)
        for name in ("3x3 step5 wide", "3x3 step5 narrow"):
            multistage = plans[name].file == tc.IM2COL_FILE
            assert multistage == (multistage_im2col and limit > 48 * KIB), (limit, name)
            if not multistage:
                assert plans[name].file == tc.FILE


def test_tensor_core_tiles_step_down_to_the_largest_that_fits():
    """The rules' fallbacks, tile by tile (bytes of shared memory: the tiles'
    own arithmetic, tests/test_gpu_tc_*_emulated.py)."""
    for precision in tc.PRECISIONS:
        large = tc.gemm_1x1_shared_bytes(precision, tc.GEMM_1X1_TILE_LARGE)
        mid = tc.gemm_1x1_shared_bytes(precision, tc.GEMM_1X1_TILE)
        few = tc.gemm_1x1_shared_bytes(precision, tc.GEMM_1X1_TILE_FEW_CHANNELS)
        assert few < mid < large
        # c_out_g 70, 81 pixels, K 516: the rule's 128 x 128 tile
        expected = [(None, tc.GEMM_1X1_TILE_LARGE), (large, tc.GEMM_1X1_TILE_LARGE),
                    (large - 1, tc.GEMM_1X1_TILE), (mid, tc.GEMM_1X1_TILE),
                    (mid - 1, tc.GEMM_1X1_TILE_FEW_CHANNELS),
                    (few, tc.GEMM_1X1_TILE_FEW_CHANNELS), (few - 1, None)]  # fmt: skip
        for limit, tile in expected:
            assert tc.gemm_1x1_tile(70, 81, 516, precision=precision, max_shared=limit) == tile
        # a rule that picks 64 x 128 never steps up to a larger tile
        assert tc.gemm_1x1_tile(40, 81, 516, precision=precision, max_shared=few - 1) is None
        sizes = [tc.im2col_shared_bytes(precision, t) for t in tc.IM2COL_TILES]
        assert sizes == sorted(sizes, reverse=True)
        for i, tile in enumerate(tc.IM2COL_TILES):
            assert tc.im2col_tile(100, precision=precision, max_shared=sizes[i]) == tile
        assert tc.im2col_tile(100, precision=precision, max_shared=sizes[-1] - 1) is None
        narrow = tc.IM2COL_TILE_NARROW
        assert tc.im2col_tile(20, precision=precision, max_shared=sizes[0]) == narrow
        wide, narrow = (tc.shared_bytes(precision, t) for t in (tc.TILE_WIDE, tc.TILE_NARROW))
        assert tc.tile_for(40, precision=precision, max_shared=wide) == tc.TILE_WIDE
        assert tc.tile_for(40, precision=precision, max_shared=wide - 1) == tc.TILE_NARROW
        assert tc.tile_for(40, precision=precision, max_shared=narrow - 1) is None
    with pytest.raises(ValueError, match="precision"):
        tc.gemm_1x1_tile(70, 81, 516, max_shared=99 * KIB)


@pytest.mark.parametrize(
    "precision, limit", [("tf32", 99 * KIB), ("bf16", 99 * KIB), ("tf32", 48 * KIB)]
)
def test_the_fallback_tiles_match_the_reference(rng, precision, limit):
    """The 128 x 128 tile's conv (K = 516) on sm_86 / sm_89 (128 x 64) and at
    48 KiB (the 64 x 64 plane GEMM), under the emulator, against float64."""
    ex = EmuExecutor(check_order=False, max_shared=limit)
    out, x, weight, bias, args, residual, activation = canary_launch(
        ex, gconv.GEMM_1X1, rng, 1, 516, 9, 9, 70, (1, 1), (1, 1), (0, 0), (1, 1), 1,
        (True, True, "relu"), 0, 0, precision,
    )  # fmt: skip
    tile = tc.GEMM_1X1_TILE if limit == 99 * KIB else None
    file = tc.GEMM_1X1_FILE if tile else gconv.TC_GEMM_FILE
    assert [f for f, _ in ex.launches] == [file]
    if tile:
        assert ex.launches[0][1] == tc.gemm_1x1_name(precision, tile)
    check_conv(out, x, weight, bias, args, precision, residual, activation)


def test_multistage_im2col_falls_back_to_step5_at_48_kib(rng, monkeypatch):
    monkeypatch.setattr(gconv, "TC_IM2COL_MULTISTAGE", True)
    ex = EmuExecutor(check_order=False, max_shared=48 * KIB)
    out, x, weight, bias, args, residual, activation = canary_launch(
        ex, "5_tensor_core", rng, 2, 8, 7, 9, 26, (3, 3), (1, 1), (1, 1), (1, 1), 1,
        (True, False, "relu"), 1, 2, "bf16",
    )  # fmt: skip
    assert ex.launches == [(tc.FILE, tc.name("bf16", tc.TILE_NARROW))]
    check_conv(out, x, weight, bias, args, "bf16", residual, activation)


def test_step5_narrow_fallback_matches_the_reference(rng):
    """Below the 64 x 64 tile's 36.75 KiB (tf32) the 32 x 64 one runs the
    conv's 40 channels in two channel tiles."""
    ex = EmuExecutor(check_order=False, max_shared=32 * KIB)
    out, x, weight, bias, args, residual, activation = canary_launch(
        ex, "5_tensor_core", rng, 1, 8, 7, 9, 40, (3, 3), (1, 1), (1, 1), (1, 1), 1,
        (True, True, None), 0, 0, "tf32",
    )  # fmt: skip
    assert ex.launches == [(tc.FILE, tc.name("tf32", tc.TILE_NARROW))]
    check_conv(out, x, weight, bias, args, "tf32", residual, activation)


@pytest.mark.parametrize(
    "route, limit",
    [("3x3 step5 narrow", 16 * KIB), ("1x1 tc split", 16 * KIB), ("smem tiles", 4 * KIB),
     ("3x3 fp64 narrow", 8 * KIB), ("1x1 fp64 large", 8 * KIB)],
)  # fmt: skip
def test_a_device_no_tile_fits_is_a_value_error_before_any_launch(rng, route, limit):
    ex = EmuExecutor(check_order=False, max_shared=limit)
    with pytest.raises(ValueError, match=rf"shared memory.* at most {limit} bytes per block"):
        _launch(ex, ROUTES[route], rng)
    assert ex.launches == []
    with pytest.raises(ValueError, match="shared memory"):
        _launch(ex, ROUTES[route], rng, plan_only=True)
