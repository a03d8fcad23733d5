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
    (1, 6, 33, 5, 7, (1, 0), 1),  # asymmetric padding
    (2, 3, 5, 2, 1, (5, 6), 1),  # padding wider than the image
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
@pytest.mark.parametrize("tiles", ["2x2", "4x4"])
def test_epilogue_adds_bias_residual_and_activation(rng, dtype, activation, residual, tiles):
    # Batch 1, 7x9, 3 groups of 5 channels, written into channels 4.. of a
    # wider output (out_c0), reading a + add (the Res2Net chain's sp + x_{i+1});
    # steps 5 and 6 share the epilogue's contract.
    from r2n.cpu.conv import v5_winograd

    module, launch = (
        (v5_winograd, v5_winograd.conv_winograd) if tiles == "2x2"
        else (wino4, wino4.conv_winograd_4x4)
    )  # fmt: skip
    x = randn(rng, 1, 17, 7, 9, dtype=dtype)
    add = randn(rng, 1, 20, 7, 9, dtype=dtype)
    weight = randn(rng, 15, 5, 3, 3, dtype=dtype)
    bias = randn(rng, 15, dtype=dtype)
    out = np.full((1, 21, 7, 9), np.nan, dtype)
    res = randn(rng, *out.shape, dtype=dtype) if residual else None
    launch(
        x, module.transform_weights(weight, 3), 15, 3, (1, 1), bias, out, a_c0=2, add=add,
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


# --------------------------------------------------------------------------- #
# The rule, and the fused chain and prepared convs that follow it
# --------------------------------------------------------------------------- #


def test_rule_picks_4x4_tiles_on_wide_convs_of_sides_near_multiples_of_4():
    # Res2Net-50's chains: layer1's (26 channels, 56x56) and layer2's (52,
    # 28x28); TResNet-M's 3x3 convs at 56x56 and 28x28; 14x14 and 7x7 (1.31x
    # the outputs computed) and chunks of < 24 channels stay on F(2x2).
    rule = wino4.use_winograd_4x4
    assert [rule(c, 1, 1, s, s) for c, s in [(26, 56), (52, 28), (104, 14), (208, 7)]] == [
        True, True, False, False,
    ]  # fmt: skip
    assert rule(24, 1, 1, 28, 28) and not rule(23, 1, 1, 56, 56) and not rule(16, 1, 8, 56, 56)
    assert all(rule(c, 1, 8, s, s) for c, s in [(48, 56), (64, 56), (128, 28), (256, 28)])
    assert not any(rule(c, 1, 8, s, s) for c, s in [(256, 14), (104, 14), (208, 7)])
    assert rule(512, 1, 8, 14, 14) and rule(512, 1, 8, 7, 7) and not rule(512, 2, 8, 7, 7)
    # 512 channels at batch 1 (14x14, 8x8: step 5 takes them for their low
    # waste) stay on F(2x2): too few tiles for the second thread.
    assert not rule(512, 1, 1, 14, 14) and not rule(512, 1, 1, 8, 8) and rule(512, 1, 2, 14, 14)
    assert rule(48, 2, None, None, None) and not rule(46, 2, None, None, None)
    assert rule(32, 1, 1, 31, 30) and not rule(32, 1, 1, 16, 17) and not rule(32, 1, 1, 12, 12)


@pytest.fixture
def launches4(monkeypatch):
    """Counts the chain's launches: {"4x4": n, "2x2": n, "direct": n}."""
    from r2n.cpu import res2net

    counts = {"4x4": 0, "2x2": 0, "direct": 0}

    def counting(kind, fn):
        def run(*args, **kwargs):
            counts[kind] += 1
            return fn(*args, **kwargs)

        return run

    monkeypatch.setattr(res2net, "conv_winograd_4x4", counting("4x4", res2net.conv_winograd_4x4))
    monkeypatch.setattr(res2net, "conv_winograd", counting("2x2", res2net.conv_winograd))
    monkeypatch.setattr(res2net, "conv_simd", counting("direct", res2net.conv_simd))
    return counts


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "stype, groups, width, hw",
    [("normal", 1, 32, (31, 30)), ("stage", 2, 64, (23, 24)), ("normal", 1, 40, (12, 12))],
    ids=["normal-4x4", "stage-groups-4x4", "normal-12x12-2x2"],
)
def test_chain_takes_4x4_tiles_where_the_rule_says(rng, launches4, dtype, stype, groups, width,
                                                   hw):  # fmt: skip
    # The prepared chain (as models run it) and the one-call op: the same
    # launches and bits; F(4x4) on the rule's shapes, F(2x2) below them.
    from r2n.cpu import res2net

    x = randn(rng, 2, 4 * width, *hw, dtype=dtype)
    weights = [randn(rng, width, width // groups, 3, 3, dtype=dtype) / 12 for _ in range(3)]
    biases = [randn(rng, width, dtype=dtype) for _ in range(3)]
    kw = dict(scale=4, stype=stype, stride=1, groups=groups)
    chain = res2net.PreparedChain(weights, biases, width=width, dtype=dtype, **kw)
    out = chain(x)
    four = wino4.use_winograd_4x4(width, groups, 2, *hw)
    assert four == (hw != (12, 12))
    calls = 1 if stype == "stage" else 3
    assert launches4 == {"4x4": calls if four else 0, "2x2": 0 if four else calls, "direct": 0}
    np.testing.assert_array_equal(chain(x), out)  # the weights transformed on the first call
    np.testing.assert_array_equal(r2n.res2net_chain(x, weights, biases, backend="cpu", **kw), out)
    to64 = [[a.astype(np.float64) for a in arrays] for arrays in (weights, biases)]
    ref = r2n.res2net_chain(x.astype(np.float64), *to64, backend="reference", **kw)
    assert_close(out, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "activation, residual",
    [(None, False), ("relu", True), ("leaky_relu", False), ("leaky_relu", True)],
)
def test_prepared_conv2d_takes_4x4_tiles_where_the_rule_says(rng, monkeypatch, dtype, activation,
                                                             residual):  # fmt: skip
    # r2n.prepare's conv2d (TResNet's): bias, residual and leaky ReLU in the
    # F(4x4) kernel, one launch; F(2x2) on 14x14 (the rule), each against the
    # reference; changing the caller's weights after prepare changes nothing.
    from r2n.cpu import prepared
    from r2n.cpu.conv import v5_winograd

    calls = {"4x4": 0, "2x2": 0}
    for kind, module, name in [("4x4", wino4, "conv_winograd_4x4"),
                               ("2x2", v5_winograd, "conv_winograd")]:  # fmt: skip
        fn = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=fn, _k=kind, **k: (
            calls.__setitem__(_k, calls[_k] + 1), _f(*a, **k))[1])  # fmt: skip
    weight = randn(rng, 40, 32, 3, 3, dtype=dtype) / 20
    bias = randn(rng, 40, dtype=dtype)
    keep = weight.copy()
    conv = prepared.PreparedConv2d(
        weight, bias, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=2,
        activation=activation, negative_slope=0.1,
    )  # fmt: skip
    weight[:] = np.nan  # the layer holds its own copy
    for hw, kind in [((23, 24), "4x4"), ((14, 14), "2x2")]:
        x = randn(rng, 1, 64, *hw, dtype=dtype)
        res = randn(rng, 1, 40, *hw, dtype=dtype) if residual else None
        ref = r2n.conv2d(x.astype(np.float64), keep.astype(np.float64), bias.astype(np.float64),
                         padding=1, groups=2, backend="reference")  # fmt: skip
        if residual:
            ref = ref + res
        if activation is not None:
            ref = np.where(ref < 0, (0.1 if activation == "leaky_relu" else 0.0) * ref, ref)
        calls.update({"4x4": 0, "2x2": 0})
        assert_close(conv(x, res), ref, dtype)
        assert calls == {"4x4": int(kind == "4x4"), "2x2": int(kind == "2x2")}


def test_scratch_contents_never_reach_an_output(rng):
    # The F(4x4) buffers come from the thread's scratch cache, keyed on size
    # only: filled with NaN between calls of changing shapes and thread
    # counts, no NaN and no earlier call's values may reach an output (as
    # tests/test_stateful.py does for the ops, whose sizes stay below F(4x4)'s).
    from r2n.cpu import _scratch, prepared, res2net

    weight = randn(rng, 40, 32, 3, 3, dtype=np.float32) / 17
    bias = randn(rng, 40, dtype=np.float32)
    conv = prepared.PreparedConv2d(
        weight, bias, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
        activation="leaky_relu", negative_slope=0.1,
    )  # fmt: skip
    chain_w = [randn(rng, 32, 32, 3, 3, dtype=np.float32) / 17 for _ in range(3)]
    chain = res2net.PreparedChain(chain_w, None, scale=4, stype="normal", stride=1, groups=1,
                                  width=32, dtype=np.float32)  # fmt: skip
    before = r2n.get_num_threads()
    try:
        for i, hw in enumerate([(16, 20), (31, 30), (16, 16), (23, 24), (16, 20)]):
            assert wino4.use_winograd_4x4(32, 1, 1, *hw)
            r2n.set_num_threads(1 if i % 2 else before)
            for buf in _scratch._this_thread().buffers.values():
                buf.fill(np.nan)
            x = randn(rng, 1 + i % 2, 32, *hw, dtype=np.float32)
            ref = r2n.conv2d(x.astype(np.float64), weight.astype(np.float64),
                             bias.astype(np.float64), padding=1, backend="reference")  # fmt: skip
            assert_close(conv(x), np.where(ref < 0, 0.1 * ref, ref), np.float32)
            for buf in _scratch._this_thread().buffers.values():
                buf.fill(np.nan)
            xc = randn(rng, 1 + i % 2, 128, *hw, dtype=np.float32)
            ref = r2n.res2net_chain(xc.astype(np.float64), [w.astype(np.float64) for w in chain_w],
                                    None, scale=4, backend="reference")  # fmt: skip
            assert_close(chain(xc), ref, np.float32)
    finally:
        r2n.set_num_threads(before)
