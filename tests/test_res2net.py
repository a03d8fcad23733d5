"""r2n.res2net_chain and r2n.bottle2neck against PyTorch models of the official block.

The PyTorch models (r2n/_bench/torch_blocks.py, via tests/torch_res2net.py) follow
the official Res2Net / timm ``Bottle2neck``, written from that code and not from
r2n's. Their random conv + BN pairs (eval mode, float64) are folded with
``r2n.fold_batch_norm`` into r2n's arguments.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, randn
from torch_res2net import (
    TorchBottle2neck,
    TorchChain,
    as_f64,
    block_params,
    chain_arrays,
    randomize,
    torch_out,
)

import r2n
from r2n import Bottle2neckParams, FoldedConv

# --------------------------------------------------------------------------- #
# res2net_chain
# --------------------------------------------------------------------------- #

# stype, stride, scale, groups, width, batch, H, W
CHAIN_CASES = [
    ("normal", 1, 1, 1, 8, 1, 7, 9),
    ("normal", 1, 2, 8, 8, 3, 7, 9),
    ("normal", 1, 4, 1, 16, 3, 9, 7),
    ("normal", 1, 8, 8, 16, 1, 7, 9),
    ("stage", 1, 1, 8, 8, 3, 7, 9),
    ("stage", 1, 4, 8, 16, 1, 9, 7),
    ("stage", 2, 1, 1, 8, 3, 7, 9),
    ("stage", 2, 2, 1, 8, 1, 9, 7),
    ("stage", 2, 4, 8, 8, 3, 7, 9),
    ("stage", 2, 8, 1, 8, 3, 9, 7),
    ("stage", 2, 8, 8, 16, 1, 7, 9),
    ("stage", 3, 4, 1, 8, 1, 7, 9),
]


def _case_id(case):
    stype, stride, scale, groups, width, n, h, w = case
    return f"{stype}-s{stride}-scale{scale}-g{groups}-w{width}-{n}x{h}x{w}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CHAIN_CASES, ids=[_case_id(c) for c in CHAIN_CASES])
def test_chain_matches_torch_res2net_chain(rng, case, dtype):
    stype, stride, scale, groups, width, n, h, w = case
    chain = randomize(TorchChain(width, scale, stype, stride, groups), rng)
    x = randn(rng, n, scale * width, h, w, dtype=dtype)
    weights, biases = chain_arrays(chain, dtype)

    out = r2n.res2net_chain(
        x, weights, biases, scale=scale, stype=stype, stride=stride, groups=groups
    )

    assert out.dtype == dtype
    assert_close(out, torch_out(chain, x))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "stype, stride, groups", [("normal", 1, 1), ("stage", 2, 8), ("stage", 1, 1)]
)
def test_chain_without_biases_matches_conv_relu_chain(rng, stype, stride, groups, dtype):
    scale, width = 4, 8
    chain = randomize(TorchChain(width, scale, stype, stride, groups, bn=False), rng)
    x = randn(rng, 2, scale * width, 7, 9, dtype=dtype)
    weights = [as_f64(c.weight).astype(dtype) for c in chain.convs]

    out = r2n.res2net_chain(
        x, weights, None, scale=scale, stype=stype, stride=stride, groups=groups
    )

    assert_close(out, torch_out(chain, x))


@pytest.mark.parametrize("stack_biases", [False, True], ids=["bias-list", "bias-stacked"])
@pytest.mark.parametrize("stype, stride", [("normal", 1), ("stage", 2)])
def test_chain_accepts_stacked_weight_array(rng, stype, stride, stack_biases):
    scale, width, groups = 4, 8, 2
    chain = randomize(TorchChain(width, scale, stype, stride, groups), rng)
    x = randn(rng, 2, scale * width, 9, 7)
    weights, biases = chain_arrays(chain, np.float64)
    stacked = np.stack(weights)  # (scale - 1, width, width // groups, 3, 3)
    if stack_biases:
        biases = np.stack(biases)  # (scale - 1, width)

    out = r2n.res2net_chain(
        x, stacked, biases, scale=scale, stype=stype, stride=stride, groups=groups
    )

    assert_close(out, torch_out(chain, x))


# --------------------------------------------------------------------------- #
# bottle2neck
# --------------------------------------------------------------------------- #

# inplanes, planes, width, scale, stype, stride, groups, shortcut, batch, H, W
BLOCK_CASES = [
    pytest.param(32, 8, 8, 4, "normal", 1, 1, None, 2, 7, 9, id="identity-scale4"),
    pytest.param(32, 8, 8, 1, "normal", 1, 8, None, 1, 9, 7, id="identity-scale1-g8"),
    pytest.param(32, 8, 8, 8, "normal", 1, 8, None, 1, 7, 9, id="identity-scale8-g8"),
    pytest.param(16, 8, 8, 4, "stage", 1, 1, "conv", 2, 7, 9, id="conv-s1-scale4"),
    pytest.param(16, 8, 16, 2, "stage", 1, 8, "conv", 1, 9, 7, id="conv-s1-scale2-g8"),
    pytest.param(32, 16, 8, 4, "stage", 2, 1, "conv", 2, 7, 9, id="conv-s2-scale4"),
    pytest.param(32, 16, 8, 8, "stage", 2, 8, "conv", 1, 9, 7, id="conv-s2-scale8-g8"),
    pytest.param(32, 16, 8, 4, "stage", 2, 1, "avg", 2, 9, 7, id="d-s2-scale4-9x7"),
    pytest.param(32, 16, 16, 2, "stage", 2, 8, "avg", 1, 7, 9, id="d-s2-scale2-g8"),
    pytest.param(32, 16, 8, 1, "stage", 2, 1, "avg", 1, 9, 7, id="d-s2-scale1-9x7"),
    pytest.param(16, 8, 8, 4, "stage", 1, 1, "avg", 2, 7, 9, id="d-s1-scale4"),
    pytest.param(16, 8, 8, 8, "stage", 1, 8, "avg", 1, 9, 7, id="d-s1-scale8-g8"),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "inplanes, planes, width, scale, stype, stride, groups, shortcut, n, h, w", BLOCK_CASES
)
def test_bottle2neck_matches_torch_bottle2neck(
    rng, inplanes, planes, width, scale, stype, stride, groups, shortcut, n, h, w, dtype
):
    block = randomize(
        TorchBottle2neck(inplanes, planes, width, scale, stype, stride, groups, shortcut), rng
    )
    x = randn(rng, n, inplanes, h, w, dtype=dtype)
    params = block_params(block, dtype)

    out = r2n.bottle2neck(x, params, scale=scale, stype=stype, stride=stride, groups=groups)

    assert out.dtype == dtype
    assert_close(out, torch_out(block, x))


@pytest.mark.parametrize("h, w", [(1, 1), (3, 1)])
def test_bottle2neck_d_shortcut_pools_a_single_row_or_column(rng, h, w):
    block = randomize(TorchBottle2neck(16, 8, 8, 4, "stage", 2, 1, "avg"), rng)
    x = randn(rng, 1, 16, h, w)

    out = r2n.bottle2neck(x, block_params(block, np.float64), scale=4, stype="stage", stride=2)

    assert_close(out, torch_out(block, x))


# --------------------------------------------------------------------------- #
# Output layout, dtype, inputs left alone
# --------------------------------------------------------------------------- #


def _layout(x, layout):
    """x as a C-ordered, Fortran-ordered or strided (non-contiguous) array."""
    if layout == "C":
        return x
    if layout == "F":
        return np.asfortranarray(x)
    big = np.zeros(x.shape[:3] + (2 * x.shape[3],), x.dtype)
    big[..., ::2] = x
    return big[..., ::2]


def _frozen(arrays):
    """Mark arrays read-only and return copies to compare with afterwards."""
    copies = []
    for a in arrays:
        copies.append(a.copy())
        a.flags.writeable = False
    return copies


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_chain_output_is_new_c_contiguous_and_inputs_unchanged(rng, layout, dtype):
    scale, width, stype, stride = 4, 8, "stage", 2
    chain = randomize(TorchChain(width, scale, stype, stride), rng)
    x = _layout(randn(rng, 2, scale * width, 7, 9, dtype=dtype), layout)
    weights, biases = chain_arrays(chain, dtype)
    before = _frozen([x, *weights, *biases])

    out = r2n.res2net_chain(x, weights, biases, scale=scale, stype=stype, stride=stride)

    assert out.flags.c_contiguous and out.dtype == dtype
    assert not np.shares_memory(out, x)
    for a, copy in zip([x, *weights, *biases], before, strict=True):
        np.testing.assert_array_equal(a, copy)
    assert_close(out, torch_out(chain, x))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
@pytest.mark.parametrize("shortcut", [None, "avg"], ids=["identity", "d"])
def test_bottle2neck_output_is_new_c_contiguous_and_inputs_unchanged(rng, shortcut, layout, dtype):
    if shortcut is None:
        inplanes, planes, stype, stride = 32, 8, "normal", 1
    else:
        inplanes, planes, stype, stride = 16, 8, "stage", 2
    block = randomize(TorchBottle2neck(inplanes, planes, 8, 4, stype, stride, 1, shortcut), rng)
    x = _layout(randn(rng, 2, inplanes, 9, 7, dtype=dtype), layout)
    p = block_params(block, dtype)
    convs = [p.conv1, p.conv3] + ([] if p.shortcut is None else [p.shortcut])
    arrays = [x, *p.chain_weights, *p.chain_biases] + [
        a for c in convs for a in (c.weight, c.bias)
    ]
    before = _frozen(arrays)

    out = r2n.bottle2neck(x, p, scale=4, stype=stype, stride=stride)

    assert out.flags.c_contiguous and out.dtype == dtype
    assert not np.shares_memory(out, x)
    for a, copy in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(a, copy)
    assert_close(out, torch_out(block, x))


# --------------------------------------------------------------------------- #
# Bad arguments
# --------------------------------------------------------------------------- #


def _chain_weights(rng, n, width, groups=1):
    return [randn(rng, width, width // groups, 3, 3) for _ in range(n)]


def test_chain_rejects_wrong_number_of_weights_for_scale(rng):
    x = randn(rng, 1, 32, 5, 5)
    with pytest.raises(ValueError, match=r"weights must hold max\(scale - 1, 1\) = 3 arrays"):
        r2n.res2net_chain(x, _chain_weights(rng, 2, 8), scale=4)


def test_chain_rejects_wrong_number_of_biases(rng):
    x = randn(rng, 1, 32, 5, 5)
    biases = [randn(rng, 8) for _ in range(4)]
    with pytest.raises(ValueError, match=r"biases must hold .* = 3 arrays for scale=4, got 4"):
        r2n.res2net_chain(x, _chain_weights(rng, 3, 8), biases, scale=4)


def test_chain_rejects_weights_not_shaped_for_groups(rng):
    x = randn(rng, 1, 32, 5, 5)
    weights = _chain_weights(rng, 3, 8)  # (8, 8, 3, 3): right for groups=1 only
    with pytest.raises(ValueError, match=r"weights\[0\] must have shape .* = \(8, 4, 3, 3\)"):
        r2n.res2net_chain(x, weights, scale=4, groups=2)


def test_chain_rejects_bias_of_wrong_length(rng):
    x = randn(rng, 1, 32, 5, 5)
    biases = [randn(rng, 8), randn(rng, 7), randn(rng, 8)]
    with pytest.raises(ValueError, match=r"biases\[1\] must have shape \(width,\)"):
        r2n.res2net_chain(x, _chain_weights(rng, 3, 8), biases, scale=4)


def test_chain_rejects_channels_not_divisible_by_scale(rng):
    x = randn(rng, 1, 30, 5, 5)
    with pytest.raises(ValueError, match="30 channels, which is not a multiple of scale=4"):
        r2n.res2net_chain(x, _chain_weights(rng, 3, 7), scale=4)


def test_chain_rejects_width_not_divisible_by_groups(rng):
    x = randn(rng, 1, 24, 5, 5)
    with pytest.raises(ValueError, match="groups=4 must divide the chunk width 6"):
        r2n.res2net_chain(x, _chain_weights(rng, 3, 6), scale=4, groups=4)


def test_chain_rejects_normal_stype_with_stride_2(rng):
    x = randn(rng, 1, 32, 5, 5)
    with pytest.raises(ValueError, match="stype 'normal' requires stride 1"):
        r2n.res2net_chain(x, _chain_weights(rng, 3, 8), scale=4, stype="normal", stride=2)


@pytest.mark.parametrize("stype", ["Stage", "downsample", None])
def test_chain_rejects_unknown_stype(rng, stype):
    x = randn(rng, 1, 32, 5, 5)
    with pytest.raises(ValueError, match="stype must be 'normal' or 'stage'"):
        r2n.res2net_chain(x, _chain_weights(rng, 3, 8), scale=4, stype=stype)


def test_chain_rejects_weights_of_other_dtype(rng):
    x = randn(rng, 1, 32, 5, 5, dtype=np.float32)
    with pytest.raises(TypeError, match="weights"):
        r2n.res2net_chain(x, _chain_weights(rng, 3, 8), scale=4)


def _block(rng, inplanes=16, planes=8, stype="stage", stride=1, shortcut="conv"):
    block = randomize(TorchBottle2neck(inplanes, planes, 8, 4, stype, stride, 1, shortcut), rng)
    return block_params(block, np.float64)


def _replace(params, **changes):
    fields = {f: getattr(params, f) for f in params.__dataclass_fields__}
    return Bottle2neckParams(**{**fields, **changes})


@pytest.mark.parametrize(
    "inplanes, planes, stride", [(16, 8, 1), (32, 8, 2)], ids=["channel-change", "stride-2"]
)
def test_bottle2neck_rejects_identity_shortcut_that_cannot_match(rng, inplanes, planes, stride):
    params = _replace(_block(rng, inplanes, planes, stride=stride), shortcut=None)
    x = randn(rng, 1, inplanes, 7, 9)
    with pytest.raises(ValueError, match=r"identity shortcut .* needs C_out == C_in and stride 1"):
        r2n.bottle2neck(x, params, scale=4, stype="stage", stride=stride)


def test_bottle2neck_rejects_conv1_with_wrong_input_channels(rng):
    params = _block(rng)
    x = randn(rng, 1, 24, 7, 9)  # conv1 expects 16
    with pytest.raises(ValueError, match=r"params\.conv1\.weight must have shape .* \(32, 24, 1"):
        r2n.bottle2neck(x, params, scale=4, stype="stage")


def test_bottle2neck_rejects_conv1_that_is_not_1x1(rng):
    params = _block(rng)
    conv1 = FoldedConv(randn(rng, 32, 16, 3, 3), params.conv1.bias)
    x = randn(rng, 1, 16, 7, 9)
    with pytest.raises(ValueError, match=r"params\.conv1\.weight must have shape"):
        r2n.bottle2neck(x, _replace(params, conv1=conv1), scale=4, stype="stage")


def test_bottle2neck_rejects_conv3_with_wrong_input_channels(rng):
    params = _block(rng)
    conv3 = FoldedConv(randn(rng, 32, 24, 1, 1), params.conv3.bias)
    x = randn(rng, 1, 16, 7, 9)
    with pytest.raises(ValueError, match=r"params\.conv3\.weight must have shape .* \(32, 32, 1"):
        r2n.bottle2neck(x, _replace(params, conv3=conv3), scale=4, stype="stage")


def test_bottle2neck_rejects_conv_bias_of_wrong_length(rng):
    params = _block(rng)
    conv3 = FoldedConv(params.conv3.weight, randn(rng, 31))
    x = randn(rng, 1, 16, 7, 9)
    with pytest.raises(ValueError, match=r"params\.conv3\.bias must have shape \(C_out,\) = \(32"):
        r2n.bottle2neck(x, _replace(params, conv3=conv3), scale=4, stype="stage")


@pytest.mark.parametrize("avg_pool", [False, True], ids=["conv", "d"])
@pytest.mark.parametrize("shape", [(32, 8, 1, 1), (16, 16, 1, 1), (32, 16, 3, 3)])
def test_bottle2neck_rejects_shortcut_of_wrong_shape(rng, shape, avg_pool):
    params = _block(rng, 16, 8, stride=2)
    shortcut = FoldedConv(randn(rng, *shape), randn(rng, shape[0]))
    params = _replace(params, shortcut=shortcut, shortcut_avg_pool=avg_pool)
    x = randn(rng, 1, 16, 7, 9)
    with pytest.raises(ValueError, match=r"shortcut\.weight must have shape .* \(32, 16, 1"):
        r2n.bottle2neck(x, params, scale=4, stype="stage", stride=2)


def test_bottle2neck_rejects_chain_weights_for_another_scale(rng):
    params = _block(rng)  # 3 chain convs: scale 4
    x = randn(rng, 1, 16, 7, 9)
    with pytest.raises(ValueError, match=r"weights must hold .* = 1 arrays for scale=2"):
        r2n.bottle2neck(x, params, scale=2, stype="stage")


def test_bottle2neck_rejects_normal_stype_with_stride_2(rng):
    params = _block(rng, 16, 8, stride=2)
    x = randn(rng, 1, 16, 7, 9)
    with pytest.raises(ValueError, match="stype 'normal' requires stride 1"):
        r2n.bottle2neck(x, params, scale=4, stype="normal", stride=2)


@pytest.mark.parametrize(
    "params", [None, {"conv1": None}, (1, 2, 3, 4)], ids=["None", "dict", "tuple"]
)
def test_bottle2neck_rejects_params_that_are_not_bottle2neck_params(rng, params):
    x = randn(rng, 1, 16, 7, 9)
    with pytest.raises(TypeError, match=r"params must be an r2n\.Bottle2neckParams"):
        r2n.bottle2neck(x, params, scale=4, stype="stage")


def test_bottle2neck_rejects_folded_conv_of_non_arrays(rng):
    params = _block(rng)
    conv1 = FoldedConv(params.conv1.weight.tolist(), params.conv1.bias)
    x = randn(rng, 1, 16, 7, 9)
    with pytest.raises(TypeError, match=r"params\.conv1\.weight must be a numpy\.ndarray"):
        r2n.bottle2neck(x, _replace(params, conv1=conv1), scale=4, stype="stage")


def test_bottle2neck_rejects_avg_pool_flag_without_shortcut(rng):
    params = _block(rng, 16, 4, stype="normal", shortcut=None)
    x = randn(rng, 1, 16, 7, 9)
    with pytest.raises(ValueError, match=r"shortcut_avg_pool=True needs params\.shortcut"):
        r2n.bottle2neck(x, _replace(params, shortcut_avg_pool=True), scale=4)


def test_bottle2neck_rejects_non_bool_avg_pool_flag(rng):
    params = _block(rng, 16, 8, stride=2)
    x = randn(rng, 1, 16, 7, 9)
    with pytest.raises(TypeError, match=r"shortcut_avg_pool must be a bool, got 'yes'"):
        r2n.bottle2neck(x, _replace(params, shortcut_avg_pool="yes"), scale=4, stype="stage")
