"""r2n.gpu conv2d, res2net_chain and bottle2neck under the CPU emulator (tests/cuda_emu).

The CUDA sources are compiled with g++ and run on NumPy arrays, every launch
twice (ascending and descending thread order) with canaries around every
array, so a race, an unguarded load of uninitialised shared memory or an
out-of-bounds write fails here without a GPU. Results are compared with the
float64 reference (r2n.reference) on odd shapes: 7x9 images, batch 1, groups
of 5 channels, depthwise, strides, padding, dilation, and sizes that are not
multiples of any tile (several tiles along every GEMM axis).
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_emu import EmuExecutor
from gpu_cases import chain_id, chain_inputs, conv_id, conv_inputs
from helpers import DTYPES, assert_close, randn

from r2n import Bottle2neckParams, FoldedConv, _checks
from r2n import reference as ref
from r2n.gpu import conv as gconv
from r2n.gpu import prepared as gprep
from r2n.gpu import res2net as gres

DTYPE_IDS = ["f64", "f32"]


@pytest.fixture(scope="module")
def ex():
    return EmuExecutor()


def _f64(a):
    return None if a is None else np.asarray(a, np.float64)


def _read_only(*arrays):
    """Mark inputs read-only: the emulator fails a launch that writes to one."""
    for a in arrays:
        if a is not None:
            a.flags.writeable = False
    return arrays


# --------------------------------------------------------------------------- #
# conv2d
# --------------------------------------------------------------------------- #

# n, c_in, h, w, c_out, (kh, kw), stride, padding, dilation, groups
CONV_CASES = [
    (1, 3, 7, 9, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (2, 15, 7, 9, 15, (3, 3), (2, 2), (1, 1), (1, 1), 3),  # 3 groups of 5
    (1, 6, 7, 9, 6, (3, 3), (1, 1), (1, 1), (1, 1), 6),  # depthwise
    (2, 4, 7, 9, 8, (3, 3), (2, 1), (2, 0), (1, 1), 4),  # depthwise x2, mixed stride/pad
    (1, 5, 9, 7, 7, (3, 2), (1, 2), (2, 1), (2, 3), 1),  # dilation, rectangular kernel
    (1, 3, 11, 13, 4, (5, 5), (3, 2), (2, 2), (1, 1), 1),
    (2, 10, 7, 9, 12, (1, 1), (1, 1), (0, 0), (1, 1), 1),  # 1x1 -> GEMM
    (1, 6, 7, 9, 9, (1, 1), (1, 1), (0, 0), (1, 1), 3),  # grouped 1x1
    (1, 8, 7, 9, 6, (1, 1), (2, 2), (0, 0), (1, 1), 1),  # strided 1x1 (shortcut)
    # several tiles along every axis: 70 channels (> 64 rows), K = 20 * 9 > 16,
    # 13 x 11 = 143 pixels (> 128 columns)
    (1, 20, 13, 11, 70, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (1, 40, 13, 11, 70, (1, 1), (1, 1), (0, 0), (1, 1), 1),
]


def _conv_inputs(rng, case, dtype):
    x, weight, bias, args = conv_inputs(rng, case, dtype)
    return (*_read_only(x, weight, bias), args)


#: The float32 variants (5_tensor_core: tests/test_gpu_tensor_core_emulated.py).
FP32_VARIANTS = [v for v, p in gconv.VARIANT_PRECISIONS.items() if "fp32" in p]


#: The variants a chain can run its 3x3 convs on: every float32 step of the ladder.
CHAIN_VARIANTS = [v for v in FP32_VARIANTS if v != "gemm_1x1"]


def _variants_for(case):
    k, s, p = case[5], case[6], case[7]
    return [v for v in FP32_VARIANTS if v != "gemm_1x1" or gconv.is_gemm_1x1(k, s, p)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CONV_CASES, ids=[conv_id(c) for c in CONV_CASES])
def test_every_conv_variant_matches_reference(ex, rng, case, dtype):
    x, weight, bias, args = _conv_inputs(rng, case, dtype)
    x_copy = x.copy()
    expected = ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args)
    for variant in _variants_for(case):
        out = gconv.conv2d(x, weight, bias, executor=ex, variant=variant, **args)
        assert out.dtype == dtype and out.shape == args["out_shape"], variant
        assert_close(out, expected)
    out = gconv.conv2d(x, weight, None, executor=ex, **args)  # the default variant, no bias
    assert_close(out, ref.conv2d(_f64(x), _f64(weight), None, **args))
    np.testing.assert_array_equal(x, x_copy)  # inputs are never modified


def _random_conv_case(rng):
    """A random valid geometry: kernel up to 4, stride up to 3, padding, dilation, groups."""
    groups = int(rng.choice([1, 1, 2, 3]))
    c_in, c_out = groups * int(rng.integers(1, 6)), groups * int(rng.integers(1, 12))
    kernel = tuple(int(k) for k in rng.integers(1, 5, 2))
    dilation = tuple(int(d) for d in rng.integers(1, 3, 2))
    padding = tuple(int(rng.integers(0, k)) for k in kernel)
    stride = tuple(int(s) for s in rng.integers(1, 4, 2))
    h, w = (
        int(v) + (k - 1) * d
        for v, k, d in zip(rng.integers(1, 12, 2), kernel, dilation, strict=True)
    )
    return (int(rng.integers(1, 3)), c_in, h, w, c_out, kernel, stride, padding, dilation, groups)


@pytest.mark.parametrize("seed", range(12))
def test_random_geometries_match_reference(ex, seed):
    rng = np.random.default_rng(1000 + seed)
    case = _random_conv_case(rng)
    dtype = DTYPES[seed % 2]
    x, weight, bias, args = _conv_inputs(rng, case, dtype)
    expected = ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args)
    for variant in _variants_for(case):
        out = gconv.conv2d(x, weight, bias, executor=ex, variant=variant, **args)
        assert_close(out, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gemm_1x1_large_tile_matches_reference(ex, rng, dtype, monkeypatch):
    # The bigger tile (float32: 64 x 128, float64: 128 x 64) is picked for big
    # problems only; force it on a small one (not a multiple of either tile
    # side, 150 channels -> 2 or 3 row tiles, 143 pixels -> 2 or 3 column tiles).
    monkeypatch.setattr(gconv, "_LARGE_TILE_MIN_BLOCKS", 0)
    case = (2, 9, 13, 11, 150, (1, 1), (1, 1), (0, 0), (1, 1), 1)
    x, weight, bias, args = _conv_inputs(rng, case, dtype)
    ex.launches.clear()
    out = gconv.conv2d(x, weight, bias, executor=ex, **args)
    ctype = gconv._runtime.dtype_name(dtype)
    large = gconv.TILES["half" if ctype == "float" else "large"][ctype]
    assert ex.launches[-1] == ("gemm_1x1.cu", gconv._name("conv2d_gemm_1x1", ctype, large))
    assert_close(out, ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("variant", FP32_VARIANTS)
@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu"])
def test_fused_epilogue_matches_reference(ex, rng, dtype, variant, activation):
    case = (2, 6, 7, 9, 9, (1, 1), (1, 1), (0, 0), (1, 1), 3)
    x, weight, bias, args = _conv_inputs(rng, case, dtype)
    (residual,) = _read_only(randn(rng, *args["out_shape"], dtype=dtype))
    out = gconv.conv2d_fused(
        x,
        weight,
        bias,
        residual=residual,
        activation=activation,
        negative_slope=0.2,
        executor=ex,
        variant=variant,
        **args,
    )
    expected = ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args) + residual
    if activation == "relu":
        expected = np.maximum(expected, 0)
    elif activation == "leaky_relu":
        expected = np.where(expected < 0, 0.2 * expected, expected)
    assert_close(out, expected)


def test_relu_epilogue_propagates_nan(ex, rng):
    case = (1, 2, 3, 4, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    x, weight, bias, args = _conv_inputs(rng, case, np.float64)
    x = x.copy()
    x[0, 0, 1, 1] = np.nan
    out = gconv.conv2d_fused(x, weight, bias, activation="relu", executor=ex, **args)
    assert np.isnan(out[0, :, 1, 1]).all()  # every output whose window holds the NaN
    assert np.isfinite(out[0, :, 2, 3]).all()


def test_prepared_conv2d_matches_reference(ex, rng):
    case = (1, 6, 7, 9, 6, (3, 3), (2, 2), (1, 1), (1, 1), 2)
    x, weight, bias, args = _conv_inputs(rng, case, np.float32)
    layer = gprep.PreparedConv2d(
        weight,
        bias,
        stride=(2, 2),
        padding=(1, 1),
        dilation=(1, 1),
        groups=2,
        activation="leaky_relu",
        negative_slope=0.1,
        executor=ex,
    )
    residual = randn(rng, *args["out_shape"], dtype=np.float32)
    expected = ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args) + residual
    assert_close(layer(x, residual=residual), np.where(expected < 0, 0.1 * expected, expected))
    with pytest.raises(ValueError, match="residual"):
        layer(x, residual=residual[:, :1])
    with pytest.raises(TypeError, match="dtype"):
        layer(x.astype(np.float64))


def test_launcher_rejects_what_the_kernels_cannot_take(ex, rng):
    case = (1, 4, 7, 9, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    x, weight, bias, args = _conv_inputs(rng, case, np.float32)
    with pytest.raises(ValueError, match="gemm_1x1"):
        gconv.conv2d(x, weight, bias, executor=ex, variant="gemm_1x1", **args)
    with pytest.raises(ValueError, match="variant"):
        gconv.conv2d(x, weight, bias, executor=ex, variant="4_magic", **args)
    bad = dict(args, out_shape=(1, 4, 7, 8))  # an out_shape that disagrees with the geometry
    with pytest.raises(ValueError, match="H_out, W_out"):
        gconv.conv2d(x, weight, bias, executor=ex, **bad)
    out = ex.empty((1, 6, 7, 9), np.float32)
    with pytest.raises(ValueError, match="output channels"):  # slice past the end
        gconv.launch_conv(
            ex,
            "1_naive",
            x,
            weight,
            bias,
            out,
            stride=(1, 1),
            padding=(1, 1),
            dilation=(1, 1),
            groups=1,
            out_c0=3,
        )
    with pytest.raises(ValueError, match="input channels"):
        gconv.launch_conv(
            ex,
            "1_naive",
            x,
            weight,
            bias,
            out[:, :4].copy(),
            stride=(1, 1),
            padding=(1, 1),
            dilation=(1, 1),
            groups=1,
            x_c0=1,
        )
    with pytest.raises(ValueError, match="weight must be a C-contiguous float32 array, got C-"):
        gconv.launch_conv(
            ex,
            "1_naive",
            x,
            weight.astype(np.float64),
            bias,
            out[:, :4].copy(),
            stride=(1, 1),
            padding=(1, 1),
            dilation=(1, 1),
            groups=1,
        )


@pytest.mark.parametrize("variant", FP32_VARIANTS)
def test_conv_reads_summed_slices_and_writes_its_slice_only(ex, rng, variant):
    # What the chain relies on: the input is x[:, 2:8] + a[:, 1:7], the output
    # goes to out[:, 3:12] and every other channel of out stays untouched.
    dtype = np.float64
    kernel = (1, 1) if variant == "gemm_1x1" else (3, 3)
    padding = (0, 0) if variant == "gemm_1x1" else (1, 1)
    x = randn(rng, 2, 10, 7, 9, dtype=dtype)
    a = randn(rng, 2, 8, 7, 9, dtype=dtype)
    weight = randn(rng, 9, 2, *kernel, dtype=dtype)  # 3 groups
    bias = randn(rng, 9, dtype=dtype)
    _read_only(x, a, weight, bias)
    out = randn(rng, 2, 13, 7, 9, dtype=dtype)
    before = out.copy()
    gconv.launch_conv(
        ex,
        variant,
        x,
        weight,
        bias,
        out,
        stride=(1, 1),
        padding=padding,
        dilation=(1, 1),
        groups=3,
        x_c0=2,
        add=a,
        add_c0=1,
        out_c0=3,
        activation="relu",
    )
    summed = x[:, 2:8] + a[:, 1:7]
    args = _checks.conv2d_args("conv2d", summed, weight, bias, 1, padding, 1, 3)
    expected = np.maximum(ref.conv2d(summed, weight, bias, **args), 0)
    assert_close(out[:, 3:12], expected)
    np.testing.assert_array_equal(out[:, :3], before[:, :3])
    np.testing.assert_array_equal(out[:, 12:], before[:, 12:])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("tile", ["wide", "large"])
def test_gemm_1x1_summed_slices_over_several_k_slices(ex, rng, dtype, tile):
    # float's plane loads keep the addend's element in a register of its own
    # and sum it when the slice is stored into shared memory (after the
    # previous slice's FMAs): K = 21 input channels make 2 slices of the wide
    # tile's 16 and 3 of the large tile's 8, each with a tail, so a sum
    # landing in the wrong slice or row, or an addend left from the previous
    # slice in the tail's rows, changes the result.
    x = randn(rng, 2, 25, 7, 9, dtype=dtype)
    a = randn(rng, 2, 23, 7, 9, dtype=dtype)
    weight = randn(rng, 150, 21, 1, 1, dtype=dtype)
    bias = randn(rng, 150, dtype=dtype)
    _read_only(x, a, weight, bias)
    out = randn(rng, 2, 153, 7, 9, dtype=dtype)
    before = out.copy()
    ex.launches.clear()
    gconv.launch_conv(
        ex,
        "gemm_1x1",
        x,
        weight,
        bias,
        out,
        stride=(1, 1),
        padding=(0, 0),
        dilation=(1, 1),
        groups=1,
        x_c0=3,
        add=a,
        add_c0=2,
        out_c0=2,
        tile=tile,  # forced: the rule picks by grid size (and float32 never "large")
    )
    ctype = gconv._runtime.dtype_name(dtype)
    shape = gconv._TILE_LARGE[ctype] if tile == "large" else gconv._TILE_WIDE
    assert ex.launches[-1] == ("gemm_1x1.cu", gconv._name("conv2d_gemm_1x1", ctype, shape))
    summed = _f64(x[:, 3:24]) + _f64(a[:, 2:23])
    args = _checks.conv2d_args("conv2d", summed, weight, bias, 1, 0, 1, 1)
    assert_close(out[:, 2:152], ref.conv2d(summed, _f64(weight), _f64(bias), **args), dtype)
    np.testing.assert_array_equal(out[:, :2], before[:, :2])
    np.testing.assert_array_equal(out[:, 152:], before[:, 152:])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "c_out_g, k_splits, file",
    [(5, 1, "conv_4_pipelined.cu"), (40, 1, "conv_4_pipelined.cu"), (5, 2, "conv_gemm.cu")],
    ids=["narrow", "wide", "split"],
)
def test_im2col_summed_slices_equal_the_conv_of_the_sum(ex, rng, dtype, c_out_g, k_splits, file):
    # float's im2col loads (the chain's convs i > 0) keep the addend's element
    # in a register of its own and add it when the slice is stored into shared
    # memory: the same sum x + a of the same two values as summing on load, so
    # the output must equal, bit for bit, the same kernel's conv of x + a
    # summed beforehand. 3 groups of 5 input channels: K = 45 rows, 3 slices of
    # 16 with a tail of 13 (split: 2 splits of 2 and 1 slices), border taps on
    # the 7x9 image; narrow (32 x 64) and wide (64 x 64) tiles, split-K.
    x = randn(rng, 1, 17, 7, 9, dtype=dtype)
    a = randn(rng, 1, 16, 7, 9, dtype=dtype)
    weight = randn(rng, 3 * c_out_g, 5, 3, 3, dtype=dtype)
    bias = randn(rng, 3 * c_out_g, dtype=dtype)
    _read_only(x, a, weight, bias)
    conv = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=3, activation="relu")
    conv.update(k_splits=k_splits, out_c0=2)
    out = randn(rng, 1, 3 * c_out_g + 3, 7, 9, dtype=dtype)
    before = out.copy()
    ex.launches.clear()
    gconv.launch_conv(ex, "4_pipelined", x, weight, bias, out, x_c0=1, add=a, add_c0=0, **conv)
    assert ex.launches[-1][0] == file
    summed = x[:, 1:16] + a[:, :15]  # in dtype, as the kernel sums
    of_sum = out.copy()
    gconv.launch_conv(ex, "4_pipelined", summed, weight, bias, of_sum, **conv)
    assert ex.launches[-1] == ex.launches[-2]
    channels = slice(2, 2 + 3 * c_out_g)
    np.testing.assert_array_equal(out[:, channels], of_sum[:, channels])
    args = _checks.conv2d_args("conv2d", summed, weight, bias, 1, 1, 1, 3)
    expected = ref.conv2d(_f64(summed), _f64(weight), _f64(bias), **args)
    assert_close(out[:, channels], np.maximum(expected, 0), dtype)
    np.testing.assert_array_equal(out[:, :2], before[:, :2])
    np.testing.assert_array_equal(out[:, channels.stop :], before[:, channels.stop :])


def test_batch_zero_launches_nothing(ex, rng):
    case = (1, 4, 7, 9, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    _, weight, bias, _ = _conv_inputs(rng, case, np.float32)
    x = np.zeros((0, 4, 7, 9), np.float32)
    args = _checks.conv2d_args("conv2d", x, weight, bias, 1, 1, 1, 1)
    ex.launches.clear()
    assert gconv.conv2d(x, weight, bias, executor=ex, **args).shape == (0, 4, 7, 9)
    assert ex.launches == []


# --------------------------------------------------------------------------- #
# res2net_chain
# --------------------------------------------------------------------------- #

# stype, stride, scale, groups, width, batch, H, W
CHAIN_CASES = [
    ("normal", 1, 1, 1, 5, 1, 7, 9),
    ("normal", 1, 2, 1, 6, 2, 7, 9),
    ("normal", 1, 4, 1, 5, 1, 9, 7),
    ("normal", 1, 4, 3, 15, 1, 7, 9),  # Res2NeXt: 3 groups of 5
    ("stage", 1, 4, 1, 6, 2, 7, 9),
    ("stage", 2, 1, 1, 5, 1, 7, 9),
    ("stage", 2, 2, 3, 15, 1, 9, 7),
    ("stage", 2, 4, 1, 5, 2, 7, 9),
    ("stage", 2, 4, 5, 5, 1, 7, 9),  # depthwise chain convs
    ("stage", 2, 4, 1, 5, 1, 1, 1),  # 1x1 images
    ("stage", 3, 3, 1, 4, 2, 2, 5),
    ("normal", 1, 3, 1, 70, 1, 3, 5),  # 2 channel tiles of 64, K = 630
]


def _chain_inputs(rng, case, dtype, biases=True):
    x, weights, bias, args = chain_inputs(rng, case, dtype, biases)
    _read_only(x, *weights, *(bias or []))
    return x, weights, bias, args


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CHAIN_CASES, ids=[chain_id(c) for c in CHAIN_CASES])
def test_chain_matches_reference(ex, rng, case, dtype):
    x, weights, biases, args = _chain_inputs(rng, case, dtype)
    x_copy = x.copy()
    expected = ref.res2net_chain(
        _f64(x), [_f64(w) for w in weights], [_f64(b) for b in biases], **args
    )
    for variant in (None, *CHAIN_VARIANTS):
        ex.launches.clear()
        out = gres.res2net_chain(x, weights, biases, executor=ex, variant=variant, **args)
        assert out.dtype == dtype
        assert_close(out, expected)
        # One launch per conv, the last chunk riding along with the first; a
        # "stage" chain's independent convs are one grouped launch.
        convs = max(args["scale"] - 1, 1)
        assert len(ex.launches) == (1 if args["stype"] == "stage" else convs)
    np.testing.assert_array_equal(x, x_copy)


def test_chain_and_block_of_batch_zero_launch_nothing(ex, rng):
    x, weights, biases, args = _chain_inputs(rng, ("normal", 1, 4, 1, 5, 1, 7, 9), np.float32)
    x0 = np.zeros((0,) + x.shape[1:], np.float32)
    args = _checks.chain_args("res2net_chain", x0, weights, biases, 4, "normal", 1, 1)
    ex.launches.clear()
    assert gres.res2net_chain(x0, weights, biases, executor=ex, **args).shape == args["out_shape"]
    case = (10, 16, 5, 4, "stage", 2, 1, "pool")
    params = _block(rng, case, np.float32)
    x0 = np.zeros((0, 10, 7, 9), np.float32)
    args = _checks.bottle2neck_args("bottle2neck", x0, params, 4, "stage", 2, 1)
    assert gres.bottle2neck(x0, params, executor=ex, **args).shape == (0, 16, 4, 5)
    assert ex.launches == []


@pytest.mark.parametrize("stype, stride", [("normal", 1), ("stage", 2)])
def test_chain_without_biases_matches_reference(ex, rng, stype, stride):
    case = (stype, stride, 4, 1, 6, 1, 7, 9)
    x, weights, _, args = _chain_inputs(rng, case, np.float64, biases=False)
    expected = ref.res2net_chain(x, weights, None, **args)
    assert_close(gres.res2net_chain(x, weights, None, executor=ex, **args), expected)


def test_prepared_chain_refuses_other_inputs(ex, rng):
    x, weights, biases, args = _chain_inputs(rng, ("normal", 1, 4, 1, 5, 1, 7, 9), np.float32)
    chain = gres.PreparedChain(
        weights,
        biases,
        dtype=np.float32,
        executor=ex,
        **{k: args[k] for k in ("scale", "stype", "stride", "groups", "width")},
    )
    with pytest.raises(ValueError, match="shape"):
        chain(x[:, :15].copy())
    with pytest.raises(ValueError, match="float32"):
        chain(x.astype(np.float64))
    x = x.copy()  # writable, for use as an (illegal) output
    with pytest.raises(ValueError, match="overlapping x"):
        chain(x, out=x)  # same shape at stride 1: only the overlap is wrong
    with pytest.raises(ValueError, match=r"\(1, 20, 7, 9\)"):
        chain(x, out=np.empty((1, 20, 7, 8), np.float32))


# --------------------------------------------------------------------------- #
# bottle2neck
# --------------------------------------------------------------------------- #

# c_in, c_out, width, scale, stype, stride, groups, shortcut ("identity", "conv", "pool")
BLOCK_CASES = [
    (12, 12, 3, 4, "normal", 1, 1, "identity"),
    (10, 16, 5, 2, "stage", 1, 1, "conv"),
    (10, 16, 6, 4, "stage", 2, 3, "conv"),
    (10, 16, 5, 4, "stage", 2, 1, "pool"),  # the "d" shortcut: ceil-mode pool of 7x9
    (8, 12, 4, 1, "stage", 2, 1, "pool"),
]


def _block(rng, case, dtype):
    c_in, c_out, width, scale, stype, stride, groups, kind = case
    nums = max(scale - 1, 1)

    def folded(co, ci, k=1, g=1):
        scale = float(np.sqrt(ci * k * k / g))  # keeps activations O(1)
        weight = randn(rng, co, ci // g, k, k, dtype=dtype) / scale
        return FoldedConv(*_read_only(weight, randn(rng, co, dtype=dtype)))

    chain = [folded(width, width, 3, groups) for _ in range(nums)]
    return Bottle2neckParams(
        conv1=folded(width * scale, c_in),
        chain_weights=[c.weight for c in chain],
        chain_biases=[c.bias for c in chain],
        conv3=folded(c_out, width * scale),
        shortcut=None if kind == "identity" else folded(c_out, c_in),
        shortcut_avg_pool=kind == "pool",
    )


def _params_f64(p):
    return p.map(_f64)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda c: "-".join(map(str, c)))
def test_bottle2neck_matches_reference(ex, rng, case, dtype):
    c_in, c_out, width, scale, stype, stride, groups, kind = case
    params = _block(rng, case, dtype)
    (x,) = _read_only(randn(rng, 2 if kind == "conv" else 1, c_in, 7, 9, dtype=dtype))
    args = _checks.bottle2neck_args("bottle2neck", x, params, scale, stype, stride, groups)
    expected = ref.bottle2neck(_f64(x), _params_f64(params), **args)
    out = gres.bottle2neck(x, params, executor=ex, **args)
    assert out.dtype == dtype
    assert_close(out, expected)
    block = gres.PreparedBottle2neck(
        params, scale=scale, stype=stype, stride=stride, groups=groups, executor=ex
    )
    assert_close(block(x), expected)
