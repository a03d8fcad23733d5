"""The public API's contract, for every op: backend choice, array handling,
batch 0, NaN/Inf propagation, and never touching the caller's arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from op_cases import BATCHED, CASES, TORCH, all_arrays, map_arrays

import r2n
import r2n.cpu
import r2n.gpu

OPS = list(CASES)


def test_every_public_op_has_a_case_and_a_reference():
    assert sorted(r2n.OPS) == sorted(CASES)
    assert all(callable(getattr(r2n, op)) for op in r2n.OPS)
    assert all(r2n.implements("reference", op) for op in r2n.OPS)


class FakeCupyArray:
    """Looks like a cupy.ndarray to r2n's kind detection, without CuPy."""

    __module__ = "cupy._core.core"

    def __init__(self, a):
        self.shape, self.ndim, self.dtype = a.shape, a.ndim, a.dtype


def _call(op, args, kwargs, **extra):
    return getattr(r2n, op)(*args, **kwargs, **extra)


def _outputs(out):
    """fold_batch_norm returns a pair; every other op one array."""
    return list(out) if isinstance(out, tuple) else [out]


# --------------------------------------------------------------------------- #
# Backend choice
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("op", OPS)
def test_numpy_default_is_reference_when_cpu_lacks_the_op(op, rng, monkeypatch):
    monkeypatch.setattr(r2n.cpu, "OPS", {})
    args, kwargs = CASES[op](rng, np.float64, 2)
    out = _call(op, args, kwargs)
    ref = _call(op, args, kwargs, backend="reference")
    for o, r in zip(_outputs(out), _outputs(ref), strict=True):
        np.testing.assert_array_equal(o, r)


def test_numpy_default_is_cpu_when_it_implements_the_op(rng, monkeypatch):
    calls = []

    def fake_relu(x):
        calls.append(x)
        return np.zeros_like(x)

    monkeypatch.setattr(r2n.cpu, "OPS", {"relu": fake_relu})
    monkeypatch.setattr(r2n.cpu, "available", lambda: True)
    x = rng.standard_normal((2, 3))
    r2n.relu(x)
    assert len(calls) == 1
    # ...and ops the cpu backend lacks still run on the reference.
    np.testing.assert_array_equal(r2n.sigmoid(x), r2n.sigmoid(x, backend="reference"))


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_forced_backend_without_the_op_names_op_and_backend(backend, rng, monkeypatch):
    mod = getattr(r2n, backend)
    monkeypatch.setattr(mod, "OPS", {})
    x = rng.standard_normal((1, 2, 3, 3))
    args = (x,) if backend == "cpu" else (FakeCupyArray(x),)
    with pytest.raises(NotImplementedError, match=rf"r2n.relu: backend '{backend}'.*relu"):
        r2n.relu(*args, backend=backend)


def test_cupy_arrays_go_to_the_gpu_backend(rng, monkeypatch):
    monkeypatch.setattr(r2n.gpu, "OPS", {})
    x = FakeCupyArray(rng.standard_normal((1, 2, 3, 3)))
    with pytest.raises(NotImplementedError, match="backend 'gpu'"):
        r2n.relu(x)


def test_forced_gpu_backend_rejects_numpy_arrays(rng):
    with pytest.raises(TypeError, match="'gpu' computes on CuPy arrays, got NumPy"):
        r2n.relu(rng.standard_normal(3), backend="gpu")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_forced_host_backend_rejects_cupy_arrays(backend, rng):
    x = FakeCupyArray(rng.standard_normal((1, 2, 3, 3)))
    with pytest.raises(TypeError, match=f"'{backend}' computes on NumPy arrays, got CuPy"):
        r2n.relu(x, backend=backend)


def test_unknown_backend_is_a_value_error(rng):
    with pytest.raises(ValueError, match="backend must be None or one of"):
        r2n.relu(rng.standard_normal(3), backend="tpu")


def test_numpy_mixed_with_cupy_is_a_type_error_naming_both(rng):
    x = rng.standard_normal((1, 3, 5, 5))
    w = FakeCupyArray(rng.standard_normal((2, 3, 3, 3)))
    with pytest.raises(TypeError, match=r"cannot mix NumPy and CuPy.*x is numpy.ndarray.*weight"):
        r2n.conv2d(x, w)


def test_importing_r2n_does_not_import_cupy_or_torch():
    import subprocess
    import sys

    code = "import sys, r2n; print('cupy' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"], out.stderr


# --------------------------------------------------------------------------- #
# Array handling
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", OPS)
def test_output_is_a_new_c_contiguous_array_of_the_input_dtype(op, dtype, rng):
    args, kwargs = CASES[op](rng, dtype, 3)
    for out in _outputs(_call(op, args, kwargs)):
        assert type(out) is np.ndarray
        assert out.dtype == dtype
        assert out.flags.c_contiguous
        assert not any(np.may_share_memory(out, a) for a in all_arrays(args))


@pytest.mark.parametrize("op", OPS)
def test_inputs_are_never_modified(op, rng):
    args, kwargs = CASES[op](rng, np.float64, 3)
    before = [a.copy() for a in all_arrays(args)]
    _call(op, args, kwargs)
    for a, b in zip(all_arrays(args), before, strict=True):
        np.testing.assert_array_equal(a, b)


def _fortran(a):
    return np.asfortranarray(a)


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _strided(a):
    """Same values, as a non-contiguous view (every other element of a bigger array)."""
    big = np.empty(a.shape + (2,), a.dtype)
    big[..., 0] = a
    big[..., 1] = np.nan  # poison: read by mistake, it shows
    return big[..., 0]


@pytest.mark.parametrize("layout", [_fortran, _read_only, _strided])
@pytest.mark.parametrize("op", OPS)
def test_fortran_read_only_and_strided_inputs_give_the_same_result(op, layout, rng):
    args, kwargs = CASES[op](rng, np.float64, 3)
    expected = _outputs(_call(op, args, kwargs))
    got = _outputs(_call(op, map_arrays(args, layout), kwargs))
    for g, e in zip(got, expected, strict=True):
        # Layout may change the summation order (BLAS, pairwise sums): rounding only.
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("op", BATCHED)
def test_batch_zero_returns_an_empty_result_of_the_right_shape(op, rng):
    args, kwargs = CASES[op](rng, np.float64, 0)
    out = _call(op, args, kwargs)
    full = _call(op, *CASES[op](rng, np.float64, 2))
    assert out.shape == (0,) + full.shape[1:]
    assert out.dtype == np.float64


@pytest.mark.parametrize("op", sorted(TORCH))
def test_nan_and_inf_propagate_as_in_pytorch(op, rng):
    args, kwargs = CASES[op](rng, np.float64, 3)
    x = args[0].copy()
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, 3, replace=False)] = [np.nan, np.inf, -np.inf]
    args = (x,) + tuple(args[1:])
    out = _call(op, args, kwargs)
    with torch.no_grad():
        expected = TORCH[op](*args, **kwargs).numpy()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(out), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(out), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(out[finite], expected[finite], rtol=1e-12, atol=1e-12)


def test_sigmoid_saturates_without_overflow_warnings():
    x = np.array([-1e4, -800.0, -50.0, 0.0, 50.0, 800.0, 1e4], dtype=np.float32)
    with np.errstate(all="raise"):
        out = r2n.sigmoid(x)
    np.testing.assert_array_equal(out, torch.sigmoid(torch.from_numpy(x)).numpy())


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("op", ["relu", "leaky_relu", "sigmoid"])
def test_activations_of_a_0d_array_return_a_0d_array(op, backend):
    out = getattr(r2n, op)(np.array(-2.0), backend=backend)
    assert type(out) is np.ndarray and out.shape == ()


def test_bottle2neck_params_map_applies_to_every_array_and_keeps_the_rest(rng):
    conv = r2n.FoldedConv(rng.standard_normal((8, 4, 1, 1)), rng.standard_normal(8))
    params = r2n.Bottle2neckParams(
        conv1=conv,
        chain_weights=[rng.standard_normal((2, 2, 3, 3)) for _ in range(3)],
        chain_biases=None,
        conv3=r2n.FoldedConv(rng.standard_normal((8, 8, 1, 1)), None),
        shortcut=None,
        shortcut_avg_pool=True,
    )
    seen = []
    mapped = params.map(lambda a: seen.append(a.shape) or a.astype(np.float32))
    assert len(seen) == 2 + 3 + 1  # conv1 weight and bias, 3 chain weights, conv3 weight
    assert mapped.conv1.weight.dtype == mapped.chain_weights[2].dtype == np.float32
    assert mapped.conv3.bias is None and mapped.chain_biases is None and mapped.shortcut is None
    assert mapped.shortcut_avg_pool is True
    np.testing.assert_array_equal(mapped.conv1.bias, params.conv1.bias.astype(np.float32))
    assert params.conv1.weight.dtype == np.float64  # the original is not changed
