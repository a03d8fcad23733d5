"""conv2d variant 5_tensor_core (precision "tf32" / "bf16") under the CPU emulator.

Every tensor-core path runs through tests/cuda_emu (mma.sync, ldmatrix and
cp.async emulated with the PTX ISA's layouts and rounding; two thread
orders; canaries and guard pages) on small odd shapes: 7x9 images, batch 1,
3 groups of 9 channels, channel counts and K = C_in/groups * kH * kW that are
not multiples of the tiles or of 8 / 16, several tiles along every axis.

Three checks per result, against the float64 reference:

* the format's norm-wise bound, r2n.gpu.conv_tensor_core.tolerance (2 u per
  conv; u = 2^-11 for TF32, 2^-8 for bf16; sqrt(layers) for chains);
* the rigorous element-wise bound of that module's docstring,
  |out - ref| <= ((2u + u^2)(1 + g_K) + g_K) (|W| * |X|) + epilogue rounding;
* exactness (single convs): the reference on operands rounded in NumPy as the
  kernel rounds them (TF32 round-to-nearest-away, bf16 nearest-even) agrees to
  float32 accumulation error, 1e-5, far below the rounding error itself, so a
  kernel that rounds the wrong operand, rounds the wrong way or skips the
  rounding fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_emu import EmuExecutor
from gpu_cases import chain_id, chain_inputs, conv_id, conv_inputs
from helpers import TOL, rel_err

import r2n
from r2n import Bottle2neckParams, FoldedConv, _backends, _checks
from r2n import reference as ref
from r2n.gpu import _runtime
from r2n.gpu import conv as gconv
from r2n.gpu import conv_tensor_core as tc
from r2n.gpu import prepared as gprep
from r2n.gpu import res2net as gres

PRECISIONS = tc.PRECISIONS


@pytest.fixture(scope="module")
def ex():
    return EmuExecutor()


def _f64(a):
    return None if a is None else np.asarray(a, np.float64)


def _read_only(*arrays):
    for a in arrays:
        if a is not None:
            a.flags.writeable = False
    return arrays


# --------------------------------------------------------------------------- #
# The kernel's rounding, in NumPy (checked against the PTX ISA's definitions
# in tests/test_cuda_emu_mma.py)
# --------------------------------------------------------------------------- #


def round_operand(a, precision):
    """float32 ``a`` rounded as the kernel rounds its operands, as float64."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    if precision == "tf32":  # cvt.rna: + half of the dropped 13 bits, truncate
        bits = (bits + 0x1000) & 0xFFFFE000
    else:  # cvt.rn.bf16: to nearest, ties to even
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.astype(np.uint32).view(np.float32).astype(np.float64).reshape(np.shape(a))


def elementwise_bound(x, weight, args, precision):
    """The module docstring's bound on |out - ref| (without bias, residual)."""
    u = tc.UNIT_ROUNDOFF[precision]
    k = weight.shape[1] * weight.shape[2] * weight.shape[3]
    gamma = k * 2.0**-24 / (1 - k * 2.0**-24)
    magnitude = ref.conv2d(np.abs(_f64(x)), np.abs(_f64(weight)), None, **args)
    return ((2 * u + u * u) * (1 + gamma) + gamma) * magnitude


def _activation(v, activation):
    if activation == "relu":
        return np.maximum(v, 0)
    if activation == "leaky_relu":
        return np.where(v < 0, 0.2 * v, v)
    return v


def canary_launch(ex, variant, rng, n, c_in, h, w, c_out, kernel, stride, padding, dilation,
                  groups, epilogue, x_c0, out_c0, precision, **launch):  # fmt: skip
    """Launch ``variant`` (r2n.gpu.conv.launch_conv) on read-only random inputs:
    x read from channels x_c0 .. of a wider array, the output (and residual)
    a channel slice from out_c0 of a NaN-filled array two channels wider;
    ``epilogue`` = (bias?, residual?, activation). Checks the canaries (the
    slice fully written, the channels around it untouched) and returns
    (out slice, x slice, weight, bias, args, residual slice as float64 or
    None, activation) for :func:`check_conv`."""
    has_bias, has_residual, activation = epilogue
    x_full = rng.standard_normal((n, c_in + x_c0 + 1, h, w)).astype(np.float32)
    # unscaled weights: the conv's terms outweigh the residual's, so the
    # rounded-operand check can tell the roundings apart (check_conv)
    weight = rng.standard_normal((c_out, c_in // groups, *kernel)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32) if has_bias else None
    x = x_full[:, x_c0 : x_c0 + c_in]
    args = _checks.conv2d_args("conv2d", x, weight, bias, stride, padding, dilation, groups)
    h_out, w_out = args["out_shape"][2:]
    out_c_total = c_out + out_c0 + 2
    residual = None
    if has_residual:
        residual = rng.standard_normal((n, out_c_total, h_out, w_out)).astype(np.float32)
    out = np.full((n, out_c_total, h_out, w_out), np.nan, np.float32)
    for a in (x_full, weight, bias, residual):
        if a is not None:
            a.flags.writeable = False
    gconv.launch_conv(
        ex, variant, x_full, weight, bias, out, stride=stride, padding=padding,
        dilation=dilation, groups=groups, x_c0=x_c0, residual=residual, out_c0=out_c0,
        activation=activation, negative_slope=0.2, precision=precision, **launch,
    )  # fmt: skip
    written = out[:, out_c0 : out_c0 + c_out]
    assert not np.isnan(written).any(), "an output element was not written"
    assert np.isnan(out[:, :out_c0]).all() and np.isnan(out[:, out_c0 + c_out :]).all()
    res = None if residual is None else residual[:, out_c0 : out_c0 + c_out].astype(np.float64)
    return written, x, weight, bias, args, res, activation


def check_conv(out, x, weight, bias, args, precision, residual=None, activation=None):
    """The three checks of the module docstring for one conv (+ bias + residual,
    then ReLU or LeakyReLU(0.2), both 1-Lipschitz: the bounds carry over)."""
    pre = ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args)
    if residual is not None:
        pre = pre + residual
    expected = _activation(pre, activation)
    err = rel_err(out, expected)
    assert err <= tc.tolerance(precision), f"{precision}: relative error {err:.2e}"
    epilogue = 2.0**-23 * (np.abs(pre) + (0 if bias is None else np.abs(bias)[:, None, None]))
    slack = elementwise_bound(x, weight, args, precision) + epilogue
    assert (np.abs(out - expected) <= slack).all(), "element-wise bound exceeded"
    rounded = ref.conv2d(
        round_operand(x, precision), round_operand(weight, precision), _f64(bias), **args
    )
    if residual is not None:
        rounded = rounded + residual
    rounded = _activation(rounded, activation)
    assert rel_err(rounded, expected) > 20 * TOL[np.dtype(np.float32)]  # the test can tell
    assert rel_err(out, rounded) <= TOL[np.dtype(np.float32)], "not the rounded operands' product"


# --------------------------------------------------------------------------- #
# conv2d
# --------------------------------------------------------------------------- #

# n, c_in, h, w, c_out, (kh, kw), stride, padding, dilation, groups
CONV_CASES = [
    (1, 3, 7, 9, 9, (3, 3), (1, 1), (1, 1), (1, 1), 1),  # K = 27: not a multiple of 8 or 16
    (2, 27, 7, 9, 27, (3, 3), (2, 2), (1, 1), (1, 1), 3),  # 3 groups of 9
    (1, 5, 9, 7, 11, (3, 2), (1, 2), (2, 1), (2, 3), 1),  # dilation, rectangular kernel
    (1, 3, 11, 13, 8, (5, 5), (3, 2), (2, 2), (1, 1), 1),
    (2, 10, 7, 9, 12, (1, 1), (1, 1), (0, 0), (1, 1), 1),  # 1x1 through the im2col loads
    (1, 8, 7, 9, 10, (1, 1), (2, 2), (0, 0), (1, 1), 1),  # strided 1x1 (a shortcut)
    (1, 3, 13, 11, 33, (7, 7), (2, 2), (3, 3), (1, 1), 1),  # a stem: wide tile, K = 147
    # several tiles along every axis: 70 channels (> 64 rows), K = 20 * 9 =
    # 180 (> 5 slices of 32), 13 x 11 = 143 pixels (3 tiles of 64)
    (1, 20, 13, 11, 70, (3, 3), (1, 1), (1, 1), (1, 1), 1),
]


def _conv_inputs(rng, case):
    x, weight, bias, args = conv_inputs(rng, case, np.float32)
    return (*_read_only(x, weight, bias), args)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", CONV_CASES, ids=[conv_id(c) for c in CONV_CASES])
def test_tensor_core_conv_matches_reference(ex, rng, case, precision):
    x, weight, bias, args = _conv_inputs(rng, case)
    ex.launches.clear()
    out = gconv.conv2d(x, weight, bias, executor=ex, precision=precision, **args)
    c_out_g = case[4] // case[9]
    if gconv.is_gemm_1x1(*case[5:8]):  # the multistage plane GEMM (no SM count: always)
        tile = tc.gemm_1x1_tile(c_out_g, case[2] * case[3], case[1] // case[9])
        kernel = (tc.GEMM_1X1_FILE, tc.gemm_1x1_name(precision, tile))
    else:
        kernel = (tc.FILE, tc.name(precision, tc.tile_for(c_out_g)))
    assert ex.launches == [kernel]
    assert out.dtype == np.float32 and out.shape == args["out_shape"]
    check_conv(out, x, weight, bias, args, precision)


@pytest.mark.parametrize("seed", range(6))
def test_tensor_core_random_geometries(ex, seed):
    rng = np.random.default_rng(2000 + seed)
    groups = int(rng.choice([1, 1, 2, 3]))
    c_in, c_out = groups * int(rng.integers(1, 12)), groups * int(rng.integers(1, 40))
    kernel = tuple(int(k) for k in rng.integers(1, 5, 2))
    dilation = tuple(int(d) for d in rng.integers(1, 3, 2))
    padding = tuple(int(rng.integers(0, k)) for k in kernel)
    stride = tuple(int(s) for s in rng.integers(1, 4, 2))
    sizes = rng.integers(1, 12, 2)
    h, w = (int(v) + (k - 1) * d for v, k, d in zip(sizes, kernel, dilation, strict=True))
    case = (int(rng.integers(1, 3)), c_in, h, w, c_out, kernel, stride, padding, dilation, groups)
    x, weight, bias, args = _conv_inputs(rng, case)
    precision = PRECISIONS[seed % 2]
    out = gconv.VARIANTS["5_tensor_core"](
        x, weight, bias, executor=ex, precision=precision, **args
    )
    check_conv(out, x, weight, bias, args, precision)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu"])
def test_tensor_core_fused_epilogue(ex, rng, precision, activation):
    case = (2, 27, 7, 9, 27, (3, 3), (1, 1), (1, 1), (1, 1), 3)
    x, weight, bias, args = _conv_inputs(rng, case)
    (residual,) = _read_only(rng.standard_normal(args["out_shape"]).astype(np.float32))
    out = gconv.conv2d_fused(
        x, weight, bias, residual=residual, activation=activation, negative_slope=0.2,
        executor=ex, variant="5_tensor_core", precision=precision, **args,
    )  # fmt: skip
    check_conv(out, x, weight, bias, args, precision, residual, activation)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_tensor_core_reads_summed_slices_and_writes_its_slice_only(ex, rng, precision):
    # The chain's calls: input x[:, 2:29] + a[:, 1:28] (summed in float32, then
    # rounded), output into out[:, 3:30], every other channel untouched.
    x = rng.standard_normal((2, 31, 7, 9)).astype(np.float32)
    a = rng.standard_normal((2, 28, 7, 9)).astype(np.float32)
    weight = rng.standard_normal((27, 9, 3, 3)).astype(np.float32)  # 3 groups of 9
    bias = rng.standard_normal(27).astype(np.float32)
    _read_only(x, a, weight, bias)
    out = rng.standard_normal((2, 33, 7, 9)).astype(np.float32)
    before = out.copy()
    gconv.launch_conv(
        ex, "5_tensor_core", x, weight, bias, out, stride=(1, 1), padding=(1, 1),
        dilation=(1, 1), groups=3, x_c0=2, add=a, add_c0=1, out_c0=3, precision=precision,
    )  # fmt: skip
    summed = x[:, 2:29] + a[:, 1:28]  # float32, as the kernel sums on load
    args = _checks.conv2d_args("conv2d", summed, weight, bias, 1, 1, 1, 3)
    check_conv(out[:, 3:30], summed, weight, bias, args, precision)
    np.testing.assert_array_equal(out[:, :3], before[:, :3])
    np.testing.assert_array_equal(out[:, 30:], before[:, 30:])


def test_tensor_core_loops_over_images_and_groups_past_grid_z(ex, rng, monkeypatch):
    # 3 images x 3 groups = 9 (image, group) pairs in a grid of z = 2: each block
    # runs several, refilling its buffers (the barrier at the end of each).
    monkeypatch.setattr(_runtime, "MAX_GRID_DIM", (2**31 - 1, 65535, 2))
    case = (3, 27, 7, 9, 30, (3, 3), (2, 1), (1, 1), (1, 1), 3)
    x, weight, bias, args = _conv_inputs(rng, case)
    out = gconv.conv2d(x, weight, bias, executor=ex, precision="tf32", **args)
    check_conv(out, x, weight, bias, args, "tf32")


def test_variants_and_precisions_must_agree(ex, rng):
    x, weight, bias, args = _conv_inputs(rng, CONV_CASES[0])
    with pytest.raises(ValueError, match="variant 5_tensor_core computes in tf32 or bf16"):
        gconv.VARIANTS["5_tensor_core"](x, weight, bias, executor=ex, **args)  # fp32
    with pytest.raises(ValueError, match="variant 4_pipelined computes in fp32"):
        gconv.VARIANTS["4_pipelined"](x, weight, bias, executor=ex, precision="tf32", **args)
    x64, w64, b64 = (a.astype(np.float64) for a in (x, weight, bias))
    with pytest.raises(ValueError, match="float64 has no tensor-core path"):
        gconv.VARIANTS["5_tensor_core"](x64, w64, b64, executor=ex, precision="bf16", **args)
    with pytest.raises(ValueError, match="precision must be one of"):
        gprep.PreparedConv2d(
            weight, bias, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
            executor=ex, precision="fp16",
        )  # fmt: skip


def test_depthwise_stays_float32_with_tensor_cores_allowed(ex, rng):
    # Fewer than 8 output channels per group: variant 1 in float32 (more precise
    # than asked, never less).
    case = (1, 6, 7, 9, 6, (3, 3), (1, 1), (1, 1), (1, 1), 6)
    x, weight, bias, args = _conv_inputs(rng, case)
    ex.launches.clear()
    out = gconv.conv2d(x, weight, bias, executor=ex, precision="bf16", **args)
    assert ex.launches == [("conv_1_naive.cu", "conv2d_1_naive<float>")]
    assert rel_err(out, ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args)) <= 1e-5


# --------------------------------------------------------------------------- #
# res2net_chain and bottle2neck
# --------------------------------------------------------------------------- #

# stype, stride, scale, groups, width, batch, H, W
CHAIN_CASES = [
    ("normal", 1, 4, 1, 9, 1, 7, 9),
    ("normal", 1, 4, 3, 27, 1, 7, 9),  # Res2NeXt: 3 groups of 9
    ("stage", 1, 2, 1, 26, 2, 9, 7),
    ("stage", 2, 4, 1, 26, 2, 7, 9),  # Res2Net-50's width
    ("stage", 2, 3, 3, 30, 1, 9, 7),
    ("normal", 1, 3, 1, 70, 1, 3, 5),  # 2 channel tiles of 64, K = 630
]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", CHAIN_CASES, ids=[chain_id(c) for c in CHAIN_CASES])
def test_tensor_core_chain_matches_reference(ex, rng, case, precision):
    x, weights, biases, args = chain_inputs(rng, case, np.float32)
    _read_only(x, *weights, *biases)
    expected = ref.res2net_chain(
        _f64(x), [_f64(w) for w in weights], [_f64(b) for b in biases], **args
    )
    ex.launches.clear()
    out = gres.res2net_chain(x, weights, biases, executor=ex, precision=precision, **args)
    nums = max(args["scale"] - 1, 1)
    # one launch per conv; a "stage" chain's (independent) convs in one
    assert [f for f, _ in ex.launches] == [tc.FILE] * (nums if args["stype"] == "normal" else 1)
    # a "normal" chain's convs depend on each other: errors add up along the chain
    layers = nums if args["stype"] == "normal" else 1
    assert rel_err(out, expected) <= tc.tolerance(precision, layers)
    if args["scale"] > 1:  # the last chunk is the side job's, in float32
        last = slice(nums * args["width"], None)
        assert rel_err(out[:, last], expected[:, last]) <= 1e-6


def test_chain_forced_variant_must_compute_in_the_precision(ex, rng):
    x, weights, biases, args = chain_inputs(rng, CHAIN_CASES[0], np.float32)
    kw = {k: args[k] for k in ("scale", "stype", "stride", "groups", "width")}
    with pytest.raises(ValueError, match="computes in precision='tf32'"):
        gres.PreparedChain(weights, biases, dtype=np.float32, executor=ex,
                           variant="4_pipelined", precision="tf32", **kw)  # fmt: skip
    with pytest.raises(ValueError, match="float64 has no tensor-core path"):
        gres.PreparedChain(weights, biases, dtype=np.float64, executor=ex, precision="tf32", **kw)


# c_in, c_out, width, scale, stype, stride, groups, shortcut ("identity", "conv", "pool")
BLOCK_CASES = [
    (36, 36, 9, 4, "normal", 1, 1, "identity"),
    (20, 40, 10, 2, "stage", 1, 1, "conv"),
    (20, 40, 27, 4, "stage", 2, 3, "conv"),
    (20, 40, 9, 4, "stage", 2, 1, "pool"),  # the "d" shortcut, pooled on load
]


def _block(rng, case):
    c_in, c_out, width, scale, stype, stride, groups, kind = case
    nums = max(scale - 1, 1)

    def folded(co, ci, k=1, g=1):
        weight = rng.standard_normal((co, ci // g, k, k)) / np.sqrt(ci * k * k / g)
        return FoldedConv(weight.astype(np.float32), rng.standard_normal(co).astype(np.float32))

    chain = [folded(width, width, 3, groups) for _ in range(nums)]
    return Bottle2neckParams(
        conv1=folded(width * scale, c_in),
        chain_weights=[c.weight for c in chain],
        chain_biases=[c.bias for c in chain],
        conv3=folded(c_out, width * scale),
        shortcut=None if kind == "identity" else folded(c_out, c_in),
        shortcut_avg_pool=kind == "pool",
    )


def bottleneck_layers(scale, stype):
    """Convs on the longest dependent path of a block: conv1, the chain, conv3."""
    return 2 + (max(scale - 1, 1) if stype == "normal" else 1)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda c: "-".join(map(str, c)))
def test_tensor_core_bottle2neck_matches_reference(ex, rng, case, precision):
    c_in, c_out, width, scale, stype, stride, groups, kind = case
    params = _block(rng, case)
    x = rng.standard_normal((1, c_in, 7, 9)).astype(np.float32)
    args = _checks.bottle2neck_args("bottle2neck", x, params, scale, stype, stride, groups)
    expected = ref.bottle2neck(_f64(x), params.map(_f64), **args)
    ex.launches.clear()
    out = gres.bottle2neck(x, params, executor=ex, precision=precision, **args)
    # every conv on tensor cores: the chain on step 5, conv1 (and an identity
    # block's conv3 with its residual) on the multistage plane GEMM, conv3 +
    # the shortcut (pooled or strided, as more K rows) on the plane GEMM
    chain_launches = 1 if stype == "stage" else max(scale - 1, 1)
    conv3 = tc.GEMM_1X1_FILE if kind == "identity" else gconv.TC_GEMM_FILE
    assert [f for f, _ in ex.launches] == [tc.GEMM_1X1_FILE] + [tc.FILE] * chain_launches + [conv3]
    assert rel_err(out, expected) <= tc.tolerance(precision, bottleneck_layers(scale, stype))


# --------------------------------------------------------------------------- #
# The public API and prepare, on CuPy-like arrays (the public-API emulation
# of test_gpu_emulated.py)
# --------------------------------------------------------------------------- #


@pytest.fixture
def cupy_like(monkeypatch):
    """An emulator taking and returning CuPy-like arrays as r2n's current GPU
    executor; ``as_kind(a, "cupy")`` wraps host arrays. Yields (executor, wrap)."""
    from test_gpu_emulated import EmulatedCupyArray, EmulatedCupyExecutor

    class Executor(EmulatedCupyExecutor):
        xp = type(
            "xp",
            (),
            {
                "ascontiguousarray": staticmethod(
                    lambda a, dtype=None: EmulatedCupyArray(
                        np.ascontiguousarray(getattr(a, "array", a), dtype=dtype)
                    )
                ),
                "may_share_memory": staticmethod(
                    lambda a, b: np.may_share_memory(
                        getattr(a, "array", a), getattr(b, "array", b)
                    )
                ),
                "concatenate": staticmethod(
                    lambda arrays, axis=0: EmulatedCupyArray(
                        np.concatenate([getattr(a, "array", a) for a in arrays], axis=axis)
                    )
                ),
                "add": staticmethod(
                    lambda a, b: EmulatedCupyArray(
                        np.add(getattr(a, "array", a), getattr(b, "array", b))
                    )
                ),
                "asarray": staticmethod(
                    lambda a, dtype=None: EmulatedCupyArray(
                        np.asarray(getattr(a, "array", a), dtype=dtype)
                    )
                ),
            },
        )

    ex = Executor(check_order=False)  # the kernels' two-order runs are above
    monkeypatch.setattr(_runtime, "executor", lambda: ex)
    as_kind = _backends.as_kind
    monkeypatch.setattr(
        _backends,
        "as_kind",
        lambda a, kind: EmulatedCupyArray(np.asarray(a)) if kind == "cupy" and a is not None
        else as_kind(a, kind),
    )  # fmt: skip
    return ex, EmulatedCupyArray


@pytest.mark.parametrize("precision", PRECISIONS)
def test_public_ops_take_precision_on_gpu_arrays(cupy_like, rng, precision):
    ex, wrap = cupy_like
    x, weight, bias, args = _conv_inputs(rng, CONV_CASES[1])
    kw = dict(stride=2, padding=1, groups=3)
    out = r2n.conv2d(wrap(x), wrap(weight), wrap(bias), precision=precision, **kw)
    assert ex.launches[-1][0] == tc.FILE
    check_conv(out.array, x, weight, bias, args, precision)
    case = CHAIN_CASES[1]
    x, weights, biases, args = chain_inputs(rng, case, np.float32)
    expected = ref.res2net_chain(
        _f64(x), [_f64(w) for w in weights], [_f64(b) for b in biases], **args
    )
    out = r2n.res2net_chain(wrap(x), [wrap(w) for w in weights], [wrap(b) for b in biases],
                            scale=4, groups=3, precision=precision)  # fmt: skip
    assert rel_err(out.array, expected) <= tc.tolerance(precision, 3)
    params = _block(rng, BLOCK_CASES[0])
    x = rng.standard_normal((1, 36, 7, 9)).astype(np.float32)
    args = _checks.bottle2neck_args("bottle2neck", x, params, 4, "normal", 1, 1)
    expected = ref.bottle2neck(_f64(x), params.map(_f64), **args)
    launches = len(ex.launches)
    out = r2n.bottle2neck(wrap(x), params.map(wrap), scale=4, precision=precision)
    assert {f for f, _ in ex.launches[launches:]} == {tc.FILE, tc.GEMM_1X1_FILE}
    assert rel_err(out.array, expected) <= tc.tolerance(precision, bottleneck_layers(4, "normal"))


def test_precision_is_checked_by_the_public_ops(cupy_like, rng):
    _, wrap = cupy_like
    x, weight, bias, _ = _conv_inputs(rng, CONV_CASES[0])
    with pytest.raises(ValueError, match="runs on the tensor cores of the gpu backend"):
        r2n.conv2d(x, weight, bias, padding=1, precision="tf32")  # NumPy arrays
    x64, w64 = (wrap(a.astype(np.float64)) for a in (x, weight))
    with pytest.raises(ValueError, match="float64 has no tensor-core path"):
        r2n.conv2d(x64, w64, padding=1, precision="bf16")
    for bad in ("fp16", "TF32", None, 32):
        with pytest.raises(ValueError, match="precision must be one of 'fp32', 'tf32', 'bf16'"):
            r2n.conv2d(wrap(x), wrap(weight), padding=1, precision=bad)
    xs, ws, bs, _ = chain_inputs(rng, CHAIN_CASES[0], np.float32)
    with pytest.raises(ValueError, match="gpu backend"):
        r2n.res2net_chain(xs, ws, bs, scale=4, precision="tf32")
    params = _block(rng, BLOCK_CASES[0])
    with pytest.raises(ValueError, match="gpu backend"):
        r2n.bottle2neck(np.zeros((1, 36, 7, 9), np.float32), params, scale=4, precision="bf16")
    # fp32 on NumPy arrays is the default, accepted everywhere
    out = r2n.conv2d(x, weight, bias, padding=1, precision="fp32", backend="reference")
    assert out.shape == (1, 9, 7, 9)


def test_prepare_passes_precision_to_the_gpu_factories(cupy_like, rng):
    ex, wrap = cupy_like
    x, weight, bias, args = _conv_inputs(rng, CONV_CASES[0])
    geometry = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    layer = _backends.prepare(
        "conv2d", None, "cupy", weight, bias, **geometry, activation=None, negative_slope=0.0,
        reuse_output=True, precision="tf32",
    )  # fmt: skip
    assert layer.precision == "tf32"
    check_conv(layer(wrap(x)).array, x, weight, bias, args, "tf32")
    params = _block(rng, BLOCK_CASES[0])
    block = _backends.prepare("bottle2neck", "gpu", "cupy", params, scale=4, stype="normal",
                              stride=1, groups=1, precision="bf16")  # fmt: skip
    assert block.precision == "bf16" and block.chain.variant == "5_tensor_core"
    with pytest.raises(ValueError, match="gpu backend"):
        _backends.prepare("conv2d", "reference", "numpy", weight, bias, **geometry,
                          precision="tf32")  # fmt: skip
    with pytest.raises(ValueError, match="float64"):
        _backends.prepare("conv2d", "gpu", "cupy", weight.astype(np.float64), None, **geometry,
                          precision="bf16")  # fmt: skip
    # fp32 (also when given explicitly) never reaches a factory: the cpu one has no such option
    layer = _backends.prepare("conv2d", "reference", "numpy", weight, bias, **geometry,
                              precision="fp32")  # fmt: skip
    assert rel_err(layer(x), ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args)) <= 1e-5


def test_models_create_checks_precision():
    with pytest.raises(ValueError, match="gpu backend"):
        r2n.models.create("res2net50_26w_4s", backend="cpu", precision="tf32")
    with pytest.raises(ValueError, match="float64"):
        r2n.models.create("res2net50_26w_4s", dtype="float64", precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        r2n.models.create("res2net50_26w_4s", precision="half")


def test_scaled_down_model_on_tensor_cores(cupy_like, rng):
    # One block per stage, 32 x 32 images: every conv of the network (stem,
    # conv1 / chain / conv3 / shortcuts) on variant 4, then pools and fc. TF32
    # only (~25 s: layer 4's 2048-channel convs are 10^5 emulated mma.sync);
    # the bf16 model runs in tests/test_gpu_tensor_core_device.py.
    ex, wrap = cupy_like
    precision = "tf32"
    small = {"layers": (1, 1, 1, 1)}
    model = r2n.models.create("res2net50_26w_4s", precision=precision, _params=small)
    assert model.precision == precision and "precision=" in repr(model)
    exact = r2n.models.create("res2net50_26w_4s", dtype="float64", backend="reference",
                              _params=small)  # fmt: skip
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    ex.launches.clear()
    logits = model(wrap(x))
    # the stem, and per block conv1 (multistage), one "stage" chain launch,
    # conv3 + shortcut (the plane GEMM with the shortcut's rows)
    assert sum(f == tc.FILE for f, _ in ex.launches) == 1 + 4
    assert sum(f == tc.GEMM_1X1_FILE for f, _ in ex.launches) == 4
    assert sum(f == gconv.TC_GEMM_FILE for f, _ in ex.launches) == 4
    with pytest.raises(ValueError, match="gpu backend"):
        model(x)  # NumPy images: no tensor cores there
    # the network's longest path: the stem and 4 blocks of conv1, 3 chain convs, conv3
    layers = 1 + 4 * bottleneck_layers(4, "stage")
    expected = exact(x.astype(np.float64))
    err = rel_err(logits.array, expected)
    assert err <= tc.tolerance(precision, layers), f"relative error {err:.2e}"
