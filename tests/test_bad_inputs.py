"""Bad input gets a clear ValueError/TypeError naming what was expected and
what came; it never produces a wrong answer. (Chain and bottleneck specific
cases live in test_res2net.py; mixed NumPy/CuPy in test_api.py.)"""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
from op_cases import CASES, all_arrays, map_arrays

import r2n


def r(*shape, dtype=np.float64):
    return np.random.default_rng(sum(shape) + len(shape)).standard_normal(shape).astype(dtype)


X = r(2, 6, 7, 9)  # N, C, H, W
W3 = r(4, 6, 3, 3)  # C_out, C_in, kH, kW


# --------------------------------------------------------------------------- #
# dtypes and array types, for every op
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "bad_dtype", [np.int64, np.int32, np.complex128, np.float16, np.bool_], ids=str
)
@pytest.mark.parametrize("op", sorted(CASES))
def test_non_float32_64_data_is_a_type_error(op, bad_dtype):
    args, kwargs = CASES[op](np.random.default_rng(0), np.float64, 2)
    bad = map_arrays(args, lambda a: a.astype(bad_dtype))
    with pytest.raises(TypeError, match=r"expected float32 or float64"):
        getattr(r2n, op)(*bad, **kwargs)


MULTI_ARRAY_OPS = [
    op
    for op in sorted(CASES)
    if len(list(all_arrays(CASES[op](np.random.default_rng(0), "f4", 1)[0]))) > 1
]


@pytest.mark.parametrize("op", MULTI_ARRAY_OPS)
def test_mixed_float32_and_float64_is_a_type_error_naming_both(op):
    args, kwargs = CASES[op](np.random.default_rng(0), np.float32, 2)
    last = list(all_arrays(args))[-1]
    mixed = map_arrays(args, lambda a: a.astype(np.float64) if a is last else a)
    with pytest.raises(TypeError, match=r"dtype float64 but .* dtype float32"):
        getattr(r2n, op)(*mixed, **kwargs)


# The array arguments that may be None, and what None stands for.
OPTIONAL_ARRAYS = {
    ("conv2d", "bias"): 0.0,
    ("linear", "bias"): 0.0,
    ("batch_norm", "weight"): 1.0,
    ("batch_norm", "bias"): 0.0,
    ("fold_batch_norm", "conv_bias"): 0.0,
    ("fold_batch_norm", "weight"): 1.0,
    ("fold_batch_norm", "bias"): 0.0,
    ("squeeze_excite", "b1"): 0.0,
    ("squeeze_excite", "b2"): 0.0,
    ("bottle2neck", "params.conv1.bias"): 0.0,
    ("bottle2neck", "params.conv3.bias"): 0.0,
    ("bottle2neck", "params.shortcut.bias"): 0.0,
}


def _named_arrays(op, args):
    """(argument name as the error names it, array) for every array of a call."""
    names = list(inspect.signature(getattr(r2n, op)).parameters)
    for name, value in zip(names, args, strict=False):
        if isinstance(value, np.ndarray):
            yield name, value
        elif isinstance(value, list):
            yield from ((f"{name}[{i}]", a) for i, a in enumerate(value))
        elif isinstance(value, r2n.Bottle2neckParams):
            for field in ("conv1", "conv3", "shortcut"):
                conv = getattr(value, field)
                yield f"params.{field}.weight", conv.weight
                yield f"params.{field}.bias", conv.bias
            for field in ("chain_weights", "chain_biases"):
                yield from (
                    (f"params.{field}[{i}]", a) for i, a in enumerate(getattr(value, field))
                )


NONE_CASES = [
    (op, name)
    for op in sorted(CASES)
    for name, _ in _named_arrays(op, CASES[op](np.random.default_rng(0), np.float64, 1)[0])
]


@pytest.mark.parametrize("op, name", NONE_CASES, ids=[f"{o}-{n}" for o, n in NONE_CASES])
def test_none_for_an_array_is_a_type_error_naming_it_unless_optional(op, name):
    """None where an array is required is a TypeError naming the argument
    (never an AttributeError, a Numba typing error or a wrong backend message);
    where the argument is optional, None means the neutral value."""
    args, kwargs = CASES[op](np.random.default_rng(0), np.float64, 2)
    target = dict(_named_arrays(op, args))[name]
    with_none = map_arrays(args, lambda a: None if a is target else a)
    if (op, name) not in OPTIONAL_ARRAYS:
        with pytest.raises(TypeError, match=rf"^r2n\.{op}: {re.escape(name)} is required"):
            getattr(r2n, op)(*with_none, **kwargs)
        return
    neutral = np.full_like(target, OPTIONAL_ARRAYS[op, name])
    with_neutral = map_arrays(args, lambda a: neutral if a is target else a)
    out, expected = (
        getattr(r2n, op)(*with_none, **kwargs),
        getattr(r2n, op)(*with_neutral, **kwargs),
    )
    for o, e in zip(
        out if isinstance(out, tuple) else [out],
        expected if isinstance(expected, tuple) else [expected],
        strict=True,
    ):
        np.testing.assert_allclose(o, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "cpu", "gpu"])
def test_none_data_is_a_type_error_on_every_backend(backend):
    """Not "backend 'cpu' computes on NumPy arrays, got CuPy arrays"."""
    with pytest.raises(TypeError, match=r"^r2n\.relu: x is required: .* got None$"):
        r2n.relu(None, backend=backend)


def test_leaky_relu_slope_must_fit_the_dtype():
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    with pytest.raises(ValueError, match=r"negative_slope=1e\+300 does not fit .* float32"):
        r2n.leaky_relu(x, 1e300)  # float32(1e300) is inf: -inf and inf * 0 = NaN
    with pytest.raises(ValueError, match=r"does not fit .* float32"):
        r2n.leaky_relu(x, -4e38)
    big = float(np.finfo(np.float32).max)
    assert np.array_equal(r2n.leaky_relu(x, big), np.float32([-big, 0.0, 2.0]))
    assert np.array_equal(r2n.leaky_relu(x.astype(np.float64), 1e300), [-1e300, 0.0, 2.0])


def test_a_list_is_not_an_array():
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray or cupy.ndarray, got list"):
        r2n.relu([1.0, -1.0])


def test_a_float16_torch_tensor_is_a_type_error_naming_it():
    # torch tensors of float32/float64 are arrays through DLPack (tests/test_dlpack.py)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"x is a torch.Tensor of dtype float16"):
        r2n.conv2d(torch.zeros(1, 6, 7, 9, dtype=torch.float16), W3)


# --------------------------------------------------------------------------- #
# Ranks and shapes
# --------------------------------------------------------------------------- #

BAD_SHAPES = [
    # (call, expected message fragment)
    (lambda: r2n.conv2d(X[0], W3), r"x must be 4-D \(N, C_in, H, W\), got shape \(6, 7, 9\)"),
    (lambda: r2n.conv2d(X, W3[0]), r"weight must be 4-D"),
    (lambda: r2n.conv2d(X, r(4, 5, 3, 3)), r"weight has 5 input channels per group.*C_in=6"),
    (lambda: r2n.conv2d(X, r(4, 6, 3, 3), groups=2), r"expected C_in // groups = 3"),
    (lambda: r2n.conv2d(X, r(4, 1, 3, 3), groups=4), r"groups=4 must divide both C_in=6"),
    (lambda: r2n.conv2d(X, r(5, 2, 3, 3), groups=3), r"groups=3 must divide both.*C_out=5"),
    (lambda: r2n.conv2d(X, W3, r(3)), r"bias must have shape \(C_out,\) = \(4,\), got \(3,\)"),
    (lambda: r2n.conv2d(X, r(4, 6, 10, 3)), r"kernel is larger than the padded input along H"),
    (
        lambda: r2n.conv2d(X, W3, dilation=(1, 5)),
        r"along W: kernel extent 11 \(size 3, dilation 5\) > 9",
    ),
    (lambda: r2n.conv2d(r(2, 6, 0, 9), W3), r"H >= 1 and W >= 1"),
    (lambda: r2n.conv2d(X, r(0, 6, 3, 3)), r"C_out, kH, kW >= 1"),
    (lambda: r2n.linear(r(3, 5), r(4, 6)), r"in_features = weight.shape\[1\] = 6"),
    (lambda: r2n.linear(r(3, 6), r(4, 6, 1)), r"weight must be 2-D"),
    (lambda: r2n.linear(r(3, 6), r(4, 6), r(6)), r"bias must have shape"),
    (lambda: r2n.batch_norm(r(6), r(6), r(6)), r"at least 2-D"),
    (lambda: r2n.batch_norm(X, r(5), r(6)), r"mean must have shape \(C,\) = \(6,\), got \(5,\)"),
    (lambda: r2n.batch_norm(X, r(6), r(6), r(6), r(7)), r"bias must have shape"),
    (lambda: r2n.fold_batch_norm(W3, None, r(6), r(4)), r"mean must have shape \(C,\) = \(4,\)"),
    (lambda: r2n.fold_batch_norm(W3, r(6), r(4), r(4)), r"conv_bias must have shape"),
    (lambda: r2n.max_pool2d(X[0], 2), r"x must be 4-D"),
    (lambda: r2n.avg_pool2d(X, 10), r"kernel is larger than the padded input along H"),
    (lambda: r2n.max_pool2d(X, 3, padding=2), r"padding along H must be at most half"),
    (lambda: r2n.avg_pool2d(X, (3, 2), padding=(1, 2)), r"padding along W must be at most"),
    (lambda: r2n.global_avg_pool2d(X[0]), r"x must be 4-D"),
    (lambda: r2n.global_avg_pool2d(r(1, 2, 3, 0)), r"H >= 1 and W >= 1"),
    (lambda: r2n.space_to_depth(X, 4), r"divisible by block_size=4, got shape \(2, 6, 7, 9\)"),
    (lambda: r2n.space_to_depth(X[0]), r"x must be 4-D"),
    (lambda: r2n.blur_pool2d(r(1, 2, 1, 5)), r"reflect padding needs H >= 2 and W >= 2"),
    (lambda: r2n.blur_pool2d(X[0]), r"x must be 4-D"),
    (
        lambda: r2n.squeeze_excite(X, r(3, 5, 1, 1), None, r(6, 3, 1, 1), None),
        r"w1 must have shape \(C_mid, C, 1, 1\) = \(3, 6, 1, 1\)",
    ),
    (
        lambda: r2n.squeeze_excite(X, r(3, 6, 1, 1), None, r(6, 2, 1, 1), None),
        r"w2 must have shape \(C, C_mid, 1, 1\) = \(6, 3, 1, 1\)",
    ),
    (lambda: r2n.squeeze_excite(X, r(3, 6, 1, 1), r(2), r(6, 3, 1, 1), None), r"b1 must"),
    (lambda: r2n.squeeze_excite(X, r(3, 6, 1, 1), None, r(6, 3, 1, 1), r(3)), r"b2 must"),
]


@pytest.mark.parametrize("call, message", BAD_SHAPES, ids=[m for _, m in BAD_SHAPES])
def test_bad_shapes_are_value_errors_saying_what_was_expected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------- #
# Strides, paddings, dilations, groups and other scalars
# --------------------------------------------------------------------------- #

BAD_SCALARS = [
    # (call, exception, message fragment)
    (lambda: r2n.conv2d(X, W3, stride=0), ValueError, r"stride must be >= 1, got 0"),
    (lambda: r2n.conv2d(X, W3, stride=(1, -2)), ValueError, r"stride\[1\] must be >= 1"),
    (lambda: r2n.conv2d(X, W3, dilation=0), ValueError, r"dilation must be >= 1, got 0"),
    (lambda: r2n.conv2d(X, W3, padding=-1), ValueError, r"padding must be >= 0, got -1"),
    (lambda: r2n.conv2d(X, W3, padding=(0, -1)), ValueError, r"padding\[1\] must be >= 0"),
    (lambda: r2n.conv2d(X, W3, groups=0), ValueError, r"groups must be >= 1, got 0"),
    (lambda: r2n.conv2d(X, W3, stride=1.5), TypeError, r"stride must be an int, got 1.5"),
    (lambda: r2n.conv2d(X, W3, stride=True), TypeError, r"stride must be an int, got True"),
    (lambda: r2n.conv2d(X, W3, padding="same"), TypeError, r"padding must be an int"),
    (lambda: r2n.conv2d(X, W3, stride=(1, 2, 3)), ValueError, r"int or an \(h, w\) pair"),
    (lambda: r2n.max_pool2d(X, 0), ValueError, r"kernel_size must be >= 1, got 0"),
    (lambda: r2n.max_pool2d(X, 2, stride=0), ValueError, r"stride must be >= 1"),
    (lambda: r2n.avg_pool2d(X, 2, padding=-1), ValueError, r"padding must be >= 0"),
    (lambda: r2n.max_pool2d(X, 2, ceil_mode=1), TypeError, r"ceil_mode must be a bool"),
    (
        lambda: r2n.avg_pool2d(X, 2, count_include_pad=None),
        TypeError,
        r"count_include_pad must be a bool",
    ),
    (lambda: r2n.space_to_depth(X, 0), ValueError, r"block_size must be >= 1, got 0"),
    (lambda: r2n.leaky_relu(X, float("nan")), ValueError, r"negative_slope must be a finite"),
    (lambda: r2n.leaky_relu(X, "0.1"), TypeError, r"negative_slope must be a real number"),
    (lambda: r2n.batch_norm(X, r(6), r(6), eps=-1e-5), ValueError, r"eps must be a finite"),
    (lambda: r2n.relu(X, backend="fast"), ValueError, r"backend must be None or one of"),
]


@pytest.mark.parametrize("call, exc, message", BAD_SCALARS, ids=[m for *_, m in BAD_SCALARS])
def test_bad_scalar_arguments_raise_clear_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_numpy_integer_scalars_are_accepted_as_ints():
    out = r2n.conv2d(X, W3, stride=np.int64(2), padding=(np.int32(1), 1))
    assert out.shape == r2n.conv2d(X, W3, stride=2, padding=1).shape


def test_errors_name_the_op():
    with pytest.raises(ValueError, match=r"^r2n\.max_pool2d: "):
        r2n.max_pool2d(X, 3, padding=2)
