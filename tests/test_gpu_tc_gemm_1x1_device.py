"""The multistage tensor-core 1x1 GEMM on a real GPU at Res2Net-50's sizes (skipped without one).

The checks of tests/test_gpu_tc_gemm_1x1_emulated.py at the sizes the kernel
is for (batch 32, 56x56 to 7x7, 104-2048 channels; grids of hundreds of
blocks, so the launcher picks it on a GPU that knows its SM count): the
format's norm-wise bound against float64, the float64 product of operands
rounded as the kernel rounds them (4e-5: the tensor cores' summation order
is not documented), every output element of a NaN-filled channel slice
written and the channels around it untouched; plus the 4-byte-copy paths
(7x7 planes, an input that starts 4 bytes past a 16-byte boundary) and a
layer1.1 bottleneck whose conv1 and conv3 (+ identity, ReLU) run on it.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import gpu_count, rel_err

from r2n.gpu import _runtime
from r2n.gpu import conv as gconv
from r2n.gpu import conv_tensor_core as tc

pytestmark = pytest.mark.skipif(gpu_count() == 0, reason="needs CuPy and a CUDA GPU")

ROUNDED_TOL = 4e-5


def _round(cupy, a, precision):
    """float32 ``a`` rounded as the kernel rounds operands, as float64
    (test_gpu_tensor_core_emulated.round_operand on the device)."""
    bits = cupy.ascontiguousarray(a, cupy.float32).view(cupy.uint32).astype(cupy.uint64)
    if precision == "tf32":
        bits = (bits + 0x1000) & 0xFFFFE000
    else:
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.astype(cupy.uint32).view(cupy.float32).astype(cupy.float64)


def _conv_1x1_f64(cupy, x, weight, bias, residual, activation):
    n, c_in, h, w = x.shape
    y = cupy.matmul(weight.reshape(weight.shape[0], c_in), x.reshape(n, c_in, h * w))
    y = y.reshape(n, -1, h, w)
    if bias is not None:
        y = y + bias[:, None, None]
    if residual is not None:
        y = y + residual
    if activation == "relu":
        y = cupy.maximum(y, 0)
    elif activation == "leaky_relu":
        y = cupy.where(y < 0, 0.2 * y, y)
    return y


# n, c_in, h, w, c_out, activation, residual, x_offset (elements before x's start)
CASES = [
    (32, 256, 56, 56, 104, "relu", False, 0),  # layer1 conv1: the 128 x 64 tile
    (32, 104, 56, 56, 256, "relu", True, 0),  # layer1 conv3 + identity
    (32, 1024, 14, 14, 416, "relu", False, 0),  # layer3 conv1: 128 x 128 (K >= 512)
    (32, 2048, 7, 7, 832, "leaky_relu", False, 0),  # layer4: 49 pixels, 4-byte copies
    (32, 64, 28, 28, 52, None, True, 1),  # 64 x 128 tile; x 4 bytes off alignment
]


@pytest.mark.parametrize("precision", tc.PRECISIONS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c[0]}-{c[1]}-{c[4]}-{c[2]}x{c[3]}")
def test_multistage_1x1_on_gpu(rng, monkeypatch, case, precision):
    import cupy

    n, c_in, h, w, c_out, activation, has_residual, x_offset = case
    ex = _runtime.executor()
    launches = []
    launch = ex.launch
    monkeypatch.setattr(
        ex,
        "launch",
        lambda file, name, *a, **k: (launches.append((file, name)), launch(file, name, *a, **k)),
    )
    size = n * c_in * h * w
    flat = cupy.asarray(rng.standard_normal(size + x_offset).astype(np.float32))
    x = flat[x_offset:].reshape(n, c_in, h, w)  # C-contiguous; x_offset shifts its start
    weight = cupy.asarray(
        (rng.standard_normal((c_out, c_in, 1, 1)) / np.sqrt(c_in)).astype(np.float32)
    )
    bias = cupy.asarray(rng.standard_normal(c_out).astype(np.float32))
    out_c0, out_c_total = 3, c_out + 5
    residual = None
    if has_residual:
        residual = cupy.asarray(rng.standard_normal((n, out_c_total, h, w)).astype(np.float32))
    out = cupy.full((n, out_c_total, h, w), cupy.nan, cupy.float32)
    gconv.launch_conv(
        ex, gconv.GEMM_1X1, x, weight, bias, out, stride=(1, 1), padding=(0, 0),
        dilation=(1, 1), groups=1, residual=residual, out_c0=out_c0, activation=activation,
        negative_slope=0.2, precision=precision,
    )  # fmt: skip
    # the device's tile: the rule's, stepped down to what its shared memory holds
    limit = gconv.shared_limit(ex)
    tile = tc.gemm_1x1_tile(c_out, h * w, c_in, precision=precision, max_shared=limit)
    assert launches == [(tc.GEMM_1X1_FILE, tc.gemm_1x1_name(precision, tile))]
    got = out[:, out_c0 : out_c0 + c_out]
    assert not bool(cupy.isnan(got).any()), "an output element was not written"
    assert bool(cupy.isnan(out[:, :out_c0]).all() and cupy.isnan(out[:, out_c0 + c_out :]).all())
    res = None if residual is None else residual[:, out_c0 : out_c0 + c_out].astype(cupy.float64)
    f64 = (x.astype(cupy.float64), weight.astype(cupy.float64), bias.astype(cupy.float64))
    exact = _conv_1x1_f64(cupy, *f64, res, activation)
    err = float(cupy.linalg.norm(got - exact) / cupy.linalg.norm(exact))
    assert err <= tc.tolerance(precision), f"relative error {err:.2e}"
    rounded = _conv_1x1_f64(
        cupy, _round(cupy, x, precision), _round(cupy, weight, precision), f64[2], res, activation
    )
    err = float(cupy.linalg.norm(got - rounded) / cupy.linalg.norm(rounded))
    assert err <= ROUNDED_TOL, f"not the rounded operands' product: {err:.2e}"


#: layer1.1 of res2net50_26w_4s at batch 32: (batch, channels, width, H = W)
LAYER1 = (32, 256, 26, 56)


@pytest.mark.parametrize("precision", tc.PRECISIONS)
def test_layer1_bottleneck_on_multistage_1x1(monkeypatch, precision):
    import cupy
    from helpers import random_block

    import r2n
    from r2n.gpu.prepared import prepare_bottle2neck

    rng = np.random.default_rng(5)
    n, channels, width, hw = LAYER1
    params = random_block(rng, channels, channels, width, 4, dtype=np.float32)
    x = rng.standard_normal((n, channels, hw, hw)).astype(np.float32)
    kw = dict(scale=4, stype="normal", stride=1, groups=1)
    params64 = params.map(lambda a: cupy.asarray(a, cupy.float64))
    exact = r2n.bottle2neck(cupy.asarray(x, dtype=cupy.float64), params64, **kw)
    block = prepare_bottle2neck(params, precision=precision, **kw)
    ex = _runtime.executor()
    launches = []
    launch = ex.launch
    monkeypatch.setattr(
        ex, "launch", lambda file, *a, **k: (launches.append(file), launch(file, *a, **k))
    )
    out = block(cupy.asarray(x))
    # conv1 and conv3 (+ identity, ReLU) on the multistage GEMM, the chain on step 5
    assert launches == [tc.GEMM_1X1_FILE] + [tc.FILE] * 3 + [tc.GEMM_1X1_FILE]
    layers = 2 + 3
    assert rel_err(cupy.asnumpy(out), cupy.asnumpy(exact)) <= tc.tolerance(precision, layers)
