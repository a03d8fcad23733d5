"""Every public op with backend="reference" against torch.nn.functional in float64.

Inputs are standard-normal draws on odd sizes (7x9 images, 15 channels = 3 groups
of 5). In float32 the inputs are cast first and torch computes in float64 on the
same float32 values, so the comparison measures r2n's own rounding only.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import DTYPES, assert_close, randn, t64

import r2n

H, W = 7, 9
C = 15
BATCHES = (1, 3)
REF = "reference"


def _cast(dtype, *arrays):
    """The arrays in ``dtype`` (None stays None)."""
    return [None if a is None else a.astype(dtype) for a in arrays]


def _check(out, dtype, ref):
    """out is a NumPy array of the inputs' dtype, close to the float64 torch result."""
    assert type(out) is np.ndarray
    assert out.dtype == np.dtype(dtype)
    assert_close(out, ref.numpy())


# --------------------------------------------------------------------------- #
# conv2d and linear
# --------------------------------------------------------------------------- #

# (C_out, groups, kernel (kH, kW), stride, padding, dilation)
CONV_CASES = {
    "3x3": (8, 1, (3, 3), 1, 0, 1),
    "3x3-stride2-pad1": (8, 1, (3, 3), 2, 1, 1),
    "int-args-dilation2": (8, 1, (3, 3), 2, 2, 2),
    "pair-args": (8, 1, (3, 2), (1, 2), (2, 1), (2, 1)),
    "pair-args-other-way": (8, 1, (2, 3), (2, 1), (0, 3), (1, 3)),
    "groups3-5-per-group": (15, 3, (3, 3), 1, 1, 1),
    "groups3-strided-dilated": (15, 3, (3, 3), (2, 1), (1, 2), (1, 2)),
    "depthwise": (C, C, (3, 3), 1, 1, 1),
    "depthwise-multiplier2": (2 * C, C, (3, 3), 2, 1, 1),
    "1x1": (8, 1, (1, 1), 1, 0, 1),
    "1x1-stride2": (8, 1, (1, 1), 2, 0, 1),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("with_bias", [False, True], ids=["bias-none", "bias"])
@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv2d_matches_torch(rng, case, with_bias, n, dtype):
    c_out, groups, (kh, kw), stride, padding, dilation = case
    x, w, b = _cast(
        dtype,
        randn(rng, n, C, H, W),
        randn(rng, c_out, C // groups, kh, kw),
        randn(rng, c_out) if with_bias else None,
    )
    kw_args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    out = r2n.conv2d(x, w, b, backend=REF, **kw_args)
    ref = F.conv2d(t64(x), t64(w), t64(b), **kw_args)
    _check(out, dtype, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True], ids=["bias-none", "bias"])
@pytest.mark.parametrize("x_shape", [(3, C), (1, C), (3, 4, C)], ids=["2d", "2d-n1", "3d"])
def test_linear_matches_torch(rng, x_shape, with_bias, dtype):
    x, w, b = _cast(
        dtype,
        randn(rng, *x_shape),
        randn(rng, 8, C),
        randn(rng, 8) if with_bias else None,
    )
    out = r2n.linear(x, w, b, backend=REF)
    _check(out, dtype, F.linear(t64(x), t64(w), t64(b)))


# --------------------------------------------------------------------------- #
# batch_norm and fold_batch_norm
# --------------------------------------------------------------------------- #

AFFINE = {
    "affine-none": (False, False),
    "weight-only": (True, False),
    "bias-only": (False, True),
    "affine": (True, True),
}


def _bn_params(rng, channels, dtype, affine):
    """mean, var (> 0), weight, bias of a BN over ``channels``, in ``dtype``."""
    with_weight, with_bias = affine
    return _cast(
        dtype,
        randn(rng, channels),
        rng.uniform(0.25, 2.0, channels),
        randn(rng, channels) if with_weight else None,
        randn(rng, channels) if with_bias else None,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [1e-5, 0.1])
@pytest.mark.parametrize("affine", AFFINE.values(), ids=AFFINE.keys())
@pytest.mark.parametrize("x_shape", [(3, C, H, W), (1, C, H, W), (3, C)], ids=str)
def test_batch_norm_matches_torch_inference(rng, x_shape, affine, eps, dtype):
    (x,) = _cast(dtype, randn(rng, *x_shape))
    mean, var, weight, bias = _bn_params(rng, C, dtype, affine)
    out = r2n.batch_norm(x, mean, var, weight, bias, eps=eps, backend=REF)
    ref = F.batch_norm(
        t64(x), t64(mean), t64(var), t64(weight), t64(bias), training=False, eps=eps
    )
    _check(out, dtype, ref)


def _check_folded(folded, conv_weight, dtype):
    w_f, b_f = folded
    for a in folded:
        assert type(a) is np.ndarray
        assert a.dtype == np.dtype(dtype)
    assert w_f.shape == conv_weight.shape
    assert b_f.shape == (conv_weight.shape[0],)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", AFFINE.values(), ids=AFFINE.keys())
@pytest.mark.parametrize("with_conv_bias", [False, True], ids=["conv-bias-none", "conv-bias"])
@pytest.mark.parametrize("groups", [1, 3])
def test_folded_conv_equals_conv_then_batch_norm(rng, groups, with_conv_bias, affine, dtype):
    c_out, eps = 9, 1e-3
    x, w, b = _cast(
        dtype,
        randn(rng, 3, C, H, W),
        randn(rng, c_out, C // groups, 3, 3),
        randn(rng, c_out) if with_conv_bias else None,
    )
    mean, var, weight, bias = _bn_params(rng, c_out, dtype, affine)
    folded = r2n.fold_batch_norm(w, b, mean, var, weight, bias, eps, backend=REF)
    _check_folded(folded, w, dtype)
    conv = dict(stride=2, padding=1, groups=groups)
    out = r2n.conv2d(x, *folded, backend=REF, **conv)
    ref = F.batch_norm(
        F.conv2d(t64(x), t64(w), t64(b), **conv),
        t64(mean),
        t64(var),
        t64(weight),
        t64(bias),
        training=False,
        eps=eps,
    )
    _check(out, dtype, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", AFFINE.values(), ids=AFFINE.keys())
@pytest.mark.parametrize("with_linear_bias", [False, True], ids=["bias-none", "bias"])
def test_folded_linear_equals_linear_then_batch_norm(rng, with_linear_bias, affine, dtype):
    out_features = 8
    x, w, b = _cast(
        dtype,
        randn(rng, 3, C),
        randn(rng, out_features, C),
        randn(rng, out_features) if with_linear_bias else None,
    )
    mean, var, weight, bias = _bn_params(rng, out_features, dtype, affine)
    folded = r2n.fold_batch_norm(w, b, mean, var, weight, bias, backend=REF)
    _check_folded(folded, w, dtype)
    out = r2n.linear(x, *folded, backend=REF)
    ref = F.batch_norm(
        F.linear(t64(x), t64(w), t64(b)),
        t64(mean),
        t64(var),
        t64(weight),
        t64(bias),
        training=False,
    )
    _check(out, dtype, ref)


# --------------------------------------------------------------------------- #
# Activations
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", BATCHES)
def test_relu_matches_torch(rng, n, dtype):
    (x,) = _cast(dtype, randn(rng, n, C, H, W))
    _check(r2n.relu(x, backend=REF), dtype, F.relu(t64(x)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("slope", [None, 0.2, -0.5, 3.0], ids=lambda s: f"slope={s}")
def test_leaky_relu_matches_torch(rng, slope, n, dtype):
    (x,) = _cast(dtype, randn(rng, n, C, H, W))
    if slope is None:  # r2n's and torch's defaults
        out, ref = r2n.leaky_relu(x, backend=REF), F.leaky_relu(t64(x))
    else:
        out, ref = r2n.leaky_relu(x, slope, backend=REF), F.leaky_relu(t64(x), slope)
    _check(out, dtype, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", BATCHES)
def test_sigmoid_matches_torch(rng, n, dtype):
    (x,) = _cast(dtype, 4 * randn(rng, n, C, H, W))
    _check(r2n.sigmoid(x, backend=REF), dtype, torch.sigmoid(t64(x)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_of_large_magnitudes_matches_torch_without_overflow(rng, dtype):
    extremes = [50.0, -50.0, 88.0, -88.0, 104.0, -104.0, 710.0, -710.0, 1000.0, -1000.0]
    (x,) = _cast(dtype, np.concatenate([extremes, randn(rng, 20)]))
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        out = r2n.sigmoid(x, backend=REF)
    assert np.isfinite(out).all()
    _check(out, dtype, torch.sigmoid(t64(x)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "op, torch_op",
    [
        (r2n.relu, F.relu),
        (r2n.leaky_relu, F.leaky_relu),
        (r2n.sigmoid, torch.sigmoid),
    ],
    ids=["relu", "leaky_relu", "sigmoid"],
)
def test_activations_propagate_nan_like_torch(rng, op, torch_op, dtype):
    x = randn(rng, 3, 5, dtype=dtype)
    x[0, 1] = x[2, 4] = np.nan
    out = op(x, backend=REF)
    ref = torch_op(t64(x)).numpy()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    assert_close(out[~np.isnan(out)], ref[~np.isnan(ref)])


# --------------------------------------------------------------------------- #
# Pooling
# --------------------------------------------------------------------------- #

# (kernel_size, stride, padding); every one is run with ceil_mode False and True.
POOL_CASES = {
    "k3-stride-none": (3, None, 0),
    "k2-stride-none": (2, None, 0),
    "k3-s2-p1": (3, 2, 1),
    "k3-s2-p0": (3, 2, 0),
    "k3-s1-p1": (3, 1, 1),
    "k2-s1-p1": (2, 1, 1),
    "k5-s3-p2": (5, 3, 2),
    "pair-k23-s21-p10": ((2, 3), (2, 1), (1, 0)),
    "pair-k32-stride-none-p11": ((3, 2), None, (1, 1)),
    "pair-k34-s32-p02": ((3, 4), (3, 2), (0, 2)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("case", POOL_CASES.values(), ids=POOL_CASES.keys())
def test_max_pool2d_matches_torch(rng, case, ceil_mode, n, dtype):
    kernel, stride, padding = case
    (x,) = _cast(dtype, randn(rng, n, C, H, W))
    out = r2n.max_pool2d(x, kernel, stride, padding, ceil_mode, backend=REF)
    ref = F.max_pool2d(t64(x), kernel, stride, padding, ceil_mode=ceil_mode)
    _check(out, dtype, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl-pad", "excl-pad"])
@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("case", POOL_CASES.values(), ids=POOL_CASES.keys())
def test_avg_pool2d_matches_torch(rng, case, ceil_mode, count_include_pad, n, dtype):
    kernel, stride, padding = case
    (x,) = _cast(dtype, randn(rng, n, C, H, W))
    out = r2n.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, backend=REF)
    ref = F.avg_pool2d(
        t64(x), kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad
    )
    _check(out, dtype, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("hw", [(H, W), (1, 1), (1, 5)], ids=str)
def test_global_avg_pool2d_matches_torch(rng, hw, n, dtype):
    (x,) = _cast(dtype, randn(rng, n, C, *hw))
    ref = F.adaptive_avg_pool2d(t64(x), 1).flatten(1)
    _check(r2n.global_avg_pool2d(x, backend=REF), dtype, ref)


# --------------------------------------------------------------------------- #
# TResNet layers
# --------------------------------------------------------------------------- #


def _torch_space_to_depth(x, b):
    """out[n, (i*b + j)*C + c, h, w] = x[n, c, b*h + i, b*w + j], in torch."""
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // b, b, w // b, b)  # n, c, h, i, w, j
    return blocks.permute(0, 3, 5, 1, 2, 4).reshape(n, b * b * c, h // b, w // b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize(
    "block_size, shape",
    [(4, (3, 12, 20)), (4, (C, 4, 8)), (2, (C, 6, 10)), (2, (3, 14, 2)), (1, (C, H, W))],
    ids=str,
)
def test_space_to_depth_matches_torch_rearrangement(rng, block_size, shape, n, dtype):
    (x,) = _cast(dtype, randn(rng, n, *shape))
    out = r2n.space_to_depth(x, block_size, backend=REF)
    _check(out, dtype, _torch_space_to_depth(t64(x), block_size))
    assert not np.shares_memory(out, x)


def _torch_blur_pool2d(x):
    c = x.shape[1]
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    filt = (torch.outer(taps, taps) / 16).repeat(c, 1, 1, 1)  # C, 1, 3, 3
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), filt, stride=2, groups=c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("hw", [(H, W), (2, 2), (8, 10), (2, 3), (5, 4), (9, 2)], ids=str)
def test_blur_pool2d_matches_torch_reflect_pad_depthwise_conv(rng, hw, n, dtype):
    (x,) = _cast(dtype, randn(rng, n, C, *hw))
    _check(r2n.blur_pool2d(x, backend=REF), dtype, _torch_blur_pool2d(t64(x)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("with_b1", [False, True], ids=["b1-none", "b1"])
@pytest.mark.parametrize("with_b2", [False, True], ids=["b2-none", "b2"])
def test_squeeze_excite_matches_torch(rng, with_b2, with_b1, n, dtype):
    c_mid = 4
    x, w1, b1, w2, b2 = _cast(
        dtype,
        randn(rng, n, C, H, W),
        randn(rng, c_mid, C, 1, 1),
        randn(rng, c_mid) if with_b1 else None,
        randn(rng, C, c_mid, 1, 1),
        randn(rng, C) if with_b2 else None,
    )
    out = r2n.squeeze_excite(x, w1, b1, w2, b2, backend=REF)
    xt = t64(x)
    s = xt.mean(dim=(2, 3), keepdim=True)  # N, C, 1, 1
    gate = torch.sigmoid(F.conv2d(F.relu(F.conv2d(s, t64(w1), t64(b1))), t64(w2), t64(b2)))
    _check(out, dtype, xt * gate)
