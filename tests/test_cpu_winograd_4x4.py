"""Winograd F(4x4, 3x3) on the CPU: conv2d step 6_winograd_4x4.

The step runs against the float64 reference on odd shapes (images whose
size is not a multiple of 4, 1x1 and 2x3 images, 3 groups of 5 channels,
partial channel blocks, padding 0 and 2), with its epilogue (bias,
residual, ReLU / leaky ReLU) and the "add" source of the Res2Net chain;
its float32 error on realistic magnitudes (ReLU'd inputs, BN-scaled
weights) up to 512 input channels stays within 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import DTYPES, assert_close, randn, rel_err

import r2n
from r2n import _checks
from r2n.cpu import microkernel
from r2n.cpu.conv import VARIANTS
from r2n.cpu.conv import v6_winograd_4x4 as wino4

# n, c_in, c_out, h, w, padding, groups
CASES = [
    (1, 26, 26, 7, 9, 1, 1),  # 7x9: partial tiles on both edges
    (2, 15, 6, 7, 9, 1, 3),  # 3 groups of 5 channels
    (1, 8, 40, 5, 5, 1, 1),  # 40 = 32 + 8: a partial channel block
    (3, 4, 33, 1, 1, 1, 1),  # 1x1 image: one tile, 15 of its 16 outputs dropped
    (1, 5, 7, 2, 3, 1, 1),  # 2x3 image
    (2, 104, 104, 14, 14, 1, 1),  # Res2Net's layer3 chain conv
    (1, 6, 9, 6, 8, 0, 3),  # no padding
    (2, 5, 5, 9, 7, 2, 1),  # padding 2
    (1, 17, 20, 13, 18, 1, 1),  # several tile rows and columns, none a multiple of 4
]


def _case(rng, case, dtype):
    n, c_in, c_out, h, w, p, g = case
    x = randn(rng, n, c_in, h, w, dtype=dtype)
    weight = randn(rng, c_out, c_in // g, 3, 3, dtype=dtype)
    bias = randn(rng, c_out, dtype=dtype)
    return x, weight, bias, dict(stride=1, padding=p, dilation=1, groups=g)


def _reference(x, weight, bias, **kw):
    to64 = [a.astype(np.float64) for a in (x, weight, bias)]
    return r2n.conv2d(*to64, backend="reference", **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_winograd_4x4_matches_the_reference(rng, case, dtype):
    x, weight, bias, kw = _case(rng, case, dtype)
    before = [a.copy() for a in (x, weight, bias)]
    args = _checks.conv2d_args("conv2d", x, weight, bias, **kw)
    out = VARIANTS["6_winograd_4x4"](x, weight, bias, **args)
    ref = _reference(x, weight, bias, **kw)
    assert out.dtype == dtype and out.shape == ref.shape and out.flags.c_contiguous
    assert_close(out, ref)
    for a, copy in zip((x, weight, bias), before, strict=True):
        np.testing.assert_array_equal(a, copy)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu"])
@pytest.mark.parametrize("residual", [False, True])
def test_epilogue_adds_bias_residual_and_activation(rng, dtype, activation, residual):
    # Batch 1, 7x9, 3 groups of 5 channels, written into channels 4.. of a
    # wider output (out_c0), reading a + add (the Res2Net chain's sp + x_{i+1}).
    x = randn(rng, 1, 17, 7, 9, dtype=dtype)
    add = randn(rng, 1, 20, 7, 9, dtype=dtype)
    weight = randn(rng, 15, 5, 3, 3, dtype=dtype)
    bias = randn(rng, 15, dtype=dtype)
    out = np.full((1, 21, 7, 9), np.nan, dtype)
    res = randn(rng, *out.shape, dtype=dtype) if residual else None
    wino4.conv_winograd_4x4(
        x, wino4.transform_weights(weight, 3), 15, 3, (1, 1), bias, out, a_c0=2, add=add,
        add_c0=5, out_c0=4, activation=activation, negative_slope=0.1, residual=res,
    )  # fmt: skip
    source = (x[:, 2:17] + add[:, 5:20]).astype(np.float64)
    ref = r2n.conv2d(source, weight.astype(np.float64), bias.astype(np.float64), padding=1,
                     groups=3, backend="reference")  # fmt: skip
    if residual:
        ref = ref + res[:, 4:19]
    if activation is not None:
        ref = np.where(ref < 0, (0.1 if activation == "leaky_relu" else 0.0) * ref, ref)
    assert_close(out[:, 4:19], ref, dtype)
    assert np.isnan(out[:, :4]).all() and np.isnan(out[:, 19:]).all()  # nothing else written


@pytest.mark.parametrize("c_in, hw", [(26, 28), (104, 14), (256, 14), (512, 8)])
def test_float32_error_on_realistic_magnitudes(rng, c_in, hw):
    # ReLU'd inputs and BN-folded weights of a trained network's scale (Kaiming
    # times a per-channel BN factor): F(4x4)'s float32 error grows like
    # sqrt(C_in) (1.2e-6 at 104 channels, ~2.5e-6 at 512 when measured); the
    # tests' 1e-5 must hold at the widest conv a model here runs.
    x = np.maximum(randn(rng, 1, c_in, hw, hw), 0) * rng.uniform(0.5, 2.0, (1, c_in, 1, 1))
    scale = np.sqrt(2 / (9 * c_in)) * rng.uniform(0.2, 3.0, (64, 1, 1, 1))
    weight = randn(rng, 64, c_in, 3, 3) * scale
    bias = 0.1 * randn(rng, 64)
    ref = r2n.conv2d(x, weight, bias, padding=1, backend="reference")
    f32 = [a.astype(np.float32) for a in (x, weight, bias)]
    args = _checks.conv2d_args("conv2d", *f32, stride=1, padding=1, dilation=1, groups=1)
    err = rel_err(VARIANTS["6_winograd_4x4"](*f32, **args), ref)
    assert err <= 5e-6, f"relative error {err:.2e}: half the 1e-5 tolerance or less expected"


def test_job_split_does_not_change_the_result(rng, monkeypatch):
    # 1 or 2 threads, one block of tile rows, a few, or one row per block: each
    # tile's arithmetic is the same in every split, so the bits must be too.
    x, weight, bias, kw = _case(rng, (1, 40, 40, 25, 22, 1, 1), np.float32)
    args = _checks.conv2d_args("conv2d", x, weight, bias, **kw)
    before = r2n.get_num_threads()
    results, splits = [], set()
    try:
        for scratch_bytes in (wino4.SCRATCH_BYTES, 100 * 2**10, 1):
            monkeypatch.setattr(wino4, "SCRATCH_BYTES", scratch_bytes)
            for threads in sorted({1, min(2, before)}):
                r2n.set_num_threads(threads)
                splits.add(wino4.plan(1, 40, 25, 22, np.float32, threads)[:2])
                results.append(VARIANTS["6_winograd_4x4"](x, weight, bias, **args))
    finally:
        r2n.set_num_threads(before)
    assert {(7, 1), (1, 7)} <= splits and len(splits) >= 3  # rows per block, blocks
    for out in results[1:]:
        np.testing.assert_array_equal(out, results[0])
    assert_close(results[0], _reference(x, weight, bias, **kw))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c_out, c_in_g, groups", [(104, 104, 1), (15, 5, 3), (40, 7, 1)])
def test_weight_transform_packs_g_g_gt(rng, dtype, c_out, c_in_g, groups):
    # The Numba transform against G g G^T in float64 (NumPy), packed by
    # pack_weights: the same values in the same places, zeros in the padding.
    weight = randn(rng, c_out, c_in_g, 3, 3, dtype=dtype)
    u = np.einsum("ai,oxij,bj->abox", wino4._G, weight.astype(np.float64), wino4._G)
    expected = microkernel.pack_weights(u.astype(dtype).reshape(36 * c_out, c_in_g, 1, 1),
                                        36 * groups)  # fmt: skip
    got = wino4.transform_weights(weight, groups)
    assert got.dtype == dtype and got.shape == expected.shape
    atol = 8 * np.finfo(dtype).eps * float(np.abs(weight).max())
    np.testing.assert_allclose(got, expected, rtol=4 * np.finfo(dtype).eps, atol=atol)


def test_the_matrices_compute_a_3_tap_correlation():
    # A^T [(G g) * (B^T d)] = the 4 outputs of correlating d (6) with g (3),
    # for every unit g and d: the Toom-Cook identity, exactly up to rounding.
    for k in range(3):
        for i in range(6):
            g, d = np.eye(3)[k], np.eye(6)[i]
            want = np.array([float(i == j + k) for j in range(4)])
            np.testing.assert_allclose(wino4._AT @ ((wino4._G @ g) * (wino4._BT @ d)), want,
                                       atol=1e-14)  # fmt: skip


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(out=np.empty((1, 8, 7, 7))), r"out must be a C-contiguous float32 .*got float64"),
        (dict(residual=np.empty((1, 8, 7, 6), np.float32)), r"residual must be shaped like out"),
        (dict(activation="gelu"), r"activation must be None, 'relu' or 'leaky_relu'"),
        (dict(a_c0=1), r"the convs read channels 1 \.\. 8 of a, which has 8"),
        (dict(packed_u="short"), r"packed_u / bias of 4607 / 8 elements do not fit"),
    ],
    ids=["out-dtype", "residual-shape", "activation", "a-channels", "u-size"],
)
def test_conv_winograd_4x4_says_what_it_expected_and_what_came(rng, change, message):
    args = dict(
        a=randn(rng, 1, 8, 7, 7, dtype=np.float32),
        packed_u=wino4.transform_weights(randn(rng, 8, 8, 3, 3, dtype=np.float32), 1),
        bias=np.zeros(8, np.float32),
        out=np.empty((1, 8, 7, 7), np.float32),
    )
    if change.get("packed_u") == "short":
        change = dict(packed_u=args["packed_u"][:-1])
    args.update(change)
    with pytest.raises(ValueError, match="conv_winograd_4x4: " + message):
        wino4.conv_winograd_4x4(
            args.pop("a"), args.pop("packed_u"), 8, 1, (1, 1), args.pop("bias"), args.pop("out"),
            **args,
        )  # fmt: skip
