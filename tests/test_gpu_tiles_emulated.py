"""The float32 tile / split rule (r2n.gpu.conv.fp32_tile_rule) and the forcing
of a tile and a split (``launch_conv(..., tile=, k_splits=)``) that
benchmarks/gpu_tiles.py times, under the CPU emulator (tests/cuda_emu).

The rule's answers for Res2Net-50 shapes are pinned, so that a change of its
numbers (after a GPU measurement) is deliberate; a measured table entry
decides its shape and nothing else; every forced tile and split computes the
reference's conv, and impossible ones are clear errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_emu import EmuExecutor
from gpu_cases import conv_inputs
from helpers import assert_close
from test_gpu_tensor_core_emulated import BLOCK_CASES, _block

from r2n import _checks
from r2n import reference as ref
from r2n.gpu import conv as gconv
from r2n.gpu import res2net as gres

IM2COL, PLANE, SHORTCUT = gconv.KIND_IM2COL, gconv.KIND_PLANE, gconv.KIND_PLANE_SHORTCUT


@pytest.fixture(scope="module")
def ex():
    return EmuExecutor(check_order=False)


def _f64(a):
    return None if a is None else np.asarray(a, np.float64)


def _launch(ex, variant, x, weight, bias, args, **kwargs):
    out = ex.empty(args["out_shape"], x.dtype)
    geometry = {k: args[k] for k in ("stride", "padding", "dilation", "groups")}
    gconv.launch_conv(ex, variant, x, weight, bias, out, **geometry, **kwargs)
    return out


# (kind, c_out_g, K, pixels, N * groups, SMs) -> (tile, k_splits): the rule as
# the H200 run of 2026-12-04 set it (benchmarks/results/2026-12-04-gpu-tiles-h200.*:
# the half tile on planes of >= 128 pixels with >= 264 of its blocks, never the
# large one in float32), 132 SMs; the measured best beside each
PINNED = {
    (PLANE, 104, 256, 3136, 32, 132): ("half", 1),  # layer1 conv1, N=32 (best)
    (PLANE, 256, 104, 3136, 32, 132): ("half", 1),  # layer1 conv3, N=32 (wide 1.01x, 4p 0.82x)
    (PLANE, 104, 256, 3136, 1, 132): ("wide", 2),  # layer1 conv1, N=1: 25 x 2 half blocks
    (PLANE, 416, 1024, 196, 1, 132): ("wide", 9),  # layer3 conv1, N=1: 28 blocks, split
    (PLANE, 416, 1024, 196, 32, 132): ("half", 1),  # layer3 conv1, N=32 (best)
    (PLANE, 832, 2048, 49, 32, 132): ("wide", 1),  # layer4 conv1, N=32: 7x7, half's 128 wasted
    (PLANE, 832, 2048, 49, 256, 132): ("wide", 1),  # (was large: 2.2x slower)
    (SHORTCUT, 1024, 928, 196, 32, 132): ("wide", 1),  # layer3.0 conv3 + shortcut (best)
    (IM2COL, 26, 234, 3136, 32, 132): ("narrow", 1),  # layer1 chain, N=32
    (IM2COL, 26, 234, 3136, 1, 132): ("narrow", 3),  # split since SPLIT_K_MIN_K = 128
    (IM2COL, 104, 936, 196, 1, 132): ("wide", 14),  # layer3 chain, N=1
    (IM2COL, 208, 1872, 49, 1, 132): ("wide", 16),  # layer4 chain, N=1
    (IM2COL, 208, 1872, 49, 32, 132): ("wide", 2),
    (IM2COL, 64, 147, 12544, 1, 132): ("wide", 1),  # the stem
    (IM2COL, 104, 936, 196, 1, None): ("wide", 1),  # no SM count: never splits
}


@pytest.mark.parametrize("shape", PINNED, ids=str)
def test_the_rule_pins_todays_choices(shape):
    assert gconv.fp32_tile_rule(*shape) == PINNED[shape]


def test_float64_and_forced_tiles_follow_the_thresholds():
    # float64 takes its large 128 x 64 tile, float32 its half 64 x 128 one, from
    # 264 blocks of it on (here 49 x 1 and 25 x 2 a image)
    assert gconv.fp32_tile_rule(PLANE, 104, 256, 3136, 6, 132, "double") == ("large", 1)
    assert gconv.fp32_tile_rule(PLANE, 104, 256, 3136, 6, 132, "float") == ("half", 1)
    assert gconv.fp32_tile_rule(PLANE, 104, 256, 3136, 5, 132, "double") == ("wide", 1)
    assert gconv.fp32_tile_rule(PLANE, 104, 256, 3136, 5, 132, "float") == ("wide", 1)
    # float32: never the half tile below 128 pixels, never a bigger one with a shortcut
    assert gconv.fp32_tile_rule(PLANE, 832, 2048, 49, 256, 132) == ("wide", 1)
    assert gconv.fp32_tile_rule(SHORTCUT, 256, 168, 3136, 256, 132) == ("wide", 1)
    assert gconv.fp32_tile_rule(SHORTCUT, 256, 168, 3136, 256, 132, "double") == ("large", 1)
    # a forced tile gets the rule's split for its own grid
    assert gconv.fp32_tile_rule(IM2COL, 104, 936, 196, 1, 132, tile="narrow") == ("narrow", 14)
    assert gconv.fp32_tile_rule(IM2COL, 26, 936, 196, 1, 132, tile="wide") == ("wide", 14)
    assert gconv.fp32_tile_rule(IM2COL, 104, 936, 3136, 1, 132) == ("wide", 2)  # 98 blocks
    assert gconv.fp32_tile_rule(IM2COL, 104, 936, 3136, 1, 132, tile="narrow") == ("narrow", 1)
    # the large tile does not split a plane GEMM: forced, it runs unsplit
    assert gconv.fp32_tile_rule(PLANE, 416, 1024, 196, 1, 132, tile="large") == ("large", 1)
    assert gconv.fp32_tile_rule(PLANE, 104, 256, 3136, 32, 132, tile="wide") == ("wide", 1)


def test_a_measured_entry_decides_its_shape_only(monkeypatch):
    key = (PLANE, 104, 256, 3136, 32, 132)
    monkeypatch.setattr(gconv, "FP32_MEASURED", gconv.MeasuredTiles({key: ("wide", 1)}))
    assert gconv.fp32_tile_rule(*key) == ("wide", 1)
    assert gconv.fp32_tile_rule(PLANE, 104, 256, 3136, 32, 114) == ("half", 1)  # other GPU
    assert gconv.fp32_tile_rule(PLANE, 104, 256, 3136, 32, 132, "double") == ("large", 1)
    assert gconv.fp32_tile_rule(PLANE, 256, 104, 3136, 32, 132) == ("half", 1)


def test_measured_tables_are_checked_and_read_only():
    with pytest.raises(ValueError, match="bad key"):
        gconv.MeasuredTiles({("gemm", 1, 2, 3, 4, 5): ("wide", 1)})
    with pytest.raises(ValueError, match="bad choice"):
        gconv.MeasuredTiles({(PLANE, 1, 2, 3, 4, 5): ("huge", 1)})
    with pytest.raises(ValueError, match="bad choice"):
        gconv.MeasuredTiles({(PLANE, 1, 2, 3, 4, 5): ("wide", 0)})
    with pytest.raises(ValueError, match="have no large tile that splits K"):
        gconv.MeasuredTiles({(PLANE, 1, 2, 3, 4, 5): ("large", 2)})
    with pytest.raises(ValueError, match="im2col GEMMs have no large tile"):
        gconv.MeasuredTiles({(IM2COL, 1, 2, 3, 4, 5): ("large", 1)})
    table = gconv.MeasuredTiles({(SHORTCUT, 1, 2, 3, 4, 5): ("large", 2)})
    with pytest.raises(TypeError):
        table[(PLANE, 1, 2, 3, 4, 5)] = ("wide", 1)
    # identity, not contents: a new table is a new rule (launch plans are keyed on it)
    assert table != gconv.MeasuredTiles(dict(table)) and hash(table) == hash(table)


# n, c_in, h, w, c_out, (kh, kw), stride, padding, dilation, groups
CONV_3X3 = (2, 20, 13, 11, 70, (3, 3), (1, 1), (1, 1), (1, 1), 1)  # 70 > 32: wide by rule
CONV_1X1 = (2, 40, 13, 11, 150, (1, 1), (1, 1), (0, 0), (1, 1), 1)  # 2 large row tiles


def _name(variant, ctype, tile, k_splits):
    if k_splits > 1:  # conv_gemm.cu's split GEMM
        load = gconv.LOAD_IM2COL if variant == "4_pipelined" else gconv.LOAD_PLANE
        return gconv.GEMM_FILE, gconv._gemm_name(ctype, gconv.TILES[tile][ctype], load)
    file, kernel = gconv.KERNELS[variant]
    return file, gconv._name(kernel, ctype, gconv.TILES[tile][ctype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "variant, case, tile, k_splits",
    [
        ("4_pipelined", CONV_3X3, "narrow", 1),
        ("4_pipelined", CONV_3X3, "narrow", 3),
        ("4_pipelined", CONV_3X3, "wide", 2),
        ("gemm_1x1", CONV_1X1, "large", 1),
        ("gemm_1x1", CONV_1X1, "half", 1),
        ("gemm_1x1", CONV_1X1, "wide", 3),
        ("4_pipelined", CONV_1X1, "narrow", 1),
    ],
)
def test_forced_tiles_and_splits_match_reference(ex, rng, dtype, variant, case, tile, k_splits):
    x, weight, bias, args = conv_inputs(rng, case, dtype)
    if dtype == np.float64 and (tile == "half" or tile == "narrow" and k_splits > 1):
        # float64 has no half tile, and splits on the wide one only
        error = "float32's only" if tile == "half" else "has no double kernel that splits K"
        with pytest.raises(ValueError, match=error):
            _launch(ex, variant, x, weight, bias, args, tile=tile, k_splits=k_splits)
        return
    expected = ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args)
    ex.launches.clear()
    out = _launch(ex, variant, x, weight, bias, args, tile=tile, k_splits=k_splits)
    ctype = gconv._runtime.dtype_name(dtype)
    assert ex.launches == [_name(variant, ctype, tile, k_splits)]
    assert_close(out, expected)


def test_the_rule_thresholds_reach_the_launch(ex, rng, monkeypatch):
    """The half tile's thresholds are part of the plan's key too: lowering them
    switches a cached 1x1 launch (143 pixels, 3 x 2 x 2 half blocks) to it."""
    x, weight, bias, args = conv_inputs(rng, CONV_1X1, np.float32)
    expected = ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args)
    ex.launches.clear()
    _launch(ex, "gemm_1x1", x, weight, bias, args)
    monkeypatch.setattr(gconv, "_LARGE_TILE_MIN_BLOCKS", 1)
    monkeypatch.setattr(gconv, "_HALF_TILE_MIN_PIXELS", 10**6)
    _launch(ex, "gemm_1x1", x, weight, bias, args)
    monkeypatch.setattr(gconv, "_HALF_TILE_MIN_PIXELS", 128)
    out = _launch(ex, "gemm_1x1", x, weight, bias, args)
    tiles = ("wide", "wide", "half")
    assert ex.launches == [_name("gemm_1x1", "float", tile, 1) for tile in tiles]
    assert_close(out, expected)


def test_a_measured_entry_reaches_the_launch(ex, rng, monkeypatch):
    """The table is part of the plan's key: a launch after the table changes
    follows it, the plan made before is not reused."""
    x, weight, bias, args = conv_inputs(rng, CONV_3X3, np.float32)
    expected = ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args)
    ex.launches.clear()
    _launch(ex, "4_pipelined", x, weight, bias, args)
    key = (IM2COL, 70, 180, 143, 2, None)  # the emulator has no SM count
    monkeypatch.setattr(gconv, "FP32_MEASURED", gconv.MeasuredTiles({key: ("narrow", 2)}))
    out = _launch(ex, "4_pipelined", x, weight, bias, args)
    assert ex.launches == [
        _name("4_pipelined", "float", "wide", 1),
        _name("4_pipelined", "float", "narrow", 2),
    ]
    assert_close(out, expected)


def test_forced_shortcut_tile(ex, rng):
    """conv3 + shortcut forced onto the large tile and split (what the bottleneck
    launches, through launch_conv)."""
    c_mid, c_in, c_out, hw = 12, 10, 140, (9, 7)
    x_sc = rng.standard_normal((2, c_in, *hw)).astype(np.float32)
    t2 = rng.standard_normal((2, c_mid, 5, 4)).astype(np.float32)
    w = rng.standard_normal((c_out, c_mid + c_in, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    geometry = dict(padding=(0, 0), dilation=(1, 1), groups=1, out_shape=(2, c_out, 5, 4))
    main = ref.conv2d(_f64(t2), _f64(w[:, :c_mid]), _f64(bias), stride=(1, 1), **geometry)
    expected = main + ref.conv2d(_f64(x_sc), _f64(w[:, c_mid:]), None, stride=(2, 2), **geometry)
    for tile, k_splits in (("large", 1), ("large", 2), ("wide", 3)):
        out = ex.empty((2, c_out, 5, 4), np.float32)
        ex.launches.clear()
        gconv.launch_conv(ex, gconv.GEMM_1X1, t2, w, bias, out, stride=(1, 1), padding=(0, 0),
                          dilation=(1, 1), groups=1, shortcut=(x_sc, (2, 2), False), tile=tile,
                          k_splits=k_splits)  # fmt: skip
        tile_args = gconv.TILES[tile]["float"]
        name = gconv._gemm_name("float", tile_args, gconv.LOAD_PLANE_SHORTCUT)
        assert ex.launches == [(gconv.GEMM_FILE, name)]
        assert_close(out, expected)


def test_impossible_tiles_are_clear_errors(ex, rng):
    x, weight, bias, args = conv_inputs(rng, CONV_3X3, np.float32)
    with pytest.raises(ValueError, match="variant 4_pipelined has tiles"):
        _launch(ex, "4_pipelined", x, weight, bias, args, tile="large")
    with pytest.raises(ValueError, match="tile= forces one of"):
        _launch(ex, "4_pipelined", x, weight, bias, args, tile="huge")
    with pytest.raises(ValueError, match="tile= forces one of"):
        _launch(ex, "1_naive", x, weight, bias, args, tile="wide")
    with pytest.raises(ValueError, match="tile= forces one of"):
        _launch(ex, "5_tensor_core", x, weight, bias, args, tile="wide", precision="tf32")
    x, weight, bias, args = conv_inputs(rng, CONV_1X1, np.float32)
    with pytest.raises(ValueError, match="large tile has no float kernel that splits K"):
        _launch(ex, "gemm_1x1", x, weight, bias, args, tile="large", k_splits=2)
    with pytest.raises(ValueError, match="variant gemm_1x1 has tiles"):
        _launch(ex, "gemm_1x1", x, weight, bias, args, tile="narrow")
    with pytest.raises(ValueError, match="half tile has no float kernel that splits K"):
        _launch(ex, "gemm_1x1", x, weight, bias, args, tile="half", k_splits=2)
    x, weight, bias = (a.astype(np.float64) for a in (x, weight, bias))
    with pytest.raises(ValueError, match="the half tile is float32's only"):
        _launch(ex, "gemm_1x1", x, weight, bias, args, tile="half")


def test_prepared_block_follows_the_table(ex, rng, monkeypatch):
    """A bottleneck's launches go through the same rule: a measured entry for
    its conv1 moves conv1 (only) to the entry's tile."""
    case = BLOCK_CASES[1]  # conv1 20 -> 20 and conv3 + shortcut: two kinds
    c_in, c_out, width, scale, stype, stride, groups, kind = case
    block = _block(rng, case).map(lambda a: a.astype(np.float32))
    x = rng.standard_normal((1, c_in, 9, 7)).astype(np.float32)
    args = _checks.bottle2neck_args("bottle2neck", x, block, scale, stype, stride, groups)
    expected = ref.bottle2neck(_f64(x), block.map(_f64), **args)
    ex.launches.clear()
    gres.bottle2neck(x, block, executor=ex, **args)
    before = list(ex.launches)
    key = (PLANE, width * scale, c_in, 63, 1, None)
    monkeypatch.setattr(gconv, "FP32_MEASURED", gconv.MeasuredTiles({key: ("wide", 2)}))
    ex.launches.clear()
    out = gres.bottle2neck(x, block, executor=ex, **args)
    assert ex.launches[0] == _name(gconv.GEMM_1X1, "float", "wide", 2) != before[0]
    assert ex.launches[1:] == before[1:]
    assert_close(out, expected)
