"""Winograd F(2x2, 3x3) on the CPU: conv2d step 5_winograd and the fused chain's use of it.

The variant runs against the float64 reference on odd shapes (odd and tiny
images, partial edge tiles, groups, channel counts that leave a partial
register block); the chain runs through the Winograd path (checked: the
tests count its launches) against the reference and PyTorch, and the
layer3.1 shape of Res2Net-50 must take that path.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import DTYPES, as_float64, assert_close, randn, random_block
from hypothesis import given
from hypothesis import strategies as st
from torch_res2net import TorchChain, chain_arrays, randomize, torch_out

import r2n
from r2n import _checks
from r2n.cpu import conv, res2net
from r2n.cpu.conv import v5_winograd as winograd

# n, c_in, c_out, h, w, padding, groups
CASES = [
    (1, 26, 26, 7, 9, 1, 1),  # odd image: partial tiles on two edges
    (2, 15, 6, 7, 9, 1, 3),  # 3 groups of 5 channels
    (1, 8, 40, 5, 5, 1, 1),  # 40 = 32 + 8: a partial channel block
    (3, 4, 33, 1, 1, 1, 1),  # 1x1 image: one tile, 3 of its 4 outputs dropped
    (1, 5, 7, 2, 3, 1, 1),  # 2x3 image
    (2, 104, 104, 14, 14, 1, 1),  # the layer3.1 conv
    (1, 6, 9, 6, 8, 0, 3),  # no padding
    (2, 5, 5, 9, 7, 2, 1),  # padding 2
]


def _case(rng, case, dtype):
    n, c_in, c_out, h, w, p, g = case
    x = randn(rng, n, c_in, h, w, dtype=dtype)
    weight = randn(rng, c_out, c_in // g, 3, 3, dtype=dtype)
    bias = randn(rng, c_out, dtype=dtype)
    return x, weight, bias, dict(stride=1, padding=p, dilation=1, groups=g)


def _reference_conv(x, weight, bias, **kw):
    to64 = [a.astype(np.float64) for a in (x, weight, bias)]
    return r2n.conv2d(*to64, backend="reference", **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_winograd_variant_matches_the_reference(rng, case, dtype):
    x, weight, bias, kw = _case(rng, case, dtype)
    before = [a.copy() for a in (x, weight, bias)]
    args = _checks.conv2d_args("conv2d", x, weight, bias, **kw)
    out = conv.VARIANTS["5_winograd"](x, weight, bias, **args)
    ref = _reference_conv(x, weight, bias, **kw)
    assert out.dtype == dtype and out.shape == ref.shape and out.flags.c_contiguous
    assert_close(out, ref)
    for a, copy in zip((x, weight, bias), before, strict=True):
        np.testing.assert_array_equal(a, copy)


def test_winograd_variant_without_input_channels_gives_the_bias(rng):
    # C_in = 0 is a valid conv (r2n.conv2d and variant 3 give the bias): V is
    # empty, every GEMM a sum of nothing.
    x = np.empty((2, 0, 5, 4), np.float32)
    weight = np.empty((6, 0, 3, 3), np.float32)
    bias = randn(rng, 6, dtype=np.float32)
    kw = dict(stride=1, padding=1, dilation=1, groups=1)
    args = _checks.conv2d_args("conv2d", x, weight, bias, **kw)
    out = conv.VARIANTS["5_winograd"](x, weight, bias, **args)
    np.testing.assert_array_equal(out, np.broadcast_to(bias[:, None, None], out.shape))


@pytest.mark.parametrize(
    "kernel, stride, dilation",
    [((3, 3), 2, 1), ((3, 3), 1, 2), ((5, 5), 1, 1), ((1, 1), 1, 1), ((3, 1), 1, 1)],
)
def test_winograd_variant_rejects_what_it_does_not_compute(rng, kernel, stride, dilation):
    x = randn(rng, 1, 4, 9, 9, dtype=np.float32)
    weight = randn(rng, 4, 4, *kernel, dtype=np.float32)
    kw = dict(stride=stride, padding=1, dilation=dilation, groups=1)
    args = _checks.conv2d_args("conv2d", x, weight, None, **kw)
    with pytest.raises(ValueError, match="5_winograd: needs a 3x3 kernel, stride 1"):
        conv.VARIANTS["5_winograd"](x, weight, None, **args)


@given(
    n=st.integers(1, 2),
    groups=st.integers(1, 3),
    c_in_g=st.integers(1, 20),
    c_out_g=st.integers(1, 40),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    row_per_job=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_winograd_variant_matches_the_reference_on_drawn_arguments(
    n, groups, c_in_g, c_out_g, h, w, padding, row_per_job, dtype, seed
):
    # Partial edge tiles on either side, padding 0-2, channel counts around
    # the register blocks (16 / 32 lanes), and one tile row per job (several
    # jobs per image) or the default split.
    if h + 2 * padding[0] < 3 or w + 2 * padding[1] < 3:
        return  # no output: the shared checks reject it
    rng = np.random.default_rng(seed)
    x, weight, bias, kw = _case(
        rng, (n, groups * c_in_g, groups * c_out_g, h, w, 0, groups), dtype
    )
    kw["padding"] = padding
    args = _checks.conv2d_args("conv2d", x, weight, bias, **kw)
    scratch_bytes = 1 if row_per_job else winograd.SCRATCH_BYTES
    saved, winograd.SCRATCH_BYTES = winograd.SCRATCH_BYTES, scratch_bytes
    try:
        out = conv.VARIANTS["5_winograd"](x, weight, bias, **args)
    finally:
        winograd.SCRATCH_BYTES = saved
    assert_close(out, _reference_conv(x, weight, bias, **kw))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(out=np.empty((1, 8, 7, 7))), r"out must be a C-contiguous float32 .*got float64"),
        (
            dict(out=np.empty((1, 8, 7, 14), np.float32)[..., ::2]),
            r"out must be a C-contiguous float32 .*got float32, not C-contiguous",
        ),
        (dict(add=np.empty((1, 8, 7, 7))), r"add must be a C-contiguous float32 .*got float64"),
        (dict(packed_u="float64"), r"packed_u and bias must be float32, got float64 and float32"),
        (dict(bias=np.zeros(8)), r"packed_u and bias must be float32, got float32 and float64"),
        (dict(a_c0=1), r"the convs read channels 1 \.\. 8 of a, which has 8"),
        (dict(out_c0=2), r"the convs write channels 2 \.\. 9 of out, which has 8"),
    ],
    ids=["out-dtype", "out-strided", "b-dtype", "u-dtype", "bias-dtype", "a-channels", "out-c"],
)
def test_conv_winograd_says_what_it_expected_and_what_came(rng, change, message):
    args = dict(
        a=randn(rng, 1, 8, 7, 7, dtype=np.float32),
        packed_u=winograd.transform_weights(randn(rng, 8, 8, 3, 3, dtype=np.float32), 1),
        bias=np.zeros(8, np.float32),
        out=np.empty((1, 8, 7, 7), np.float32),
    )
    if change.get("packed_u") == "float64":
        change = dict(packed_u=args["packed_u"].astype(np.float64))
    args.update(change)
    with pytest.raises(ValueError, match="conv_winograd: " + message):
        winograd.conv_winograd(
            args.pop("a"), args.pop("packed_u"), 8, 1, (1, 1), args.pop("bias"), args.pop("out"),
            **args,
        )  # fmt: skip


def test_job_split_does_not_change_the_result(rng, monkeypatch):
    # Jobs are blocks of tile rows: 1 or 2 threads, and scratch sizes that
    # give one block, blocks of a few rows, or a row per block (plan). Each
    # tile's arithmetic is the same in every split, so the bits must be too.
    x, weight, bias, kw = _case(rng, (1, 40, 40, 13, 11, 1, 1), np.float32)
    args = _checks.conv2d_args("conv2d", x, weight, bias, **kw)
    before = r2n.get_num_threads()
    results, splits = [], set()
    try:
        for scratch_bytes in (winograd.SCRATCH_BYTES, 100 * 2**10, 1):
            monkeypatch.setattr(winograd, "SCRATCH_BYTES", scratch_bytes)
            for threads in sorted({1, min(2, before)}):
                r2n.set_num_threads(threads)
                splits.add(winograd.plan(1, 40, 13, 11, np.float32, threads)[:2])
                results.append(conv.VARIANTS["5_winograd"](x, weight, bias, **args))
    finally:
        r2n.set_num_threads(before)
    assert {(7, 1), (1, 7)} <= splits and len(splits) >= 3  # rows per block, blocks
    for out in results[1:]:
        np.testing.assert_array_equal(out, results[0])
    assert_close(results[0], _reference_conv(x, weight, bias, **kw))


# --------------------------------------------------------------------------- #
# The fused chain
# --------------------------------------------------------------------------- #


def _prepared_chain(weights, biases, *, dtype, scale, stype, stride, groups):
    """The chain as models and benchmarks run it: weights prepared once."""
    width = weights[0].shape[0]
    return res2net.PreparedChain(
        weights, biases, scale=scale, stype=stype, stride=stride, groups=groups,
        width=width, dtype=dtype,
    )  # fmt: skip


@pytest.fixture
def launches(monkeypatch):
    """Counts the chain's launches of each kind: {"winograd": n, "direct": n}."""
    counts = {"winograd": 0, "direct": 0}

    def counting(kind, fn):
        def run(*args, **kwargs):
            counts[kind] += 1
            return fn(*args, **kwargs)

        return run

    monkeypatch.setattr(res2net, "conv_winograd", counting("winograd", res2net.conv_winograd))
    monkeypatch.setattr(res2net, "conv_simd", counting("direct", res2net.conv_simd))
    return counts


# stype, scale, groups, width, batch, H, W
CHAIN_CASES = [
    ("normal", 4, 1, 40, 2, 7, 9),  # odd image, 40 = 32 + 8 channels
    ("normal", 2, 1, 32, 1, 8, 8),
    ("normal", 3, 2, 64, 1, 9, 7),  # 2 groups of 32
    ("stage", 4, 1, 36, 2, 9, 7),  # stage: one launch, last chunk pooled
    ("stage", 1, 1, 32, 1, 7, 7),  # scale 1: one conv, no passed-through chunk
    ("normal", 8, 1, 16, 1, 7, 7),  # scale 8, 16 channels (the fewest Winograd takes), no biases
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CHAIN_CASES, ids=str)
def test_chain_through_winograd_matches_the_reference(rng, launches, case, dtype):
    stype, scale, groups, width, n, h, w = case
    assert winograd.use_winograd(width, groups, n, h, w)
    nums = max(scale - 1, 1)
    x = randn(rng, n, scale * width, h, w, dtype=dtype)
    weights = [randn(rng, width, width // groups, 3, 3, dtype=dtype) for _ in range(nums)]
    biases = None if scale == 8 else [randn(rng, width, dtype=dtype) for _ in range(nums)]
    before = [a.copy() for a in (x, *weights, *(biases or []))]
    kw = dict(scale=scale, stype=stype, stride=1, groups=groups)

    out = _prepared_chain(weights, biases, dtype=dtype, **kw)(x)

    assert launches == {"winograd": 1 if stype == "stage" else nums, "direct": 0}
    to64 = [a.astype(np.float64) for a in weights]
    b64 = None if biases is None else [a.astype(np.float64) for a in biases]
    ref = r2n.res2net_chain(x.astype(np.float64), to64, b64, backend="reference", **kw)
    assert out.dtype == dtype and out.flags.c_contiguous
    assert_close(out, ref)
    for a, copy in zip((x, *weights, *(biases or [])), before, strict=True):
        np.testing.assert_array_equal(a, copy)


@pytest.mark.parametrize("stype", ["normal", "stage"])
def test_chain_through_winograd_matches_torch(rng, launches, stype):
    chain = randomize(TorchChain(32, 4, stype, 1), rng)
    x = randn(rng, 2, 4 * 32, 9, 7, dtype=np.float32)
    weights, biases = chain_arrays(chain, np.float32)
    kw = dict(scale=4, stype=stype, stride=1, groups=1)
    out = _prepared_chain(weights, biases, dtype=np.float32, **kw)(x)
    assert launches["winograd"] > 0 and launches["direct"] == 0
    assert_close(out, torch_out(chain, x))


@pytest.mark.parametrize("winograd_path", [True, False], ids=["winograd", "direct"])
@pytest.mark.parametrize(
    "bad_out", ["float64", "strided", "channels", "height", "batch", "is_x"], ids=str
)
def test_chain_rejects_an_out_it_cannot_write(rng, winograd_path, bad_out):
    # The kernels write raw buffers (and the Winograd path's prologue runs
    # before its convs): a wrong ``out`` must be refused before any launch.
    x = randn(rng, 2, 4 * 16, 8 if winograd_path else 5, 9, dtype=np.float32)
    weights = [randn(rng, 16, 16, 3, 3, dtype=np.float32) for _ in range(3)]
    chain = _prepared_chain(weights, None, dtype=np.float32, scale=4, stype="normal",
                            stride=1, groups=1)  # fmt: skip
    assert winograd.use_winograd(16, 1, *x.shape[:1], *x.shape[2:]) == winograd_path
    n, c, h, w = x.shape
    out = {
        "float64": lambda: np.empty(x.shape, np.float64),
        "strided": lambda: np.empty((n, c, h, 2 * w), np.float32)[..., ::2],
        "channels": lambda: np.empty((n, c - 16, h, w), np.float32),
        "height": lambda: np.empty((n, c, h + 1, w), np.float32),
        "batch": lambda: np.empty((n - 1, c, h, w), np.float32),
        "is_x": lambda: x,
    }[bad_out]()
    before = x.copy()
    with pytest.raises(ValueError, match=r"PreparedChain: out must be .* got"):
        chain(x, out)
    np.testing.assert_array_equal(x, before)


# --------------------------------------------------------------------------- #
# The pass-through: the "normal" chain's last chunk copied in conv 0's launch
# --------------------------------------------------------------------------- #


def _winograd_launcher(four):
    """(conv, transform_weights) of F(4x4, 3x3) if ``four``, else F(2x2, 3x3)."""
    from r2n.cpu.conv import v6_winograd_4x4 as wino4

    return (wino4.conv_winograd_4x4, wino4.transform_weights) if four else (
        winograd.conv_winograd, winograd.transform_weights)  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("four", [False, True], ids=["2x2", "4x4"])
def test_pass_through_adds_an_exact_copy_to_the_conv_launch(rng, four, n, dtype):
    # 3 groups of 5 channels on 7x9 images, at 1 and 2 threads: the launch
    # with pass_through writes the conv's bits and the passed planes copied
    # exactly (out starts as NaN: every passed element is written), and no
    # other channel (16 and 22 stay NaN).
    conv, transform = _winograd_launcher(four)
    a = randn(rng, n, 20, 7, 9, dtype=dtype)
    u = transform(randn(rng, 15, 5, 3, 3, dtype=dtype), 3)
    bias = randn(rng, 15, dtype=dtype)
    expected = np.full((n, 23, 7, 9), np.nan, dtype)
    conv(a, u, 15, 3, (1, 1), bias, expected, c_in_g=5, activation="relu")
    expected[:, 17:22] = a[:, 15:20]
    before = r2n.get_num_threads()
    try:
        for threads in sorted({1, min(2, before)}):
            r2n.set_num_threads(threads)
            out = np.full((n, 23, 7, 9), np.nan, dtype)
            conv(a, u, 15, 3, (1, 1), bias, out, c_in_g=5, activation="relu",
                 pass_through=(15, 17, 5))  # fmt: skip
            np.testing.assert_array_equal(out, expected)
    finally:
        r2n.set_num_threads(before)
    assert np.isnan(out[:, [15, 16, 22]]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("four", [False, True], ids=["2x2", "4x4"])
@pytest.mark.parametrize("c_out, groups", [(40, 1), (15, 3), (72, 2)], ids=str)
def test_weight_prefetch_changes_no_bit(rng, monkeypatch, four, c_out, groups, dtype):
    # The GEMMs' prefetch of their next weight block (PREFETCH_WEIGHTS) is a
    # hint: on and off give the same bits, and both the reference's values,
    # at 1 and 2 threads. Cases: 2 channel blocks (40 = 32 + a half block of
    # 8 in float32), 3 groups of 5 (the next-group and wrap-around steps),
    # 2 groups of 36 (a full block, then a zero-padded one, per group).
    conv, transform = _winograd_launcher(four)
    c_in_g = 5 if groups == 3 else 12
    a = randn(rng, 2, groups * c_in_g, 7, 9, dtype=dtype)
    weight = randn(rng, c_out, c_in_g, 3, 3, dtype=dtype)
    u = transform(weight, groups)
    bias = randn(rng, c_out, dtype=dtype)
    ref = _reference_conv(a, weight, bias, stride=1, padding=1, dilation=1, groups=groups)
    outs = []
    before = r2n.get_num_threads()
    try:
        for prefetch in (False, True):
            monkeypatch.setattr(winograd, "PREFETCH_WEIGHTS", prefetch)
            for threads in sorted({1, min(2, before)}):
                r2n.set_num_threads(threads)
                out = np.full((2, c_out, 7, 9), np.nan, dtype)
                conv(a, u, c_out, groups, (1, 1), bias, out, c_in_g=c_in_g)
                outs.append(out)
    finally:
        r2n.set_num_threads(before)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    assert_close(outs[0], ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("four", [False, True], ids=["2x2", "4x4"])
@pytest.mark.parametrize(
    "n, c_in, c_out, h, w, groups, chain",
    [
        (1, 15, 15, 7, 9, 3, True),  # 3 groups of 5 on 7x9, the chain's added input
        (2, 36, 40, 17, 75, 1, False),  # rows of 39 / 20 tiles: several vectors each
        (1, 8, 33, 2, 3, 1, True),  # 2x3 image: one partial tile per row
    ],
    ids=["7x9-groups", "wide-rows", "2x3"],
)
def test_transforms_in_registers_match_the_flat_loops(
    rng, monkeypatch, four, n, c_in, c_out, h, w, groups, chain, dtype
):
    # TRANSFORMS_IN_REGISTERS' bits (1 input transform, 2 output transform,
    # 4 parity split; r2n.cpu.conv.winograd_registers), each alone and all,
    # against the flat loops (0), at 1 and 2 threads, from NaN-filled
    # outputs, with the chain's added input, a residual and a leaky ReLU:
    # F(2x2) sums the same terms in the same order (bit-identical); F(4x4)'s
    # flat loops also add zero-coefficient terms and LLVM may fuse
    # differently, so there the reference decides.
    conv, transform = _winograd_launcher(four)
    c_in_g = c_in // groups
    a = randn(rng, n, c_in, h, w, dtype=dtype)
    add = randn(rng, n, c_in, h, w, dtype=dtype) if chain else None
    weight = randn(rng, c_out, c_in_g, 3, 3, dtype=dtype)
    bias = randn(rng, c_out, dtype=dtype)
    residual = randn(rng, n, c_out, h, w, dtype=dtype)
    source = a + add if chain else a
    ref = _reference_conv(source, weight, bias, stride=1, padding=1, dilation=1, groups=groups)
    ref = ref + residual.astype(np.float64)
    ref = np.where(ref < 0, 0.125 * ref, ref)
    u = transform(weight, groups)
    outs = {}
    before = r2n.get_num_threads()
    try:
        for bits in (0, 1, 2, 4, 7):
            monkeypatch.setattr(winograd, "TRANSFORMS_IN_REGISTERS", bits)
            for threads in sorted({1, min(2, before)}):
                r2n.set_num_threads(threads)
                out = np.full((n, c_out, h, w), np.nan, dtype)
                conv(a, u, c_out, groups, (1, 1), bias, out, c_in_g=c_in_g, add=add,
                     activation="leaky_relu", negative_slope=0.125, residual=residual)  # fmt: skip
                outs[bits, threads] = out
    finally:
        r2n.set_num_threads(before)
    for key, out in outs.items():
        assert_close(out, ref, dtype)
        if not four:
            np.testing.assert_array_equal(out, outs[0, 1], err_msg=str(key))


@pytest.mark.parametrize("four", [False, True], ids=["2x2", "4x4"])
@pytest.mark.parametrize(
    "padding, pass_through, message",
    [
        ((0, 0), (8, 8, 4), r"copies planes of a \(7, 9\) into out, whose planes are \(5, 7\)"),
        ((1, 1), (9, 8, 4), r"copies channels 9 \.\. 12 of a \(12 channels\) to 8 \.\. 11"),
        ((1, 1), (8, 9, 4), r"to 9 \.\. 12 of out \(12\); both must lie inside"),
    ],
    ids=["planes", "a-channels", "out-channels"],
)
def test_pass_through_says_what_it_expected_and_what_came(rng, four, padding, pass_through,
                                                          message):  # fmt: skip
    conv, transform = _winograd_launcher(four)
    a = randn(rng, 1, 12, 7, 9, dtype=np.float32)
    out = np.zeros((1, 12, 7 + 2 * padding[0] - 2, 9 + 2 * padding[1] - 2), np.float32)
    u = transform(randn(rng, 8, 8, 3, 3, dtype=np.float32), 1)
    with pytest.raises(ValueError, match=message):
        conv(
            a, u, 8, 1, padding, np.zeros(8, np.float32), out, c_in_g=8, pass_through=pass_through
        )
    assert not out.any()


@pytest.mark.parametrize(
    "scale, groups, width, n, hw",
    [(4, 1, 40, 1, (7, 9)), (3, 2, 64, 2, (9, 7)), (4, 1, 32, 1, (24, 23))],
    ids=["2x2-7x9", "2x2-groups-batch2", "4x4"],
)
def test_normal_chain_passes_its_last_chunk_in_the_first_conv(rng, monkeypatch, scale, groups,
                                                              width, n, hw):  # fmt: skip
    # The Winograd "normal" chain runs no prologue launch (one parallel
    # region fewer per chain) and gives the bits of the launches it replaced:
    # each conv on its own, the last chunk copied.
    prologues = []
    monkeypatch.setattr(res2net, "_chain_prologue", lambda *a: prologues.append(a))
    nums = scale - 1
    x = randn(rng, n, scale * width, *hw, dtype=np.float32)
    weights = [randn(rng, width, width // groups, 3, 3, dtype=np.float32) / 9 for _ in range(nums)]
    biases = [randn(rng, width, dtype=np.float32) for _ in range(nums)]
    kw = dict(scale=scale, stype="normal", stride=1, groups=groups)
    chain = _prepared_chain(weights, biases, dtype=np.float32, **kw)
    out = chain(x)
    assert prologues == []
    from r2n.cpu.conv.v6_winograd_4x4 import use_winograd_4x4

    four = use_winograd_4x4(width, groups, n, *hw)
    assert four == (hw == (24, 23))
    conv, transform = _winograd_launcher(four)
    expected = np.full_like(x, np.nan)
    for i in range(nums):
        conv(
            x if i == 0 else expected, transform(weights[i], groups), width, groups, (1, 1),
            biases[i], expected, a_c0=0 if i == 0 else (i - 1) * width,
            add=None if i == 0 else x, add_c0=i * width, out_c0=i * width, activation="relu",
            c_in_g=width // groups,
        )  # fmt: skip
    expected[:, nums * width :] = x[:, nums * width :]
    np.testing.assert_array_equal(out, expected)
    to64 = [[a.astype(np.float64) for a in arrays] for arrays in (weights, biases)]
    ref = r2n.res2net_chain(x.astype(np.float64), *to64, backend="reference", **kw)
    assert_close(out, ref, np.float32)


@pytest.mark.parametrize("hw", [(9, 7), (5, 9)], ids=["winograd", "direct"])
def test_one_call_ops_follow_the_prepared_rule(rng, launches, hw):
    # r2n.res2net_chain / r2n.bottle2neck transform their weights per call
    # (one Numba kernel) and take the path use_winograd gives for the input's
    # shape, as a prepared chain does: the same launches, the same values.
    x = randn(rng, 1, 4 * 32, *hw, dtype=np.float32)
    weights = [randn(rng, 32, 32, 3, 3, dtype=np.float32) / 17 for _ in range(3)]
    wino = winograd.use_winograd(32, 1, 1, *hw)
    assert wino == (hw == (9, 7))
    out = r2n.res2net_chain(x, weights, None, scale=4, backend="cpu")
    assert launches == ({"winograd": 3, "direct": 0} if wino else {"winograd": 0, "direct": 3})
    prepared = _prepared_chain(weights, None, dtype=np.float32, scale=4, stype="normal",
                               stride=1, groups=1)(x)  # fmt: skip
    np.testing.assert_array_equal(prepared, out)
    ref = r2n.res2net_chain(x.astype(np.float64), [w.astype(np.float64) for w in weights],
                            None, scale=4, backend="reference")  # fmt: skip
    assert_close(out, ref, np.float32)

    params = random_block(rng, 24, 24, 32, 4, dtype=np.float32)
    xb = randn(rng, 1, 24, *hw, dtype=np.float32)
    launches.update(winograd=0, direct=0)
    block = r2n.bottle2neck(xb, params, scale=4, backend="cpu")
    assert launches["winograd"] == (3 if wino else 0)
    ref = r2n.bottle2neck(xb.astype(np.float64), as_float64(params), scale=4, backend="reference")
    assert_close(block, ref, np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "c_out, c_in_g, groups", [(104, 104, 1), (15, 5, 3), (48, 16, 3), (40, 7, 1)]
)
def test_weight_transform_kernel_packs_g_g_gt(rng, dtype, c_out, c_in_g, groups):
    # The Numba transform against G g G^T in float64 (NumPy), packed by
    # pack_weights: the same values in the same places, zeros in the padding.
    from r2n.cpu import microkernel

    weight = randn(rng, c_out, c_in_g, 3, 3, dtype=dtype)
    g_mat = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
    u = np.einsum("ai,oxij,bj->abox", g_mat, weight.astype(np.float64), g_mat)
    expected = microkernel.pack_weights(u.astype(dtype).reshape(16 * c_out, c_in_g, 1, 1),
                                        16 * groups)  # fmt: skip
    got = winograd.transform_weights(weight, groups)
    assert got.dtype == dtype and got.shape == expected.shape
    # Summation order differs (sums of 9 terms that may cancel): a few ulps of
    # the largest weight.
    atol = 8 * np.finfo(dtype).eps * float(np.abs(weight).max())
    np.testing.assert_allclose(got, expected, rtol=4 * np.finfo(dtype).eps, atol=atol)


def test_layer3_1_chain_takes_the_winograd_path(rng, launches):
    # Res2Net-50's layer3.1 chain (26w x 4s: width 104, 14x14), whose target
    # needs Winograd's fewer multiplies: the dispatch must keep choosing it.
    assert winograd.use_winograd(104, 1, 8, 14, 14)
    x = randn(rng, 1, 4 * 104, 14, 14, dtype=np.float32)
    weights = [randn(rng, 104, 104, 3, 3, dtype=np.float32) for _ in range(3)]
    biases = [randn(rng, 104, dtype=np.float32) for _ in range(3)]
    chain = res2net.PreparedChain(
        weights, biases, scale=4, stype="normal", stride=1, groups=1, width=104,
        dtype=np.float32,
    )  # fmt: skip
    out = chain(x)
    assert launches == {"winograd": 3, "direct": 0}
    to64 = [[a.astype(np.float64) for a in arrays] for arrays in (weights, biases)]
    ref = r2n.res2net_chain(x.astype(np.float64), *to64, scale=4, backend="reference")
    assert_close(out, ref)


def test_narrow_chunks_small_images_and_strides_take_the_direct_convs(rng, launches):
    min_c, min_hw = winograd.WINOGRAD_MIN_CHANNELS, winograd.WINOGRAD_MIN_SIZE
    assert not winograd.use_winograd(min_c - 1, 1, 8, 56, 56)
    assert not winograd.use_winograd(2 * min_c - 2, 2, 8, 56, 56)  # per group
    assert not winograd.use_winograd(min_c, 1, 8, min_hw - 1, 56)
    assert not winograd.use_winograd(min_c, 1, 8, 56, min_hw - 1)
    # wide groups (U beyond L2) need enough tiles, or little waste in them:
    # Res2Net-50's layer4 at 7x7 (2x2 tiles compute 1.31x the outputs)...
    assert not winograd.use_winograd(208, 1, 3, 7, 7)
    assert not winograd.use_winograd(512, 1, 1, 7, 7)
    assert winograd.use_winograd(208, 1, 4, 7, 7)
    # ... but TResNet's 256 / 512 channel convs at 14x14 batch 1 (1.3-1.7x)
    assert winograd.use_winograd(256, 1, 1, 14, 14)
    assert winograd.use_winograd(512, 1, 1, 14, 14)
    assert winograd.use_winograd(512, 1, 1, 8, 8)
    x = randn(rng, 1, 4 * min_c, 9, 9, dtype=np.float32)
    weights = [randn(rng, min_c, min_c, 3, 3, dtype=np.float32) for _ in range(3)]
    chain = _prepared_chain(weights, None, dtype=np.float32, scale=4, stype="stage", stride=2,
                            groups=1)  # fmt: skip
    assert chain.wino is None  # stride 2: no Winograd weights prepared
    out = chain(x)
    assert launches == {"winograd": 0, "direct": 1}
    to64 = [a.astype(np.float64) for a in weights]
    ref = r2n.res2net_chain(
        x.astype(np.float64), to64, None, scale=4, stype="stage", stride=2, backend="reference"
    )
    assert_close(out, ref)


@pytest.mark.parametrize("stype", ["normal", "stage"])
def test_prepared_chain_runs_direct_convs_where_the_rule_says_so(rng, launches, stype):
    # Winograd weights are prepared (16 channels per group), but images
    # smaller than WINOGRAD_MIN_SIZE go to the direct convs, call by call.
    min_c, min_hw = winograd.WINOGRAD_MIN_CHANNELS, winograd.WINOGRAD_MIN_SIZE
    weights = [randn(rng, min_c, min_c, 3, 3, dtype=np.float64) for _ in range(3)]
    biases = [randn(rng, min_c, dtype=np.float64) for _ in range(3)]
    kw = dict(scale=4, stype=stype, stride=1, groups=1)
    chain = _prepared_chain(weights, biases, dtype=np.float64, **kw)
    assert chain.wino is not None
    for h, w, path in [(min_hw - 1, 9, "direct"), (min_hw, min_hw, "winograd")]:
        x = randn(rng, 2, 4 * min_c, h, w, dtype=np.float64)
        expected = dict(launches)
        expected[path] += 1 if stype == "stage" else 3
        out = chain(x)
        assert launches == expected
        ref = r2n.res2net_chain(x, weights, biases, backend="reference", **kw)
        assert_close(out, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "activation, residual", [(None, False), ("relu", False), ("relu", True), ("leaky_relu", False)]
)
def test_prepared_conv2d_takes_winograd_where_the_rule_says(rng, monkeypatch, dtype, activation,
                                                            residual):  # fmt: skip
    # r2n.prepare's 3x3 stride-1 convs (TResNet's) on Winograd weights: bias,
    # residual and leaky ReLU in the kernel, one launch; on odd images, 2
    # groups of 17 channels; the direct path below the rule's size.
    from r2n.cpu import prepared

    launches = []
    monkeypatch.setattr(winograd, "conv_winograd", _counting(launches, winograd.conv_winograd))
    weight = randn(rng, 40, 17, 3, 3, dtype=dtype) / 12
    bias = randn(rng, 40, dtype=dtype)
    conv = prepared.PreparedConv2d(
        weight, bias, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=2,
        activation=activation, negative_slope=0.1,
    )  # fmt: skip
    assert conv.wino is not None
    for hw in [(9, 7), (5, 6)]:
        x = randn(rng, 2, 34, *hw, dtype=dtype)
        res = randn(rng, 2, 40, *hw, dtype=dtype) if residual else None
        to64 = [a.astype(np.float64) for a in (x, weight, bias)]
        ref = r2n.conv2d(*to64, padding=1, groups=2, backend="reference")
        if residual:
            ref = ref + res
        if activation is not None:
            ref = np.where(ref < 0, (0.1 if activation == "leaky_relu" else 0.0) * ref, ref)
        launches.clear()
        assert_close(conv(x, res), ref, dtype)
        wino = winograd.use_winograd(34, 2, 2, *hw)
        assert wino == (hw == (9, 7)) and len(launches) == wino


def _counting(calls, fn):
    def run(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return run
