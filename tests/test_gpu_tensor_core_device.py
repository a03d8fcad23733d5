"""Variant 4_tensor_core (precision "tf32" / "bf16") on a real GPU (skipped without one).

The cases of tests/test_gpu_tensor_core_emulated.py (its checks: the format's
bound, the element-wise worst case, and agreement with the reference on
rounded operands) through the public API on CuPy arrays, plus Res2Net-50's
own shapes (many tiles per launch), the chain, the bottleneck and whole
networks against their float64 selves. The tensor cores' own summation order
is not documented, so agreement with the rounded operands' product is
checked to 4e-5 here (1e-5 under the emulator, whose order is fixed).
"""

from __future__ import annotations

import numpy as np
import pytest
from gpu_cases import chain_id, chain_inputs, conv_id, conv_inputs
from helpers import gpu_count, rel_err
from test_gpu_tensor_core_emulated import (
    BLOCK_CASES,
    CHAIN_CASES,
    CONV_CASES,
    _block,
    _f64,
    bottleneck_layers,
    elementwise_bound,
    round_operand,
)

import r2n
from r2n import _checks
from r2n import reference as ref
from r2n.gpu import conv_tensor_core as tc

pytestmark = pytest.mark.skipif(gpu_count() == 0, reason="needs CuPy and a CUDA GPU")

PRECISIONS = tc.PRECISIONS
ROUNDED_TOL = 4e-5

DEVICE_CONV_CASES = CONV_CASES + [
    (2, 26, 56, 56, 26, (3, 3), (1, 1), (1, 1), (1, 1), 1),  # Res2Net-50 chain conv
    (2, 26, 56, 56, 26, (3, 3), (2, 2), (1, 1), (1, 1), 1),  # its stride-2 stage form
    (2, 256, 56, 56, 104, (1, 1), (1, 1), (0, 0), (1, 1), 1),  # conv1 of layer1
    (1, 3, 224, 224, 64, (7, 7), (2, 2), (3, 3), (1, 1), 1),  # the stem
    (2, 64, 28, 28, 128, (3, 3), (1, 1), (1, 1), (1, 1), 8),  # grouped, 16 per group
]


def _device_conv(x, weight, bias, precision, **kw):
    import cupy

    out = r2n.conv2d(*(cupy.asarray(a) for a in (x, weight, bias)), precision=precision, **kw)
    assert isinstance(out, cupy.ndarray) and out.dtype == np.float32
    return cupy.asnumpy(out)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", DEVICE_CONV_CASES, ids=[conv_id(c) for c in DEVICE_CONV_CASES])
def test_tensor_core_conv_on_gpu(rng, case, precision):
    _, _, _, _, _, _, stride, padding, dilation, groups = case
    x, weight, bias, args = conv_inputs(rng, case, np.float32)
    out = _device_conv(x, weight, bias, precision, stride=stride, padding=padding,
                       dilation=dilation, groups=groups)  # fmt: skip
    expected = ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args)
    assert rel_err(out, expected) <= tc.tolerance(precision)
    slack = elementwise_bound(x, weight, args, precision) + 2.0**-22 * (
        np.abs(expected) + np.abs(bias)[:, None, None]
    )
    assert (np.abs(out - expected) <= slack).all()
    rounded = ref.conv2d(
        round_operand(x, precision), round_operand(weight, precision), _f64(bias), **args
    )
    assert rel_err(out, rounded) <= ROUNDED_TOL


DEVICE_CHAIN_CASES = CHAIN_CASES + [
    ("stage", 2, 4, 1, 26, 2, 56, 56),
    ("normal", 1, 4, 1, 26, 2, 56, 56),
    ("normal", 1, 8, 1, 26, 1, 28, 28),
]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", DEVICE_CHAIN_CASES, ids=[chain_id(c) for c in DEVICE_CHAIN_CASES])
def test_tensor_core_chain_on_gpu(rng, case, precision):
    import cupy

    stype, stride, scale, groups = case[:4]
    x, weights, biases, args = chain_inputs(rng, case, np.float32)
    expected = ref.res2net_chain(
        _f64(x), [_f64(w) for w in weights], [_f64(b) for b in biases], **args
    )
    out = r2n.res2net_chain(
        cupy.asarray(x), [cupy.asarray(w) for w in weights], [cupy.asarray(b) for b in biases],
        scale=scale, stype=stype, stride=stride, groups=groups, precision=precision,
    )  # fmt: skip
    layers = max(scale - 1, 1) if stype == "normal" else 1
    assert rel_err(cupy.asnumpy(out), expected) <= tc.tolerance(precision, layers)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda c: "-".join(map(str, c)))
def test_tensor_core_bottle2neck_on_gpu(rng, case, precision):
    import cupy

    from r2n.gpu.res2net import prepare_bottle2neck

    c_in, c_out, width, scale, stype, stride, groups, kind = case
    params = _block(rng, case)
    x = rng.standard_normal((2, c_in, 28, 28)).astype(np.float32)
    args = _checks.bottle2neck_args("bottle2neck", x, params, scale, stype, stride, groups)
    expected = ref.bottle2neck(_f64(x), params.map(_f64), **args)
    kw = dict(scale=scale, stype=stype, stride=stride, groups=groups)
    tol = tc.tolerance(precision, bottleneck_layers(scale, stype))
    out = r2n.bottle2neck(cupy.asarray(x), params.map(cupy.asarray), precision=precision, **kw)
    assert rel_err(cupy.asnumpy(out), expected) <= tol
    block = prepare_bottle2neck(params, precision=precision, **kw)
    assert rel_err(cupy.asnumpy(block(cupy.asarray(x))), expected) <= tol


def _network_depth(name):
    """Convs on a network's longest dependent path: the stem's, then per block
    conv1, the chain (its convs feed each other in "normal" blocks) and conv3."""
    params = r2n.models.ARCHS[name].params
    nums = max(params["scale"] - 1, 1)
    blocks = sum(params["layers"])
    return (3 if params["deep_stem"] else 1) + 4 * 3 + (blocks - 4) * (2 + nums)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", ["res2net50_26w_4s", "res2net50d"])
def test_whole_network_on_tensor_cores(name, precision):
    import cupy

    x = np.random.default_rng(3).standard_normal((2, 3, 224, 224)).astype(np.float32)
    exact = r2n.models.create(name, dtype="float64", backend="gpu")
    expected = cupy.asnumpy(exact(cupy.asarray(x, dtype=cupy.float64)))
    model = r2n.models.create(name, precision=precision)
    logits = cupy.asnumpy(model(cupy.asarray(x)))
    err = rel_err(logits, expected)
    assert err <= tc.tolerance(precision, _network_depth(name)), f"{err:.2e}"
