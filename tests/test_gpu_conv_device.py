"""r2n.gpu conv2d, res2net_chain and bottle2neck on a real GPU (skipped without one).

Through the public API on CuPy arrays, every conv variant, the chain and the
bottleneck are compared with the float64 reference and, where PyTorch sees
CUDA, with torch's conv2d on the same device. Shapes: the odd ones of the
emulated tests plus Res2Net-50's own (26-channel chunks at 56x56, 256 -> 104
1x1), which use many tiles per launch. The emulated twin of this file,
tests/test_gpu_conv_emulated.py, runs everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
from gpu_cases import chain_id, chain_inputs, conv_id, conv_inputs
from helpers import DTYPES, assert_close, gpu_count, randn

import r2n
from r2n import Bottle2neckParams, FoldedConv, _checks
from r2n import reference as ref

pytestmark = pytest.mark.skipif(gpu_count() == 0, reason="needs CuPy and a CUDA GPU")

DTYPE_IDS = ["f64", "f32"]

# n, c_in, h, w, c_out, (kh, kw), stride, padding, dilation, groups
CONV_CASES = [
    (1, 3, 7, 9, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (2, 15, 7, 9, 15, (3, 3), (2, 2), (1, 1), (1, 1), 3),
    (1, 6, 7, 9, 6, (3, 3), (1, 1), (1, 1), (1, 1), 6),
    (1, 5, 9, 7, 7, (3, 2), (1, 2), (2, 1), (2, 3), 1),
    (2, 10, 7, 9, 12, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (2, 26, 56, 56, 26, (3, 3), (1, 1), (1, 1), (1, 1), 1),  # Res2Net-50 chain conv
    (2, 256, 56, 56, 104, (1, 1), (1, 1), (0, 0), (1, 1), 1),  # Res2Net-50 conv1
    (8, 256, 56, 56, 512, (1, 1), (1, 1), (0, 0), (1, 1), 1),  # large-tile 1x1
    (2, 64, 28, 28, 64, (3, 3), (1, 1), (1, 1), (1, 1), 64),  # depthwise
]


def _torch_conv(x, weight, bias, args):
    """torch's conv2d on CUDA in float64, or None when torch sees no CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    t = [
        None if a is None else torch.as_tensor(a, dtype=torch.float64, device="cuda")
        for a in (x, weight, bias)
    ]
    out = torch.nn.functional.conv2d(
        *t,
        stride=args["stride"],
        padding=args["padding"],
        dilation=args["dilation"],
        groups=args["groups"],
    )
    return out.cpu().numpy()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CONV_CASES, ids=[conv_id(c) for c in CONV_CASES])
def test_conv2d_variants_on_gpu_match_reference_and_torch(rng, case, dtype):
    import cupy

    from r2n.gpu import conv as gconv

    _, _, _, _, _, (kh, kw), stride, padding, dilation, groups = case
    x, weight, bias, args = conv_inputs(rng, case, dtype)
    expected = ref.conv2d(*(a.astype(np.float64) for a in (x, weight, bias)), **args)
    torch_out = _torch_conv(x, weight, bias, args)
    if torch_out is not None:
        assert_close(torch_out, expected, np.float64)
    xd, wd, bd = (cupy.asarray(a) for a in (x, weight, bias))
    out = r2n.conv2d(xd, wd, bd, stride=stride, padding=padding, dilation=dilation, groups=groups)
    assert isinstance(out, cupy.ndarray) and out.dtype == dtype
    assert_close(cupy.asnumpy(out), expected)
    for name, precisions in gconv.VARIANT_PRECISIONS.items():  # the ladder and gemm_1x1
        if name == "gemm_1x1" and not gconv.is_gemm_1x1((kh, kw), stride, padding):
            continue
        if "fp32" not in precisions:  # tensor cores: their own tests
            continue
        assert_close(cupy.asnumpy(gconv.conv2d(xd, wd, bd, variant=name, **args)), expected)


# stype, stride, scale, groups, width, batch, H, W
CHAIN_CASES = [
    ("normal", 1, 4, 1, 5, 1, 7, 9),
    ("normal", 1, 4, 3, 15, 2, 7, 9),
    ("stage", 2, 4, 1, 26, 2, 56, 56),
    ("normal", 1, 4, 1, 26, 2, 56, 56),
    ("normal", 1, 8, 1, 26, 1, 28, 28),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CHAIN_CASES, ids=[chain_id(c) for c in CHAIN_CASES])
def test_chain_on_gpu_matches_reference(rng, case, dtype):
    import cupy

    stype, stride, scale, groups = case[:4]
    x, weights, biases, args = chain_inputs(rng, case, dtype)
    f64 = [[a.astype(np.float64) for a in seq] for seq in (weights, biases)]
    expected = ref.res2net_chain(x.astype(np.float64), *f64, **args)
    out = r2n.res2net_chain(
        cupy.asarray(x),
        [cupy.asarray(a) for a in weights],
        [cupy.asarray(a) for a in biases],
        scale=scale,
        stype=stype,
        stride=stride,
        groups=groups,
    )
    assert_close(cupy.asnumpy(out), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", ["identity", "conv", "pool"])
def test_bottle2neck_on_gpu_matches_reference(rng, kind, dtype):
    import cupy

    c_in, width, scale = 256, 26, 4
    c_out = 256 if kind == "identity" else 512
    stride, stype = (1, "normal") if kind == "identity" else (2, "stage")

    def folded(co, ci, k=1):
        return FoldedConv(
            randn(rng, co, ci, k, k, dtype=dtype) / float(np.sqrt(ci * k * k)),
            randn(rng, co, dtype=dtype),
        )

    chain = [folded(width, width, 3) for _ in range(scale - 1)]
    params = Bottle2neckParams(
        folded(width * scale, c_in),
        [c.weight for c in chain],
        [c.bias for c in chain],
        folded(c_out, width * scale),
        None if kind == "identity" else folded(c_out, c_in),
        kind == "pool",
    )
    x = randn(rng, 2, c_in, 28, 28, dtype=dtype)

    args = _checks.bottle2neck_args("bottle2neck", x, params, scale, stype, stride, 1)
    expected = ref.bottle2neck(
        x.astype(np.float64), params.map(lambda a: a.astype(np.float64)), **args
    )
    kw = dict(scale=scale, stype=stype, stride=stride)
    out = r2n.bottle2neck(cupy.asarray(x), params.map(cupy.asarray), **kw)
    assert_close(cupy.asnumpy(out), expected)
    from r2n.gpu.prepared import prepare_bottle2neck

    block = prepare_bottle2neck(params, groups=1, **kw)
    assert_close(cupy.asnumpy(block(cupy.asarray(x))), expected)


def test_conv_beyond_2_pow_31_elements():
    """64-bit indexing: an output of 2 * 2^30 + ... elements, checked at sampled points."""
    import cupy

    free, _ = cupy.cuda.runtime.memGetInfo()
    if free < 24 * 2**30:
        pytest.skip("needs 24 GiB of free GPU memory")
    from r2n.gpu import conv as gconv

    rng = np.random.default_rng(0)
    n, c, h, w = 1, 2, 32768, 32769  # 2 * 2^30 + 65536 elements per tensor
    x = cupy.random.standard_normal((n, c, h, w), dtype=cupy.float32)
    weight = randn(rng, c, 1, 3, 3, dtype=np.float32)
    args = _checks.conv2d_args("conv2d", x, weight, None, 1, 1, 1, c)
    for name in ("1_naive", "2_smem_tiles", "3_register_tiles", "4_pipelined"):
        out = gconv.VARIANTS[name](x, cupy.asarray(weight), None, **args)
        for ch, y, xx in [(1, h - 1, w - 1), (1, h // 2, 7), (0, 0, 0)]:
            lo_y, lo_x = max(y - 1, 0), max(xx - 1, 0)
            patch = cupy.asnumpy(x[0:1, ch : ch + 1, lo_y : y + 2, lo_x : xx + 2]).astype(
                np.float64
            )
            padded = np.zeros((1, 1, 3, 3))
            oy, ox = lo_y - (y - 1), lo_x - (xx - 1)
            padded[:, :, oy : oy + patch.shape[2], ox : ox + patch.shape[3]] = patch
            want = float((padded[0, 0] * weight[ch, 0].astype(np.float64)).sum())
            got = float(out[0, ch, y, xx])
            assert abs(got - want) <= 1e-4 * (1 + abs(want)), (name, ch, y, xx)
        del out


# Res2Net-50's batch-1 convs that split K on a 132-SM GPU (r2n.gpu.conv.split_k_for)
SPLIT_CASES = [
    (1, 104, 14, 14, 104, (3, 3), (1, 1), (1, 1), (1, 1), 1),  # layer3's chain: 12 splits
    (1, 208, 7, 7, 208, (3, 3), (1, 1), (1, 1), (1, 1), 1),  # layer4's: 15 splits
    (1, 1024, 14, 14, 416, (1, 1), (1, 1), (0, 0), (1, 1), 1),  # layer4.0's conv1
]


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
@pytest.mark.parametrize("case", SPLIT_CASES, ids=[conv_id(c) for c in SPLIT_CASES])
def test_split_k_on_gpu_matches_reference_and_repeats_bit_for_bit(rng, case, precision):
    """The launcher splits these by the device's SM count; the sum order is fixed."""
    import cupy

    from r2n.gpu import _runtime
    from r2n.gpu import conv as gconv
    from r2n.gpu import conv_tensor_core as tc

    x, weight, bias, args = conv_inputs(rng, case, np.float32)
    sms = _runtime.executor().sm_count
    kernel = "gemm_1x1" if gconv.is_gemm_1x1(*case[5:8]) else "4_pipelined"
    pixel, channel = -(-case[2] * case[3] // 64), -(-case[4] // 64)
    assert gconv.split_k_for(pixel * channel, case[1] * case[5][0] * case[5][1], sms) > 1, kernel
    dev = [cupy.asarray(a) for a in (x, weight, bias)]
    out = r2n.conv2d(*dev, stride=args["stride"], padding=args["padding"], precision=precision)
    again = r2n.conv2d(*dev, stride=args["stride"], padding=args["padding"], precision=precision)
    expected = ref.conv2d(x.astype(np.float64), weight.astype(np.float64),
                          bias.astype(np.float64), **args)  # fmt: skip
    err = float(np.linalg.norm(cupy.asnumpy(out) - expected) / np.linalg.norm(expected))
    assert err <= (1e-5 if precision == "fp32" else tc.tolerance(precision)), err
    assert cupy.array_equal(out, again)


def test_split_k_on_two_streams_from_two_threads(rng):
    """Split convs on two non-blocking streams at once, one thread each: the
    streams get separate scratch arrays (r2n.gpu.conv.split_k_scratch), so the
    launches may overlap; every result is bit-identical to the conv run alone."""
    import threading

    import cupy

    x, weight, bias, args = conv_inputs(rng, SPLIT_CASES[0], np.float32)
    dev = [cupy.asarray(a) for a in (x, weight, bias)]
    kwargs = dict(stride=args["stride"], padding=args["padding"])
    alone = r2n.conv2d(*dev, **kwargs)
    cupy.cuda.Device().synchronize()  # the inputs, written on the null stream, are ready
    results, errors = [[], []], []

    def work(i):
        try:
            stream = cupy.cuda.Stream(non_blocking=True)
            with stream:
                for _ in range(20):
                    results[i].append(r2n.conv2d(*dev, **kwargs))
            stream.synchronize()
        except BaseException as e:  # noqa: BLE001 (re-raised in the main thread)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert all(cupy.array_equal(out, alone) for outs in results for out in outs)
