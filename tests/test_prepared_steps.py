"""Prepared steps (``r2n._backends.STEPS``): the pools and TResNet's layers
that a model runs between its convs, prepared so that their outputs can be
reused buffers (the cpu backend's ``PreparedStep``; the other backends' are
the fallback over their own ops).

* Each gives the public op's result (against the float64 reference, odd
  shapes, both dtypes), squeeze_excite with its fused residual + ReLU too.
* On the cpu backend with ``reuse_output=True`` a second call of the same
  shape returns the same buffer, written in full (it is poisoned with NaN in
  between), and a call whose input or residual is that buffer gets a new one.
* Bad input is the public op's ValueError / TypeError, on every backend, and
  bad options are refused when the step is prepared.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import DTYPES, assert_close, randn

import r2n
from r2n import _backends

BACKENDS = ["reference"] + (["cpu"] if r2n.implements("cpu", "conv2d") else [])

#: step -> (options, the public op's call on float64 x)
CASES = {
    "max_pool2d": (
        dict(kernel_size=3, stride=2, padding=1),
        lambda x: r2n.max_pool2d(x, 3, 2, 1, backend="reference"),
    ),
    "avg_pool2d": (
        dict(kernel_size=2, stride=2, ceil_mode=True, count_include_pad=False),
        lambda x: r2n.avg_pool2d(
            x, 2, 2, 0, ceil_mode=True, count_include_pad=False, backend="reference"
        ),
    ),
    "global_avg_pool2d": ({}, lambda x: r2n.global_avg_pool2d(x, backend="reference")),
    "blur_pool2d": ({}, lambda x: r2n.blur_pool2d(x, backend="reference")),
}


def _se_weights(rng, c, c_mid, dtype):
    return (
        randn(rng, c_mid, c, 1, 1, dtype=dtype),
        randn(rng, c_mid, dtype=dtype),
        randn(rng, c, c_mid, 1, 1, dtype=dtype),
        randn(rng, c, dtype=dtype),
    )


def _f64(arrays):
    return [a.astype(np.float64) for a in arrays]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(CASES))
def test_a_prepared_pool_or_blur_is_the_public_op(rng, backend, dtype, op):
    options, public = CASES[op]
    step = _backends.prepare(op, backend, "numpy", reuse_output=True, **options)
    for shape in [(1, 5, 7, 9), (2, 3, 9, 7)]:  # two shapes in turn: no state between
        x = randn(rng, *shape, dtype=dtype)
        kept = x.copy()
        assert_close(step(x), public(x.astype(np.float64)))
        np.testing.assert_array_equal(x, kept)  # the input is not modified


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_prepared_space_to_depth_is_the_public_op(rng, backend, dtype):
    step = _backends.prepare("space_to_depth", backend, "numpy", block_size=2)
    x = randn(rng, 2, 3, 6, 10, dtype=dtype)
    np.testing.assert_array_equal(step(x), r2n.space_to_depth(x, 2, backend="reference"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [None, "relu"])
def test_a_prepared_squeeze_excite_adds_the_residual_then_the_relu(
    rng, backend, dtype, activation
):
    weights = _se_weights(rng, 5, 3, dtype)
    step = _backends.prepare(
        "squeeze_excite", backend, "numpy", *weights, activation=activation, reuse_output=True
    )
    x, r = randn(rng, 2, 5, 7, 9, dtype=dtype), randn(rng, 2, 5, 7, 9, dtype=dtype)
    se = r2n.squeeze_excite(*_f64([x, *weights]), backend="reference")
    act = (lambda v: np.maximum(v, 0)) if activation else (lambda v: v)
    assert_close(step(x), act(se))
    assert_close(step(x, residual=r), act(se + r.astype(np.float64)))
    # a strided (non-contiguous) x and residual
    xs, rs = randn(rng, 1, 5, 14, 9, dtype=dtype)[:, :, ::2], x[:1, :, :, ::-1]
    se = r2n.squeeze_excite(*_f64([xs, *weights]), backend="reference")
    assert_close(step(xs, residual=rs), act(se + rs.astype(np.float64)))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="needs numba")
@pytest.mark.parametrize("op", ["max_pool2d", "global_avg_pool2d", "blur_pool2d", "se"])
def test_the_cpu_step_reuses_its_output_and_writes_all_of_it(rng, op):
    if op == "se":
        weights = _se_weights(rng, 4, 3, np.float32)
        step = _backends.prepare("squeeze_excite", "cpu", "numpy", *weights, reuse_output=True)
    else:
        weights, (options, _) = (), CASES[op]
        step = _backends.prepare(op, "cpu", "numpy", reuse_output=True, **options)
    x = randn(rng, 2, 4, 9, 11, dtype=np.float32)
    first = step(x)
    expected = first.copy()
    first.fill(np.nan)  # whatever the buffer holds, the next call overwrites it all
    second = step(x)
    assert second is first
    np.testing.assert_array_equal(second, expected)
    if op in ("se", "blur_pool2d"):  # the output passed back in: written elsewhere
        y = step(second) if op == "blur_pool2d" else step(x, residual=second)
        assert not np.shares_memory(y, second)
    off = _backends.prepare("max_pool2d", "cpu", "numpy", kernel_size=2, reuse_output=False)
    assert off(x) is not off(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prepared_steps_refuse_bad_input_as_the_public_ops(rng, backend):
    f32 = np.float32
    x = randn(rng, 1, 4, 6, 6, dtype=f32)
    weights = _se_weights(rng, 4, 2, f32)

    def prepare(op, *arrays, **options):
        return _backends.prepare(op, backend, "numpy", *arrays, reuse_output=True, **options)

    se = prepare("squeeze_excite", *weights, activation="relu")
    pool = prepare("max_pool2d", kernel_size=3, stride=2, padding=1)
    with pytest.raises(TypeError, match=r"r2n.squeeze_excite: .*float"):
        se(x.astype(np.float64))  # x's dtype is not the weights'
    with pytest.raises(ValueError, match=r"r2n.squeeze_excite: w1 must have shape"):
        se(randn(rng, 1, 5, 6, 6, dtype=f32))  # 5 channels, weights for 4
    with pytest.raises(ValueError, match=r"r2n.squeeze_excite: residual must have shape"):
        se(x, residual=x[:, :, :5])
    with pytest.raises(TypeError, match=r"r2n.squeeze_excite"):
        se(x, residual=x.astype(np.float64))
    with pytest.raises(TypeError, match=r"r2n.squeeze_excite"):
        se(x, residual=x.tolist())
    with pytest.raises(TypeError, match=r"r2n.max_pool2d"):
        pool(x.tolist())
    with pytest.raises(ValueError, match=r"r2n.max_pool2d: x must be 4-D"):
        pool(x[0])
    with pytest.raises(TypeError, match=r"prepared max_pool2d takes no residual"):
        pool(x, residual=x)
    with pytest.raises(ValueError, match=r"r2n.space_to_depth: H and W must be divisible"):
        prepare("space_to_depth", block_size=4)(x)
    with pytest.raises(ValueError, match=r"r2n.blur_pool2d: reflect padding needs"):
        prepare("blur_pool2d")(x[:, :, :1])
    with pytest.raises(ValueError, match=r"r2n.max_pool2d: padding"):
        prepare("max_pool2d", kernel_size=2, padding=2)(x)
    # Bad options are refused when the step is prepared.
    with pytest.raises(TypeError, match=r"unknown option\(s\) kernel"):
        prepare("blur_pool2d", kernel=3)
    with pytest.raises(TypeError, match=r"takes 4 weight array\(s\) \(w1, b1, w2, b2\), got 2"):
        prepare("squeeze_excite", *weights[:2])
    with pytest.raises(TypeError, match=r"takes 0 weight array"):
        prepare("global_avg_pool2d", weights[0])
    with pytest.raises(ValueError, match=r"activation must be None or 'relu'"):
        prepare("squeeze_excite", *weights, activation="leaky_relu")
    with pytest.raises(TypeError, match=r"prepared max_pool2d needs kernel_size="):
        prepare("max_pool2d", stride=2)
    with pytest.raises(TypeError, match=r"prepared avg_pool2d needs kernel_size="):
        prepare("avg_pool2d")
    with pytest.raises(ValueError, match=r"prepared max_pool2d takes no precision"):
        prepare("max_pool2d", kernel_size=2, precision="tf32")
    with pytest.raises(ValueError, match=r"prepared squeeze_excite takes no precision"):
        prepare("squeeze_excite", *weights, precision="bf16")
    with pytest.raises(ValueError, match=r"cannot prepare 'linear'"):
        prepare("linear", weights[0])
