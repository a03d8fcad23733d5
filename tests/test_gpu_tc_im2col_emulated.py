"""The multistage tensor-core implicit GEMM (conv_im2col_tensor_core.cu) under the emulator.

It runs only when selected (r2n.gpu.conv.TC_IM2COL_MULTISTAGE; the tests
switch it on with monkeypatch). Small odd shapes that reach every path of the
kernel: 7x9 images, batch 1 and 2, 3 groups of 5 channels (K = 45: 4-byte
weight copies), K a multiple of 4 (16-byte weight copies) with a tail slice,
more slices than the ring has stages (the im2col tables re-decoded in the
loop), padding 1, stride 1 and 2, a rectangular dilated kernel, a 7x7 stem,
each of the three block tiles, and the fused epilogue (bias, residual, ReLU,
LeakyReLU) writing a channel slice of a NaN-filled output from a channel
slice of the input; then the Res2Net chain with the switch on (a "normal"
chain, its later convs fed by a sum pass, and a "stage" chain's grouped
launch, with their side jobs). Each conv gets the three checks of
tests/test_gpu_tensor_core_emulated.py (the format's norm-wise bound, the
element-wise bound, and the float64 product of operands rounded as the
kernel rounds them, to 1e-5); the channels around the slice must still be
NaN, and the slice must have no NaN left (every element written once).
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_emu import EmuExecutor
from gpu_cases import chain_inputs
from helpers import rel_err
from test_gpu_tensor_core_emulated import canary_launch, check_conv

from r2n import _checks
from r2n import reference as ref
from r2n.gpu import _runtime
from r2n.gpu import conv as gconv
from r2n.gpu import conv_tensor_core as tc
from r2n.gpu import res2net as gres


@pytest.fixture(scope="module")
def ex():
    return EmuExecutor()


@pytest.fixture
def multistage(monkeypatch):
    """The im2col convs on the multistage kernel for this test (plans are keyed on it)."""
    monkeypatch.setattr(gconv, "TC_IM2COL_MULTISTAGE", True)


# n, c_in, h, w, c_out, kernel, stride, padding, dilation, groups,
# epilogue (bias, residual, activation), x_c0, out_c0
CASES = [
    # 3 groups of 5 -> 5: K = 45 (4-byte weight copies), the 32 x 128 tile
    (1, 15, 7, 9, 15, (3, 3), (1, 1), (1, 1), (1, 1), 3, (True, True, "relu"), 2, 1),
    (1, 15, 7, 9, 15, (3, 3), (2, 2), (1, 1), (1, 1), 3, (True, False, "leaky_relu"), 0, 0),
    # K = 72: 16-byte weight copies, a tail slice; 64 x 128 (40 channels)
    (2, 8, 7, 9, 40, (3, 3), (1, 1), (1, 1), (1, 1), 1, (False, True, "leaky_relu"), 1, 2),
    # 128 x 64: 70 channels in one channel tile, K = 180 (6 slices: the ring
    # and its tables wrap around twice), 143 pixels (3 pixel tiles)
    (1, 20, 13, 11, 70, (3, 3), (1, 1), (1, 1), (1, 1), 1, (True, True, "relu"), 0, 0),
    # rectangular kernel, unequal strides, dilation
    (1, 5, 9, 7, 11, (3, 2), (1, 2), (2, 1), (2, 3), 1, (True, False, None), 0, 0),
    # a stem: 7x7, stride 2, padding 3, K = 147
    (1, 3, 13, 11, 33, (7, 7), (2, 2), (3, 3), (1, 1), 1, (True, False, "relu"), 0, 0),
]


def _case_id(case):
    n, c_in, h, w, c_out, k, s, p, d, groups, (bias, residual, act), x_c0, out_c0 = case
    epilogue = ("b" if bias else "") + ("r" if residual else "") + (act or "")
    return f"n{n}-{c_in}x{h}x{w}-{c_out}-k{k[0]}x{k[1]}-s{s[0]}{s[1]}-g{groups}-{epilogue}"


def _run(ex, rng, case, precision, **launch):
    """Step 5's variant on the case (tests/test_gpu_tensor_core_emulated.py's
    canary_launch: the multistage kernel where the switch sends it)."""
    return canary_launch(ex, "5_tensor_core", rng, *case, precision, **launch)


@pytest.mark.parametrize("precision", tc.PRECISIONS)
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_multistage_im2col_matches_reference(ex, multistage, monkeypatch, case, precision):
    ex.launches.clear()
    out, x, weight, bias, args, residual, activation = _run(ex, _rng(), case, precision)
    tile = tc.im2col_tile(case[4] // case[9])
    assert ex.launches == [(tc.IM2COL_FILE, tc.im2col_name(precision, tile))]
    check_conv(out, x, weight, bias, args, precision, residual, activation)
    # step 5 on the same inputs: the same rounded operands summed in the same
    # k order (32-deep slices of mma.sync) by the emulator, so the same values
    monkeypatch.setattr(gconv, "TC_IM2COL_MULTISTAGE", False)
    ex.launches.clear()
    on_step_5 = _run(ex, _rng(), case, precision)[0]
    assert ex.launches[0][0] == tc.FILE
    np.testing.assert_array_equal(out, on_step_5)


def _rng():
    return np.random.default_rng(20261204)


def test_every_tile_is_reached_by_the_cases():
    assert {tc.im2col_tile(c[4] // c[9]) for c in CASES} == set(tc.IM2COL_TILES)


def test_multistage_im2col_loops_over_images_and_groups_past_grid_z(
    ex, rng, multistage, monkeypatch
):
    # 2 images x 3 groups in a grid of z = 2: each block runs 3 (image, group)
    # pairs, refilling its ring and tables each time
    monkeypatch.setattr(_runtime, "MAX_GRID_DIM", (2**31 - 1, 65535, 2))
    case = (2, 15, 7, 9, 27, (3, 3), (1, 1), (1, 1), (1, 1), 3, (True, True, "relu"), 0, 0)
    ex.launches.clear()
    out, x, weight, bias, args, residual, activation = _run(ex, rng, case, "bf16")
    assert ex.launches[0][0] == tc.IM2COL_FILE
    check_conv(out, x, weight, bias, args, "bf16", residual, activation)


# stype, stride, scale, groups, width, batch, H, W
CHAIN_CASES = [
    ("normal", 1, 4, 3, 27, 1, 7, 9),  # 3 groups of 9: the first conv (side copy)
    ("stage", 2, 4, 1, 26, 2, 7, 9),  # one grouped launch, the pooled side job
]


def _chain(ex, rng, case, precision, **call):
    """Run the chain case; return (out, float64 reference, args)."""
    x, weights, biases, args = chain_inputs(rng, case, np.float32)
    for a in (x, *weights, *biases):
        a.flags.writeable = False
    expected = ref.res2net_chain(
        x.astype(np.float64),
        [w.astype(np.float64) for w in weights],
        [b.astype(np.float64) for b in biases],
        **args,
    )
    geometry = {k: args[k] for k in ("scale", "stype", "stride", "groups", "width")}
    chain = gres.PreparedChain(weights, biases, dtype=np.float32, executor=ex,
                               precision=precision, **geometry)  # fmt: skip
    ex.launches.clear()
    out = chain(x, **call)
    return out, expected, args


@pytest.mark.parametrize("precision", tc.PRECISIONS)
@pytest.mark.parametrize("case", CHAIN_CASES, ids=lambda c: "-".join(map(str, c)))
def test_chain_runs_every_conv_on_the_multistage_kernel(
    ex, multistage, monkeypatch, case, precision
):
    # a "normal" chain's convs i > 0 read x_i + y_{i-1} summed by a pass of its own
    out, expected, args = _chain(ex, _rng(), case, precision)
    nums = max(args["scale"] - 1, 1)
    stage = args["stype"] == "stage"
    assert [f for f, _ in ex.launches] == [tc.IM2COL_FILE] * (1 if stage else nums)
    _check_chain(out, expected, args, precision)
    # step 5 on the same inputs (its add on load): the same rounded operands,
    # summed in the same k order by the emulator's mma.sync, so the same bits
    monkeypatch.setattr(gconv, "TC_IM2COL_MULTISTAGE", False)
    on_step_5, _, _ = _chain(ex, _rng(), case, precision)
    assert [f for f, _ in ex.launches] == [tc.FILE] * (1 if stage else nums)
    np.testing.assert_array_equal(out, on_step_5)


def test_a_split_chain_keeps_its_add_on_load(ex, rng, multistage):
    # split launches stay on step 5's GEMM, which sums on load: no sum pass
    out, expected, args = _chain(ex, rng, CHAIN_CASES[0], "tf32", k_splits=2)
    assert [f for f, _ in ex.launches] == [gconv.TC_GEMM_FILE] * 3
    _check_chain(out, expected, args, "tf32")


def _check_chain(out, expected, args, precision):
    nums = max(args["scale"] - 1, 1)
    layers = nums if args["stype"] == "normal" else 1
    assert rel_err(out, expected) <= tc.tolerance(precision, layers)
    last = slice(nums * args["width"], None)  # the side job's chunk, float32
    assert rel_err(out[:, last], expected[:, last]) <= 1e-6


def _file_of(emu, rng, case, **launch):
    emu.launches.clear()
    _run(emu, rng, case, "tf32", **launch)
    return emu.launches[0][0]


def test_routing_by_switch_add_and_split(rng, monkeypatch):
    """Step 5 unless selected; selected, the multistage kernel for launches
    with no add on load and no split; the switch is part of the plan's key."""
    case = CASES[0]
    emu = EmuExecutor(check_order=False)
    monkeypatch.setattr(gconv, "TC_IM2COL_MULTISTAGE", False)
    assert _file_of(emu, rng, case) == tc.FILE
    monkeypatch.setattr(gconv, "TC_IM2COL_MULTISTAGE", True)
    assert _file_of(emu, rng, case) == tc.IM2COL_FILE  # re-planned
    assert _file_of(emu, rng, case, k_splits=2) == gconv.TC_GEMM_FILE
    # an add on load (the "normal" chain's later convs) stays on step 5, which sums it
    x = rng.standard_normal((1, 15, 7, 9)).astype(np.float32)
    a = rng.standard_normal((1, 15, 7, 9)).astype(np.float32)
    weight = rng.standard_normal((15, 5, 3, 3)).astype(np.float32)
    out = np.full((1, 15, 7, 9), np.nan, np.float32)
    emu.launches.clear()
    gconv.launch_conv(emu, "5_tensor_core", x, weight, None, out, stride=(1, 1),
                      padding=(1, 1), dilation=(1, 1), groups=3, add=a,
                      precision="tf32")  # fmt: skip
    assert emu.launches[0][0] == tc.FILE
    args = _checks.conv2d_args("conv2d", x + a, weight, None, 1, 1, 1, 3)
    check_conv(out, x + a, weight, None, args, "tf32")


@pytest.mark.parametrize("dilation, file", [(2**15 - 1, tc.IM2COL_FILE), (2**15, tc.FILE)])
def test_taps_that_do_not_fit_16_bits_stay_on_step_5(rng, multistage, dilation, file):
    # the kernel's table holds dy, dx in 16 bits each (im2col_decode_rows)
    emu = EmuExecutor(check_order=False)
    x = rng.standard_normal((1, 8, 1, 2**15 + 3)).astype(np.float32)
    weight = rng.standard_normal((8, 8, 1, 2)).astype(np.float32)
    args = _checks.conv2d_args("conv2d", x, weight, None, 1, 0, (1, dilation), 1)
    out = np.full(args["out_shape"], np.nan, np.float32)
    emu.launches.clear()
    gconv.launch_conv(emu, "5_tensor_core", x, weight, None, out, stride=(1, 1),
                      padding=(0, 0), dilation=(1, dilation), groups=1,
                      precision="tf32")  # fmt: skip
    assert emu.launches[0][0] == file
    check_conv(out, x, weight, None, args, "tf32")


def test_im2col_fits_bounds_the_table_entries():
    assert tc.im2col_fits(104, 14, 14, 3, 3, 1, 1)
    assert not tc.im2col_fits(8, 64, 64, 3, 3, 2**14, 1)  # dy = 2^15
    # rows up to a K slice (32 channels of a 1x1) past the last: 34 planes of 2^30
    assert not tc.im2col_fits(1, 2**15, 2**15, 1, 1, 1, 1)
    assert tc.im2col_fits(1, 2**10, 2**10, 1, 1, 1, 1)


def test_switch_from_the_environment():
    assert gconv._tc_im2col_from_env({}) is False
    assert gconv._tc_im2col_from_env({"R2N_TC_IM2COL": ""}) is False
    assert gconv._tc_im2col_from_env({"R2N_TC_IM2COL": "step5"}) is False
    assert gconv._tc_im2col_from_env({"R2N_TC_IM2COL": "multistage"}) is True
    with pytest.raises(ValueError, match="R2N_TC_IM2COL must be one of.*got 'yes'"):
        gconv._tc_im2col_from_env({"R2N_TC_IM2COL": "yes"})


def test_bad_input_still_raises_when_selected(ex, rng, multistage):
    x = rng.standard_normal((1, 15, 7, 9)).astype(np.float32)
    weight = rng.standard_normal((15, 5, 3, 3)).astype(np.float32)
    wrong = np.zeros((1, 15, 7, 8), np.float32)
    with pytest.raises(ValueError, match=r"H_out, W_out = \(7, 8\), expected \(7, 9\)"):
        gconv.launch_conv(ex, "5_tensor_core", x, weight, None, wrong, stride=(1, 1),
                          padding=(1, 1), dilation=(1, 1), groups=3,
                          precision="tf32")  # fmt: skip
    with pytest.raises(ValueError, match="float64 has no tensor-core path"):
        gconv.launch_conv(ex, "5_tensor_core", x.astype(np.float64),
                          weight.astype(np.float64), None, wrong.astype(np.float64),
                          stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=3,
                          precision="tf32")  # fmt: skip


def test_shared_memory_of_the_tiles():
    # 128 x 64 x 32 in 3 stages of (128 x 36 + 32 x 72) floats, 3 tables of 32 int2
    assert tc.im2col_shared_bytes("tf32", tc.IM2COL_TILE) == 3 * (128 * 36 + 32 * 72 + 64) * 4
    for tile in tc.IM2COL_TILES:
        assert tc.gemm_1x1_threads(tile) == 128
        for precision in tc.PRECISIONS:
            # two blocks per SM (the launch bounds) in an H100's / H200's 228 KB,
            # 1 KB of it reserved per block (an A100's 164 KB holds one of the
            # 128-row tiles, as for the 1x1 kernel's)
            assert 2 * (tc.im2col_shared_bytes(precision, tile) + 1024) <= 228 * 1024
