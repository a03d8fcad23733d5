"""The CPU backend's convolutions and fused Res2Net blocks against the reference.

Every numbered conv variant runs on odd shapes and on hypothesis-drawn
arguments; the fused chain and bottleneck run on both stypes, strides 1-3,
scales 1-8 and groups 1 and 8, including rows narrower than a register tile
and rows whose last tile is partial. (The PyTorch comparisons in
test_res2net.py and test_ops_vs_torch.py also run on this backend: it is the
default for NumPy arrays when Numba is installed.)
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import DTYPES, as_float64, assert_close, randn, random_block
from hypothesis import example, given
from hypothesis import strategies as st

import r2n
from r2n import _checks
from r2n.cpu import conv, microkernel, res2net
from r2n.cpu.conv import v4_simd, v5_winograd

VARIANTS = sorted(conv.VARIANTS)

# n, c_in, c_out, h, w, kernel, stride, padding, dilation, groups
CONV_CASES = [
    (1, 26, 26, 7, 9, (3, 3), 1, 1, 1, 1),  # a Res2Net chunk conv, odd image
    (3, 15, 6, 7, 9, (3, 2), (2, 1), 1, (1, 2), 3),  # 3 groups of 5 channels
    (2, 15, 48, 7, 9, (3, 3), 2, 1, 1, 3),  # > one channel block per group
    (1, 64, 40, 9, 7, (1, 1), 1, 0, 1, 1),  # 1x1: the plane as one row
    (2, 64, 40, 9, 7, (1, 1), 2, 0, 1, 1),  # strided 1x1 (the shortcut)
    (2, 24, 40, 15, 16, (1, 1), 2, 0, 1, 1),  # strided 1x1, 8x8 out: gathered, then the GEMM
    (1, 37, 70, 13, 14, (1, 1), 2, 0, 1, 1),  # strided 1x1, 7x7 out: gathered, then 7-pixel tiles
    (1, 20, 33, 9, 7, (1, 1), (3, 2), 0, 1, 1),  # 3x4 out: gathered, a tile shifted back
    (2, 16, 16, 13, 11, (3, 3), 1, 2, 2, 16),  # depthwise, dilated
    (1, 8, 40, 17, 19, (5, 5), 3, 2, 1, 1),  # 5x5, stride 3
    (3, 4, 33, 2, 3, (1, 1), 1, 0, 1, 1),  # plane smaller than a tile
    (1, 32, 32, 14, 14, (3, 3), 1, 1, 1, 1),  # row of 14: last tile shifted back
    (0, 8, 8, 5, 5, (3, 3), 1, 1, 1, 1),  # batch 0
]


def _conv_case(rng, case, dtype):
    n, c_in, c_out, h, w, k, s, p, d, g = case
    x = randn(rng, n, c_in, h, w, dtype=dtype)
    weight = randn(rng, c_out, c_in // g, *k, dtype=dtype)
    bias = randn(rng, c_out, dtype=dtype)
    return x, weight, bias, dict(stride=s, padding=p, dilation=d, groups=g)


def _reference(x, weight, bias, **kw):
    to64 = [a.astype(np.float64) for a in (x, weight, bias)]
    return r2n.conv2d(*to64, backend="reference", **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_every_conv_variant_matches_the_reference(rng, case, variant, dtype):
    x, weight, bias, kw = _conv_case(rng, case, dtype)
    args = _checks.conv2d_args("conv2d", x, weight, bias, **kw)
    if variant in ("5_winograd", "6_winograd_4x4") and not v5_winograd.applicable(
        weight.shape[2:], args["stride"], args["dilation"]
    ):
        with pytest.raises(ValueError, match="needs a 3x3 kernel, stride 1 and dilation 1"):
            conv.VARIANTS[variant](x, weight, bias, **args)
        return
    out = conv.VARIANTS[variant](x, weight, bias, **args)
    ref = _reference(x, weight, bias, **kw)
    assert out.dtype == dtype and out.shape == ref.shape and out.flags.c_contiguous
    if out.size:
        assert_close(out, ref)


@given(
    n=st.integers(1, 2),
    groups=st.integers(1, 3),
    c_in_g=st.integers(1, 4),
    c_out_g=st.integers(1, 40),
    h=st.integers(1, 12),
    w=st.integers(1, 20),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    seed=st.integers(0, 2**32 - 1),
)
@example(1, 1, 4, 33, 1, 1, 1, 1, (1, 1), (0, 0), (1, 1), 0)  # 1x1 image, 1x1 kernel
@example(2, 1, 3, 32, 3, 17, 3, 3, (1, 2), (1, 1), (1, 1), 1)  # stride-2 row narrower than a tile
def test_simd_conv_matches_the_reference_on_drawn_arguments(
    n, groups, c_in_g, c_out_g, h, w, kh, kw, stride, padding, dilation, seed
):
    rng = np.random.default_rng(seed)
    x = randn(rng, n, groups * c_in_g, h, w)
    weight = randn(rng, groups * c_out_g, c_in_g, kh, kw)
    bias = randn(rng, groups * c_out_g)
    kw_ = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    try:
        args = _checks.conv2d_args("conv2d", x, weight, bias, **kw_)
    except ValueError:
        return  # kernel larger than the padded input: the shared checks reject it
    out = v4_simd.conv2d_4_simd(x, weight, bias, **args)
    assert_close(out, _reference(x, weight, bias, **kw_))


# stype, stride, scale, groups, width, batch, H, W
CHAIN_CASES = [
    ("normal", 1, 4, 1, 26, 1, 7, 9),
    ("normal", 1, 2, 1, 8, 3, 9, 7),
    ("normal", 1, 8, 8, 16, 2, 7, 9),
    ("stage", 1, 1, 1, 8, 2, 7, 9),
    ("stage", 2, 4, 8, 16, 3, 9, 7),
    ("stage", 3, 8, 1, 8, 1, 9, 7),
    ("stage", 2, 3, 1, 40, 2, 5, 11),
    ("normal", 1, 4, 1, 40, 1, 14, 14),  # 14-wide rows: a shifted last tile
    ("stage", 2, 4, 1, 12, 1, 3, 29),  # 2-row output, 15-wide rows
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CHAIN_CASES, ids=str)
def test_fused_chain_matches_the_reference(rng, case, dtype):
    stype, stride, scale, groups, width, n, h, w = case
    nums = max(scale - 1, 1)
    x = randn(rng, n, scale * width, h, w, dtype=dtype)
    weights = [randn(rng, width, width // groups, 3, 3, dtype=dtype) for _ in range(nums)]
    biases = [randn(rng, width, dtype=dtype) for _ in range(nums)]
    kw = dict(scale=scale, stype=stype, stride=stride, groups=groups)
    out = r2n.res2net_chain(x, weights, biases, backend="cpu", **kw)
    ref = r2n.res2net_chain(
        x.astype(np.float64),
        [a.astype(np.float64) for a in weights],
        [a.astype(np.float64) for a in biases],
        backend="reference",
        **kw,
    )
    assert out.dtype == dtype
    assert_close(out, ref)


def test_prepared_chain_gives_the_same_result_on_every_call(rng):
    x = randn(rng, 2, 32, 7, 9, dtype=np.float32)
    weights = [randn(rng, 8, 8, 3, 3, dtype=np.float32) for _ in range(3)]
    biases = [randn(rng, 8, dtype=np.float32) for _ in range(3)]
    args = _checks.chain_args("res2net_chain", x, weights, biases, 4, "normal", 1, 1)
    prepared = res2net.PreparedChain(
        weights, biases, dtype=np.float32,
        **{k: args[k] for k in ("scale", "stype", "stride", "groups", "width")},
    )  # fmt: skip
    first = prepared(x)
    np.testing.assert_array_equal(prepared(x), first)
    expected = r2n.res2net_chain(x, weights, biases, scale=4, backend="reference")
    assert_close(first, expected)


def test_a_narrower_image_after_a_wider_one_gives_the_reference(rng):
    # The reproducer: widths 7 and 4 pad to the same scratch width,
    # and the wider call left its columns in the "normal" chain's second
    # padded buffer, read back as the narrower image's zero padding.
    weights = [randn(rng, 3, 3, 3, 3, dtype=np.float32) for _ in range(3)]
    wide = randn(rng, 1, 12, 6, 7, dtype=np.float32)
    narrow = randn(rng, 1, 12, 6, 4, dtype=np.float32)
    w64 = [a.astype(np.float64) for a in weights]
    expected = r2n.res2net_chain(narrow.astype(np.float64), w64, scale=4, backend="reference")
    r2n.res2net_chain(wide, weights, scale=4, backend="cpu")
    assert_close(r2n.res2net_chain(narrow, weights, scale=4, backend="cpu"), expected)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_large_stage_batch_runs_in_sub_batches_with_the_same_result(rng, monkeypatch, threads):
    # Every batch counts as large: 5 images run 1 or 2 at a time (2 + 2 + 1).
    monkeypatch.setattr(res2net, "SUB_BATCH_BYTES", 0)
    x = randn(rng, 5, 4 * 12, 9, 7, dtype=np.float32)
    weights = [randn(rng, 12, 12, 3, 3, dtype=np.float32) for _ in range(3)]
    biases = [randn(rng, 12, dtype=np.float32) for _ in range(3)]
    kw = dict(scale=4, stype="stage", stride=2)
    before = r2n.get_num_threads()
    r2n.set_num_threads(min(threads, before))
    try:
        out = r2n.res2net_chain(x, weights, biases, backend="cpu", **kw)
    finally:
        r2n.set_num_threads(before)
    to64 = [[a.astype(np.float64) for a in arrays] for arrays in (weights, biases)]
    assert_close(out, r2n.res2net_chain(x.astype(np.float64), *to64, backend="reference", **kw))


@pytest.mark.parametrize("dtype", DTYPES)
def test_stage_convs_in_one_launch_match_one_launch_per_conv(rng, dtype):
    # The stage chain runs its convs as one launch (n_conv > 1): each conv must
    # read its own input chunk, weights and bias and write its own output chunk,
    # exactly as separate launches do (same arithmetic, so equal bits).
    n, width, groups, nums, h, w = 2, 24, 3, 3, 9, 11
    xp = randn(rng, n, nums * width, h + 2, w + 2, dtype=dtype)
    weights = [randn(rng, width, width // groups, 3, 3, dtype=dtype) for _ in range(nums)]
    biases = [randn(rng, width, dtype=dtype) for _ in range(nums)]
    packed = [microkernel.pack_weights(wt, groups) for wt in weights]
    geometry = (width, groups, (3, 3), (2, 2), (0, 0), (1, 1))
    h_out, w_out = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    # x is padded with slack columns, as the chain's prologue leaves it.
    need = microkernel.min_input_width(w_out, 3, 2, 1)
    xp = np.ascontiguousarray(np.pad(xp, ((0, 0), (0, 0), (0, 0), (0, max(0, need - w - 2)))))
    separate = np.full((n, nums * width + 5, h_out, w_out), np.nan, dtype)
    for i in range(nums):
        v4_simd.conv_simd(
            xp, packed[i], *geometry, biases[i], separate, out_c0=i * width, activation="relu",
            x_c0=i * width, c_in_g=width // groups,
        )  # fmt: skip
    merged = np.full_like(separate, np.nan)
    v4_simd.conv_simd(
        xp, np.concatenate(packed), *geometry, np.concatenate(biases), merged, activation="relu",
        c_in_g=width // groups, n_conv=nums, x_conv_step=width,
    )  # fmt: skip
    np.testing.assert_array_equal(merged, separate)
    assert np.isnan(merged[:, nums * width :]).all()  # channels past the convs untouched
    with pytest.raises(ValueError, match="n_conv"):
        v4_simd.conv_simd(
            xp, np.concatenate(packed), *geometry, np.concatenate(biases), merged,
            residual=merged, n_conv=nums, x_conv_step=width,
        )  # fmt: skip


def test_set_num_threads_changes_the_thread_count_and_not_the_result(rng):
    x = randn(rng, 1, 26, 7, 9, dtype=np.float32)
    weight = randn(rng, 26, 26, 3, 3, dtype=np.float32)
    before = r2n.get_num_threads()
    try:
        r2n.set_num_threads(1)
        assert r2n.get_num_threads() == 1
        one = r2n.conv2d(x, weight, padding=1, backend="cpu")
        r2n.set_num_threads(before)
        np.testing.assert_allclose(r2n.conv2d(x, weight, padding=1, backend="cpu"), one)
    finally:
        r2n.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -1, 10**6])
def test_set_num_threads_rejects_counts_outside_numbas_pool(bad):
    with pytest.raises(ValueError, match="n must be an int from 1 to NUMBA_NUM_THREADS"):
        r2n.set_num_threads(bad)


@pytest.mark.parametrize("bad", [1.5, True, "2"])
def test_set_num_threads_rejects_non_integers(bad):
    with pytest.raises(TypeError, match="n must be an int, got"):
        r2n.set_num_threads(bad)


def test_set_num_threads_accepts_numpy_integers():
    before = r2n.get_num_threads()
    try:
        r2n.set_num_threads(np.int64(1))
        assert r2n.get_num_threads() == 1
    finally:
        r2n.set_num_threads(before)


def test_prepared_chain_refuses_an_input_it_was_not_prepared_for(rng):
    weights = [randn(rng, 8, 8, 3, 3, dtype=np.float32) for _ in range(3)]
    prepared = res2net.PreparedChain(
        weights, None, scale=4, stype="normal", stride=1, groups=1, width=8, dtype=np.float32
    )
    with pytest.raises(ValueError, match=r"shape \(N, 32, H >= 1, W >= 1\)"):
        prepared(randn(rng, 1, 8, 4, 4, dtype=np.float32))
    with pytest.raises(ValueError, match="float32"):
        prepared(randn(rng, 1, 32, 4, 4, dtype=np.float64))


def test_bottleneck_run_refuses_an_out_that_overlaps_x(rng):
    # An identity block: conv3 writes out while it still reads x as the
    # shortcut, so out=x gave wrong values.
    params = random_block(rng, 16, 16, 4, 4, dtype=np.float32)
    x = randn(rng, 1, 16, 7, 9, dtype=np.float32)
    args = _checks.bottle2neck_args("bottle2neck", x, params, 4, "normal", 1, 1)
    block = res2net.PreparedBottle2neck(params, args, np.float32)
    expected = r2n.bottle2neck(x.astype(np.float64), as_float64(params), scale=4,
                               backend="reference")  # fmt: skip
    with pytest.raises(ValueError, match="overlapping x"):
        block.run(x, args, out=x)
    both = randn(rng, 2, 16, 7, 9, dtype=np.float32)  # out the second half of x's buffer
    x_view = both.reshape(-1)[8 * 7 * 9 : 8 * 7 * 9 + x.size].reshape(x.shape)
    with pytest.raises(ValueError, match="overlapping x"):
        block.run(x_view, args, out=both[1:])
    with pytest.raises(ValueError, match=r"\(1, 16, 7, 9\)"):
        block.run(x, args, out=np.empty((1, 16, 7, 8), np.float32))
    with pytest.raises(ValueError, match="not C-contiguous"):
        block.run(x, args, out=np.empty((1, 16, 9, 7), np.float32).transpose(0, 1, 3, 2))
    with pytest.raises(ValueError, match="shape args were made for"):
        block.run(randn(rng, 1, 16, 7, 8, dtype=np.float32), args)
    out = np.empty((1, 16, 7, 9), np.float32)
    assert block.run(x, args, out=out) is out
    assert_close(out, expected)


def test_prepared_layers_fed_their_own_output_give_the_reference(rng):
    """With reuse_output, a layer's output is its buffer for the next call of
    that shape: a call whose input (or residual) is that buffer must not
    write its result over the input it is reading."""
    from r2n import _backends

    params = random_block(rng, 16, 16, 4, 4, dtype=np.float32)
    block = _backends.prepare(
        "bottle2neck", "cpu", "numpy", params, scale=4, stype="normal", stride=1, groups=1,
        reuse_output=True,
    )  # fmt: skip
    x = randn(rng, 1, 16, 7, 9, dtype=np.float32)
    p64 = as_float64(params)
    once = r2n.bottle2neck(x.astype(np.float64), p64, scale=4, backend="reference")
    twice = r2n.bottle2neck(once, p64, scale=4, backend="reference")
    y = block(x)
    assert_close(y, once)
    z = block(y)
    assert not np.shares_memory(y, z)
    assert_close(y, once)  # the input was not overwritten
    assert_close(z, twice)

    w = randn(rng, 16, 16, 3, 3, dtype=np.float32) / 12
    b = randn(rng, 16, dtype=np.float32)
    options = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, activation="relu")
    conv = _backends.prepare("conv2d", "cpu", "numpy", w, b, reuse_output=True, **options)
    ref = _backends.prepare("conv2d", "reference", "numpy", w.astype(np.float64),
                            b.astype(np.float64), **options)  # fmt: skip
    y = conv(x)
    y_ref = ref(x.astype(np.float64))
    assert_close(y, y_ref)
    assert_close(conv(y, residual=y), ref(y_ref, residual=y_ref))
    assert_close(y, y_ref)


def test_numpy_arrays_default_to_the_cpu_backend_when_numba_is_installed():
    assert r2n.implements("cpu", "res2net_chain")
    assert "cpu" in r2n.available_backends()


def test_importing_r2n_does_not_import_numba():
    code = "import sys, r2n; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


# n, c_in, c_out, h, w, x_c0, out_c0 (channels before the conv's in x / out)
GEMM_1X1_CASES = [
    (1, 13, 15, 7, 9, 0, 0),  # 63 pixels: one 48-pixel tile + a tail shifted back; 15 = 8 + 7
    (2, 64, 104, 8, 8, 0, 0),  # 104 = 3 x 32 + a half block of 8
    (1, 37, 33, 5, 4, 3, 5),  # 20 pixels: overlapping tails; channel offsets in x and out
    (3, 9, 8, 4, 4, 0, 2),  # one vector per plane
    (1, 24, 40, 14, 14, 0, 0),  # several chunks at batch 1, split over threads
    (2, 600, 17, 7, 9, 1, 0),  # the reduction in 3 blocks (K_BLOCK), with a shifted tail
]
# conv_1x1_rows (7-pixel tiles, planes of >= 7 pixels) on the cases above, and:
GEMM_1X1_ROWS_CASES = [
    (1, 150, 50, 7, 7, 2, 1),  # 3 reduction blocks (ROWS_K_BLOCK) of 64, 64, 22; 50 = 32 + 18
    (3, 70, 104, 3, 3, 0, 0),  # 9 pixels: a tile + one shifted back over it; a half block
    (1, 130, 33, 1, 7, 0, 2),  # one tile per plane; 33 = 32 + a half block of 1
    (1, 200, 70, 14, 14, 0, 0),  # 28 tiles, parts of them per job at 2 threads
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "launcher, case",
    [("conv_1x1", c) for c in GEMM_1X1_CASES]
    + [("conv_1x1_rows", c) for c in GEMM_1X1_CASES + GEMM_1X1_ROWS_CASES],
    ids=str,
)
@pytest.mark.parametrize("epilogue", ["plain", "residual+relu", "leaky"])
def test_1x1_gemm_matches_the_reference(rng, launcher, case, epilogue, dtype):
    """The 1x1 GEMMs of r2n.cpu.conv.gemm_1x1 (pixels in the lanes, epilogue
    in registers; and 7-pixel tiles with a blocked reduction, for small
    planes), on channel slices of larger arrays, at 1 and 2 threads
    (different job splits give identical results), every output channel
    written and nothing else."""
    from r2n.cpu.conv import gemm_1x1

    n, c_in, c_out, h, w, x_c0, out_c0 = case
    x = randn(rng, n, x_c0 + c_in + 2, h, w, dtype=dtype)
    weight = randn(rng, c_out, c_in, 1, 1, dtype=dtype)
    bias = randn(rng, c_out, dtype=dtype)
    res = randn(rng, n, c_out + 3, h, w, dtype=dtype) if epilogue == "residual+relu" else None
    slope = 0.1 if epilogue == "leaky" else 0.0
    ref = _reference(x[:, x_c0 : x_c0 + c_in], weight, bias, stride=1, padding=0, dilation=1)
    if res is not None:
        ref = ref + res[:, 2 : 2 + c_out].astype(np.float64)
    if epilogue != "plain":
        ref = np.where(ref < 0, slope * ref, ref)
    outs = []
    for threads in (1, 2):
        out = np.full((n, out_c0 + c_out + 1, h, w), np.nan, dtype)
        before = r2n.get_num_threads()
        r2n.set_num_threads(min(threads, before))
        try:
            getattr(gemm_1x1, launcher)(
                x, microkernel.pack_weights(weight, 1), c_out, bias, out, out_c0=out_c0,
                activation={"plain": None, "leaky": "leaky_relu"}.get(epilogue, "relu"),
                negative_slope=slope, residual=res, residual_c0=2, x_c0=x_c0, c_in=c_in,
            )  # fmt: skip
        finally:
            r2n.set_num_threads(before)
        assert np.isnan(out[:, :out_c0]).all() and np.isnan(out[:, out_c0 + c_out :]).all()
        assert_close(out[:, out_c0 : out_c0 + c_out], ref, dtype)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GEMM_1X1_CASES + GEMM_1X1_ROWS_CASES, ids=str)
def test_1x1_rows_transposed_epilogue_changes_no_bit(rng, monkeypatch, case, dtype):
    """conv_1x1_rows' in-register transpose (ROWS_TRANSPOSED) gives the bits
    of the scalar epilogue alone, with a residual and a leaky ReLU, at 1
    and 2 threads (parts of a plane that start inside a vector of pixels)."""
    from r2n.cpu.conv import gemm_1x1

    n, c_in, c_out, h, w, x_c0, out_c0 = case
    x = randn(rng, n, x_c0 + c_in, h, w, dtype=dtype)
    packed = microkernel.pack_weights(randn(rng, c_out, c_in, 1, 1, dtype=dtype), 1)
    bias = randn(rng, c_out, dtype=dtype)
    res = randn(rng, n, c_out, h, w, dtype=dtype)
    outs = []
    before = r2n.get_num_threads()
    try:
        for transposed in (False, True):
            monkeypatch.setattr(gemm_1x1, "ROWS_TRANSPOSED", transposed)
            for threads in sorted({1, min(2, before)}):
                r2n.set_num_threads(threads)
                out = np.full((n, out_c0 + c_out, h, w), np.nan, dtype)
                gemm_1x1.conv_1x1_rows(
                    x, packed, c_out, bias, out, out_c0=out_c0, activation="leaky_relu",
                    negative_slope=0.1, residual=res, residual_c0=0, x_c0=x_c0, c_in=c_in,
                )  # fmt: skip
                outs.append(out)
    finally:
        r2n.set_num_threads(before)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    assert not np.isnan(outs[0][:, out_c0:]).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "px_count, ch_count, has_res, relu, slope",
    [
        (None, None, True, True, 0.1),
        (3, 5, True, True, 0.0),
        (None, 1, False, False, 0.0),
        (1, None, True, True, 0.25),
        (7, -1, False, True, 0.0),
    ],  # fmt: skip
    ids=str,
)
def test_partial_transposed_epilogue_touches_only_its_block(
    rng, px_count, ch_count, has_res, relu, slope, dtype
):
    """gemm_1x1.transposed_epilogue_kernel(partial=True) (the Winograd
    steps' last transpose) writes exactly its px_count x ch_count outputs,
    with the scalar epilogue's values, and nothing else (NaN elsewhere); the
    whole-block kernel gives the same bits where both apply."""
    import numba

    from r2n.cpu.conv import gemm_1x1

    lanes = microkernel.VECTOR_BYTES // np.dtype(dtype).itemsize
    px = lanes if px_count is None else px_count
    ch = lanes if ch_count is None else lanes - 1 if ch_count == -1 else ch_count  # -1: L - 1
    partial = gemm_1x1.transposed_epilogue_kernel(partial=True)
    whole = gemm_1x1.transposed_epilogue_kernel()

    @numba.njit
    def run_partial(buf, out, bias, res, has_res, relu, slope, px, ch):
        partial(buf, 3, 40, out, 2, 50, bias, 1, res, 2, 50, has_res, relu, slope, px, ch)

    @numba.njit
    def run_whole(buf, out, bias, res, has_res, relu, slope):
        whole(buf, 3, 40, out, 2, 50, bias, 1, res, 2, 50, has_res, relu, slope)

    buf = randn(rng, 40 * lanes + 10, dtype=dtype)
    bias = randn(rng, lanes + 3, dtype=dtype)
    res = randn(rng, 50 * lanes + 5, dtype=dtype)
    out = np.full(50 * lanes + 5, np.nan, dtype)
    run_partial(buf, out, bias, res, has_res, relu, dtype(slope), px, ch)
    expected = np.full_like(out, np.nan)
    for c in range(ch):
        for p in range(px):
            v = buf[3 + p * 40 + c] + bias[1 + c]
            if has_res:
                v = v + res[2 + c * 50 + p]
            if relu and v < 0:
                v = slope * v
            expected[2 + c * 50 + p] = v
    np.testing.assert_array_equal(out, expected)
    if px == lanes and ch == lanes:
        again = np.full_like(out, np.nan)
        run_whole(buf, again, bias, res, has_res, relu, dtype(slope))
        np.testing.assert_array_equal(again, expected)


@pytest.mark.parametrize("itemsize", [4, 8])
def test_1x1_gemm_job_split_covers_every_pixel_once(itemsize):
    """Chunks are whole vectors, the last runs to the plane's end and holds at
    least one vector (its last tile is shifted back inside it, never into a
    neighbour's pixels), and the channel splits cover every 8-channel block."""
    from r2n.cpu.conv import gemm_1x1

    lanes = 64 // itemsize
    for n_img in (1, 2, 8):
        for plane in (lanes, lanes + 1, 49, 63, 196, 784, 3136, 12544):
            for k_len in (3, 64, 1024):
                for threads in (1, 2, 3, 16):
                    chunk, n_chunks, n_splits = gemm_1x1.job_split(
                        n_img, 40, plane, k_len, itemsize, threads
                    )
                    assert chunk % lanes == 0 and n_chunks >= 1 and 1 <= n_splits <= 5
                    assert (n_chunks - 1) * chunk < plane
                    assert plane - (n_chunks - 1) * chunk >= lanes


def test_1x1_rows_job_split_gives_every_job_whole_tiles():
    """conv_1x1_rows' parts: between 1 and the plane's whole tiles (so every
    part holds at least one tile), jobs shared evenly or >= 8 per thread."""
    from r2n.cpu.conv import gemm_1x1

    for n_img in (1, 2, 8):
        for c_out in (8, 33, 416, 2048):
            for plane in (7, 9, 49, 63, 196):
                for threads in (1, 2, 3, 16):
                    n_parts = gemm_1x1.rows_job_split(n_img, c_out, plane, 4, threads)
                    assert 1 <= n_parts <= plane // microkernel.TILE_PIXELS
                    jobs = n_img * -(-c_out // 32) * n_parts
                    assert jobs % threads == 0 or jobs >= 8 * threads or n_parts == plane // 7
