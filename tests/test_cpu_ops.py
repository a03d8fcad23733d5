"""The Numba CPU kernels of the elementwise, pooling and layer ops against the reference.

Every op in r2n/cpu/{elementwise,pool,layers}.py runs with ``backend="cpu"`` and
``backend="reference"`` on the same fresh random inputs (odd shapes: 15
channels, 7 x 9 images, batch 1 and 3), in both dtypes, and must agree within
the dtype's tolerance. Then the edges: every pool rule, NaN/Inf, layouts,
read-only inputs, batch 0, and hypothesis-drawn pools.

Compile time dominates this file: each kernel compiles once per dtype (then
comes from the on-disk cache), so every call passes the same argument types.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import DTYPES, assert_close, randn, t64
from hypothesis import assume, example, given
from hypothesis import strategies as st

import r2n

pytest.importorskip("numba")


def _positive(rng, *shape, dtype):
    """Variances: positive, away from zero."""
    return rng.uniform(0.5, 2.0, shape).astype(dtype)


# op -> (rng, dtype, n) -> (args, kwargs) for getattr(r2n, op). x comes first.
CASES = {
    "relu": lambda rng, dt, n: ((randn(rng, n, 15, 7, 9, dtype=dt),), {}),
    "leaky_relu": lambda rng, dt, n: (
        (randn(rng, n, 15, 7, 9, dtype=dt),),
        {"negative_slope": 0.2},
    ),
    "sigmoid": lambda rng, dt, n: ((4 * randn(rng, n, 15, 7, 9, dtype=dt),), {}),
    "batch_norm": lambda rng, dt, n: (
        (
            randn(rng, n, 15, 7, 9, dtype=dt),
            randn(rng, 15, dtype=dt),
            _positive(rng, 15, dtype=dt),
            randn(rng, 15, dtype=dt),
            randn(rng, 15, dtype=dt),
        ),
        {"eps": 1e-3},
    ),
    "fold_batch_norm": lambda rng, dt, n: (
        (
            randn(rng, 15, 5, 3, 3, dtype=dt),
            randn(rng, 15, dtype=dt),
            randn(rng, 15, dtype=dt),
            _positive(rng, 15, dtype=dt),
            randn(rng, 15, dtype=dt),
            randn(rng, 15, dtype=dt),
        ),
        {"eps": 1e-3},
    ),
    "max_pool2d": lambda rng, dt, n: (
        (randn(rng, n, 15, 7, 9, dtype=dt),),
        {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
    ),
    "avg_pool2d": lambda rng, dt, n: (
        (randn(rng, n, 15, 7, 9, dtype=dt),),
        {
            "kernel_size": (3, 2),
            "stride": 2,
            "padding": 1,
            "ceil_mode": True,
            "count_include_pad": False,
        },
    ),
    "global_avg_pool2d": lambda rng, dt, n: ((randn(rng, n, 15, 7, 9, dtype=dt),), {}),
    "linear": lambda rng, dt, n: (
        (randn(rng, n, 3, 15, dtype=dt), randn(rng, 11, 15, dtype=dt), randn(rng, 11, dtype=dt)),
        {},
    ),
    "space_to_depth": lambda rng, dt, n: (
        (randn(rng, n, 15, 6, 9, dtype=dt),),
        {"block_size": 3},
    ),
    "blur_pool2d": lambda rng, dt, n: ((randn(rng, n, 15, 7, 9, dtype=dt),), {}),
    "squeeze_excite": lambda rng, dt, n: (
        (
            randn(rng, n, 15, 7, 9, dtype=dt),
            randn(rng, 4, 15, 1, 1, dtype=dt),
            randn(rng, 4, dtype=dt),
            randn(rng, 15, 4, 1, 1, dtype=dt),
            randn(rng, 15, dtype=dt),
        ),
        {},
    ),
}
OPS = sorted(CASES)


def _outputs(result):
    """An op's result as a tuple of arrays (fold_batch_norm returns two)."""
    return result if isinstance(result, tuple) else (result,)


def _check_output(out, ref, dtype):
    """New C-contiguous ndarray of the dtype and the reference's shape and values."""
    assert type(out) is np.ndarray
    assert out.dtype == dtype
    assert out.flags.c_contiguous
    assert out.shape == np.shape(ref)
    if out.size:
        assert_close(out, ref)


def _compare(op, args, kwargs, dtype):
    """Run op on both backends and compare every output."""
    f = getattr(r2n, op)
    outs = _outputs(f(*args, backend="cpu", **kwargs))
    refs = _outputs(f(*args, backend="reference", **kwargs))
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs, strict=True):
        _check_output(out, ref, dtype)
    return outs


# --------------------------------------------------------------------------- #
# Every op, both dtypes, batch 1 and 3
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_cpu_matches_reference(op, dtype, n, rng):
    args, kwargs = CASES[op](rng, dtype, n)
    copies = [None if a is None else a.copy() for a in args]
    _compare(op, args, kwargs, dtype)
    for a, c in zip(args, copies, strict=True):  # inputs unchanged
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_batch_zero_gives_empty_output_of_reference_shape(op, dtype, rng):
    args, kwargs = CASES[op](rng, dtype, 0)
    if op == "fold_batch_norm":  # no batch axis: zero output channels instead
        args = tuple(a[:0] for a in args)
    _compare(op, args, kwargs, dtype)


# --------------------------------------------------------------------------- #
# Optional arguments and shapes beyond the table
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["relu", "leaky_relu", "sigmoid"])
@pytest.mark.parametrize("shape", [(), (1,), (17,), (3, 5), (2, 3, 4, 5, 6)])
def test_activations_take_any_shape(op, shape, dtype, rng):
    x = np.asarray(3 * randn(rng, *shape, dtype=dtype))  # 0-d: an array, not a scalar
    kwargs = {"negative_slope": 0.3} if op == "leaky_relu" else {}
    out = getattr(r2n, op)(x, backend="cpu", **kwargs)
    ref = getattr(r2n, op)(x, backend="reference", **kwargs)
    assert out.shape == np.shape(ref) and out.dtype == dtype
    assert_close(out, np.asarray(ref))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 15), (1, 15, 9), (2, 15, 3, 4, 5)])
@pytest.mark.parametrize("affine", [(True, True), (True, False), (False, True), (False, False)])
def test_batch_norm_any_rank_with_or_without_affine(shape, affine, dtype, rng):
    x = randn(rng, *shape, dtype=dtype)
    mean, var = randn(rng, 15, dtype=dtype), _positive(rng, 15, dtype=dtype)
    weight = randn(rng, 15, dtype=dtype) if affine[0] else None
    bias = randn(rng, 15, dtype=dtype) if affine[1] else None
    _compare("batch_norm", (x, mean, var, weight, bias), {"eps": 1e-5}, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("conv_shape", [(15,), (15, 7), (15, 5, 3, 3)])
@pytest.mark.parametrize("present", list(itertools.product([True, False], repeat=3)))
def test_fold_batch_norm_with_or_without_biases_and_affine(conv_shape, present, dtype, rng):
    conv_bias, weight, bias = (randn(rng, 15, dtype=dtype) if p else None for p in present)
    args = (
        randn(rng, *conv_shape, dtype=dtype),
        conv_bias,
        randn(rng, 15, dtype=dtype),
        _positive(rng, 15, dtype=dtype),
        weight,
        bias,
    )
    _compare("fold_batch_norm", args, {"eps": 1e-5}, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape", [(15,), (1, 15), (5, 15), (2, 3, 7, 15), (0, 15)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_any_leading_shape(x_shape, with_bias, dtype, rng):
    # 37 outputs: two full column tiles and a partial one, over 5 rows (one partial row tile).
    x = randn(rng, *x_shape, dtype=dtype)
    weight = randn(rng, 37, 15, dtype=dtype)
    bias = randn(rng, 37, dtype=dtype) if with_bias else None
    _compare("linear", (x, weight, bias), {}, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 5])
def test_linear_at_one_thread_is_the_parallel_kernel_bit_for_bit(m, dtype, rng):
    # At one thread linear runs its tiles in a serial kernel (no parallel
    # launch): the same tile code, so the same bits as the prange kernel, and
    # within float64's tolerance. 37 outputs x 15 inputs: partial tiles.
    from r2n.cpu import layers

    x = randn(rng, m, 15, dtype=dtype)
    weight = randn(rng, 37, 15, dtype=dtype)
    bias = randn(rng, 37, dtype=dtype)
    split = np.full((m, 37), np.nan, dtype=dtype)
    layers._linear_kernel(x, weight, bias, split)
    before = r2n.get_num_threads()
    try:
        r2n.set_num_threads(1)
        one = r2n.linear(x, weight, bias, backend="cpu")
    finally:
        r2n.set_num_threads(before)
    np.testing.assert_array_equal(one, split)
    expected = r2n.linear(*(a.astype(np.float64) for a in (x, weight, bias)), backend="reference")
    assert_close(one, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size, hw", [(1, (7, 9)), (2, (6, 10)), (4, (8, 12))])
def test_space_to_depth_block_sizes(block_size, hw, dtype, rng):
    x = randn(rng, 3, 5, *hw, dtype=dtype)
    (out,) = _compare("space_to_depth", (x,), {"block_size": block_size}, dtype)
    np.testing.assert_array_equal(out, r2n.space_to_depth(x, block_size, backend="reference"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw", [(2, 2), (2, 3), (3, 2), (7, 9), (8, 10), (5, 6)])
def test_blur_pool2d_reflects_at_every_edge(hw, dtype, rng):
    _compare("blur_pool2d", (randn(rng, 2, 3, *hw, dtype=dtype),), {}, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("biases", list(itertools.product([True, False], repeat=2)))
def test_squeeze_excite_with_or_without_biases(biases, dtype, rng):
    b1 = randn(rng, 4, dtype=dtype) if biases[0] else None
    b2 = randn(rng, 15, dtype=dtype) if biases[1] else None
    args = (
        randn(rng, 3, 15, 7, 9, dtype=dtype),
        randn(rng, 4, 15, 1, 1, dtype=dtype),
        b1,
        randn(rng, 15, 4, 1, 1, dtype=dtype),
        b2,
    )
    _compare("squeeze_excite", args, {}, dtype)


# --------------------------------------------------------------------------- #
# Pools: every rule
# --------------------------------------------------------------------------- #

# (kernel_size, padding): square and rectangular kernels, padding 0 and 1
# (at most half the kernel on each axis).
POOL_KERNELS = [(2, 0), (2, 1), (3, 0), (3, 1), ((3, 2), 1), ((1, 4), (0, 1)), ((5, 3), (2, 1))]


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("stride", [None, 1, 2, (2, 3)])
@pytest.mark.parametrize("kernel_size, padding", POOL_KERNELS)
def test_pools_match_reference_for_every_rule(kernel_size, padding, stride, ceil_mode, rng):
    args = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode)
    for dtype in DTYPES:
        x = randn(rng, 3, 15, 7, 9, dtype=dtype)
        _compare("max_pool2d", (x,), args, dtype)
        for count_include_pad in (True, False):
            _compare("avg_pool2d", (x,), dict(args, count_include_pad=count_include_pad), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw", [(1, 1), (1, 4), (3, 3)])
def test_pools_ceil_mode_kernel_past_the_input(hw, dtype, rng):
    # 1 x 1 input, kernel 2, stride 2, ceil_mode: one window, overhanging the input.
    x = randn(rng, 2, 3, *hw, dtype=dtype)
    args = dict(kernel_size=2, stride=2, padding=0, ceil_mode=True)
    _compare("max_pool2d", (x,), args, dtype)
    for count_include_pad in (True, False):
        _compare("avg_pool2d", (x,), dict(args, count_include_pad=count_include_pad), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_pool2d_on_res2net_sized_planes(dtype, rng):
    # A float32 mean over 56 * 56 = 3136 values stays within the float32 tolerance.
    x = randn(rng, 2, 4, 56, 56, dtype=dtype) + dtype(3)
    _compare("global_avg_pool2d", (x,), {}, dtype)


# --------------------------------------------------------------------------- #
# NaN and Inf
# --------------------------------------------------------------------------- #


def _poison(x, rng):
    """Copy of x with NaN, +Inf and -Inf at a few random places (several per array)."""
    x = x.copy()
    flat = x.reshape(-1)
    where = rng.permutation(flat.size)[: max(3, flat.size // 40)]
    flat[where[0::3]] = np.nan
    flat[where[1::3]] = np.inf
    flat[where[2::3]] = -np.inf
    return x


def _assert_same_nonfinite(out, ref):
    """NaN and Inf (with sign) in the same places; the finite values close."""
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(out), np.isposinf(ref))
    np.testing.assert_array_equal(np.isneginf(out), np.isneginf(ref))
    finite = np.isfinite(ref)
    if finite.any():
        assert_close(out[finite], ref[finite])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_nan_and_inf_propagate_as_in_reference(op, dtype, rng):
    args, kwargs = CASES[op](rng, dtype, 3)
    args = (_poison(args[0], rng),) + args[1:]
    f = getattr(r2n, op)
    with np.errstate(invalid="ignore", over="ignore"):
        refs = _outputs(f(*args, backend="reference", **kwargs))
    outs = _outputs(f(*args, backend="cpu", **kwargs))
    for out, ref in zip(outs, refs, strict=True):
        _assert_same_nonfinite(out, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_nan_anywhere_in_the_window_wins(dtype):
    # NaN after, before and between finite values, next to -inf, and an all -inf window.
    x = np.array(
        [
            [1.0, np.nan, 2.0, 5.0],
            [np.nan, 3.0, -np.inf, -np.inf],
            [0.0, 4.0, -np.inf, -np.inf],
        ],
        dtype=dtype,
    )[None, None]
    args = dict(kernel_size=2, stride=1, padding=0, ceil_mode=False)
    out = r2n.max_pool2d(x, backend="cpu", **args)
    ref = r2n.max_pool2d(x, backend="reference", **args)
    _assert_same_nonfinite(out, ref)
    assert np.isneginf(out[0, 0, 1, 2])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("w", [13, 14])
def test_the_stems_3x3_stride_2_max_pool_is_the_reference_with_nan_and_inf(rng, dtype, w):
    """The 3x3 / stride 2 path (interleaved taps) against the reference, NaN
    and -inf at random places, padding on both sides, odd and even widths."""
    x = randn(rng, 2, 3, 11, w, dtype=dtype)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.05] = -np.inf
    for ceil_mode in (False, True):
        args = dict(kernel_size=3, stride=2, padding=1, ceil_mode=ceil_mode)
        out = r2n.max_pool2d(x, backend="cpu", **args)
        ref = r2n.max_pool2d(x, backend="reference", **args)
        np.testing.assert_array_equal(out, ref)  # a max is exact; NaN where the reference has it


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_signed_zeros_as_reference(dtype):
    # np.maximum(-0.0, 0) is +0.0 (torch.relu keeps -0.0); the cpu backend follows the reference.
    x = np.array([-0.0, 0.0, -1.0], dtype=dtype)
    out = r2n.relu(x, backend="cpu")
    np.testing.assert_array_equal(np.signbit(out), np.signbit(r2n.relu(x, backend="reference")))


# --------------------------------------------------------------------------- #
# Layouts: non-contiguous, Fortran, read-only inputs; inputs untouched
# --------------------------------------------------------------------------- #


def _strided(a):
    """Same values, non-contiguous: every other element of a twice-as-long last axis."""
    if a.ndim == 0:
        return a
    wide = np.empty(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    return wide[..., ::2]


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


LAYOUTS = {"strided": _strided, "fortran": np.asfortranarray, "read_only": _read_only}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("op", OPS)
def test_any_input_layout_gives_the_contiguous_result(op, layout, dtype, rng):
    args, kwargs = CASES[op](rng, dtype, 3)
    moved = tuple(None if a is None else LAYOUTS[layout](a) for a in args)
    before = [None if a is None else a.copy() for a in moved]
    f = getattr(r2n, op)
    outs = _outputs(f(*moved, backend="cpu", **kwargs))
    refs = _outputs(f(*args, backend="reference", **kwargs))
    for out, ref in zip(outs, refs, strict=True):
        _check_output(out, ref, dtype)
        assert all(a is None or not np.shares_memory(out, a) for a in moved)
    for a, b in zip(moved, before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_kernels_compile_once_per_dtype_for_every_layout(rng):
    """Read-only and writeable inputs share one compiled kernel (kernel_input)."""
    from r2n.cpu import pool

    x = randn(rng, 1, 2, 5, 5, dtype=np.float64)
    for a in (x, _read_only(x), np.asfortranarray(x), _strided(x)):
        r2n.max_pool2d(a, 2, backend="cpu")
    sigs = [s for s in pool._max_pool2d_kernel.signatures if str(s[0].dtype) == "float64"]
    assert len(sigs) == 1, sigs


# --------------------------------------------------------------------------- #
# The 2x2 average pool's own kernel, and small ops on the calling thread
# --------------------------------------------------------------------------- #


@pytest.fixture(params=["calling_thread", "split"])
def small_op_rule(request, monkeypatch):
    """Run every small op on the calling thread alone, or split across the
    threads however small it is (r2n.cpu._jit.SMALL_OP_BYTES 2**62 or 0):
    the test shapes are tiny, so without this only the first path ran."""
    from r2n.cpu import _jit

    limit = 1 << 62 if request.param == "calling_thread" else 0
    monkeypatch.setattr(_jit, "SMALL_OP_BYTES", dict.fromkeys(_jit.SMALL_OP_BYTES, limit))
    return request.param


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("shape", [(1, 3, 7, 9), (3, 5, 8, 10), (1, 15, 9, 7), (3, 5, 1, 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool2d_2x2_stride_2_matches_reference(shape, ceil_mode, dtype, small_op_rule, rng):
    # TResNet's and res2net50d's shortcut pool: its own kernel, odd planes
    # with the ceil-mode overhang on the last row, column or both; against
    # the float64 reference and PyTorch.
    F = pytest.importorskip("torch.nn.functional")
    x = randn(rng, *shape, dtype=dtype)
    args = dict(kernel_size=2, stride=2, padding=0, ceil_mode=ceil_mode)
    if not ceil_mode and min(shape[2:]) < 2:
        pytest.skip(
            "no window without ceil mode (rejected by the shared checks, tested elsewhere)"
        )
    for count_include_pad in (True, False):
        (out,) = _compare(
            "avg_pool2d", (x,), dict(args, count_include_pad=count_include_pad), dtype
        )
        torch_out = F.avg_pool2d(t64(x), count_include_pad=count_include_pad, **args)
        assert_close(out, torch_out.numpy())


def _small_op_calls(rng, dtype, n):
    """(name, call(out) -> out, out shape) for each op that goes through run_small,
    at odd shapes, through the r2n.cpu functions that take ``out=``."""
    from r2n.cpu import layers, pool

    x = randn(rng, n, 15, 7, 9, dtype=dtype)
    residual = randn(rng, n, 15, 7, 9, dtype=dtype)
    se = (randn(rng, 4, 15, 1, 1, dtype=dtype), randn(rng, 4, dtype=dtype),
          randn(rng, 15, 4, 1, 1, dtype=dtype), randn(rng, 15, dtype=dtype))  # fmt: skip
    pad = dict(padding=(1, 1), ceil_mode=True)
    return [
        ("avg_pool2d 2x2", lambda out: pool.avg_pool2d(
            x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=True,
            count_include_pad=False, out_shape=out.shape, out=out), (n, 15, 4, 5)),
        ("avg_pool2d 3x2", lambda out: pool.avg_pool2d(
            x, kernel_size=(3, 2), stride=(2, 2), count_include_pad=True, out_shape=out.shape,
            out=out, **pad), (n, 15, 4, 6)),
        ("max_pool2d", lambda out: pool.max_pool2d(
            x, kernel_size=(3, 3), stride=(2, 2), out_shape=out.shape, out=out, **pad),
         (n, 15, 4, 5)),
        ("global_avg_pool2d", lambda out: pool.global_avg_pool2d(x, out=out), (n, 15)),
        ("blur_pool2d", lambda out: layers.blur_pool2d(x, out=out), (n, 15, 4, 5)),
        ("space_to_depth", lambda out: layers.space_to_depth(
            x[:, :, :6], block_size=3, out=out), (n, 135, 2, 3)),
        ("squeeze_excite", lambda out: layers.squeeze_excite(x, *se, out=out), x.shape),
        ("squeeze_excite + residual, relu", lambda out: layers.squeeze_excite(
            x, *se, residual=residual, relu=True, out=out), x.shape),
    ]  # fmt: skip


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_ops_write_only_their_output(n, dtype, small_op_rule, rng):
    # out= a slice of a NaN-filled buffer: the elements around it stay NaN.
    margin = 37
    for name, call, shape in _small_op_calls(rng, dtype, n):
        size = int(np.prod(shape))
        buffer = np.full(size + 2 * margin, np.nan, dtype=dtype)
        out = buffer[margin : margin + size].reshape(shape)
        assert call(out) is out, name
        assert np.isfinite(out).all(), name
        assert np.isnan(buffer[:margin]).all() and np.isnan(buffer[margin + size :]).all(), name


@pytest.mark.skipif(
    pytest.importorskip("numba").config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads"
)
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_ops_are_bit_identical_at_1_and_2_threads_and_either_rule(
    n, dtype, monkeypatch, rng
):
    # The same result, bit for bit, at 1 thread, at 2 threads split, and at
    # 2 threads on the calling thread (run_small): only where it runs changes.
    from r2n.cpu import _jit

    results = {}
    before = r2n.get_num_threads()
    try:
        for threads, limit in [(1, 0), (2, 0), (2, 1 << 62)]:
            r2n.set_num_threads(threads)
            monkeypatch.setattr(_jit, "SMALL_OP_BYTES", dict.fromkeys(_jit.SMALL_OP_BYTES, limit))
            calls = _small_op_calls(np.random.default_rng(5), dtype, n)
            results[threads, limit] = [call(np.empty(shape, dtype)) for _, call, shape in calls]
            assert r2n.get_num_threads() == threads  # run_small restored it
    finally:
        r2n.set_num_threads(before)
    names = [name for name, _, _ in _small_op_calls(rng, dtype, n)]
    first, *others = results.values()
    for other in others:
        for name, a, b in zip(names, first, other, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_run_small_restores_the_thread_count_when_the_kernel_raises():
    from r2n.cpu import _jit

    def failing_kernel():
        assert r2n.get_num_threads() == 1
        raise RuntimeError("from the kernel")

    before = r2n.get_num_threads()
    if before < 2:
        pytest.skip("needs 2 threads (at 1 thread run_small changes nothing)")
    try:
        r2n.set_num_threads(2)
        with pytest.raises(RuntimeError, match="from the kernel"):
            _jit.run_small("squeeze_excite", failing_kernel, 0)
        assert r2n.get_num_threads() == 2
    finally:
        r2n.set_num_threads(before)


@pytest.mark.parametrize("n, per_image", [(1, False), (3, False), (3, True)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_squeeze_excite_with_residual_and_relu_matches_float64(
    n, per_image, dtype, small_op_rule, rng, monkeypatch
):
    # Batch 1 runs the per-plane kernel; batch 3 either kernel (the
    # per-plane one where the images are fewer than the threads).
    from r2n.cpu import layers

    monkeypatch.setattr(layers, "_squeeze_excite_per_image", lambda n, threads: per_image)

    x = randn(rng, n, 15, 7, 9, dtype=dtype)
    residual = randn(rng, n, 15, 7, 9, dtype=dtype)
    w1, b1 = randn(rng, 5, 15, 1, 1, dtype=dtype), randn(rng, 5, dtype=dtype)
    w2, b2 = randn(rng, 15, 5, 1, 1, dtype=dtype), randn(rng, 15, dtype=dtype)
    se = r2n.squeeze_excite(*(a.astype(np.float64) for a in (x, w1, b1, w2, b2)),
                            backend="reference")  # fmt: skip
    expected = np.maximum(se + residual.astype(np.float64), 0)
    assert_close(layers.squeeze_excite(x, w1, b1, w2, b2, residual=residual, relu=True), expected)


@pytest.mark.parametrize("residual, relu", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_squeeze_excite_kernels_agree_bit_for_bit_and_with_float64(n, residual, relu, dtype, rng):
    # The three kernels (one thread; two passes over the planes; a job per
    # image) run the same helpers, so whichever the thread count and size
    # pick, the result is the same bit for bit; each of the rescale's four
    # loops (residual add and ReLU, either, neither) against float64.
    # 15 channels, 5 hidden, 7x9 planes: no length a multiple of a vector.
    from r2n.cpu import layers

    x = randn(rng, n, 15, 7, 9, dtype=dtype)
    res = randn(rng, n, 15, 7, 9, dtype=dtype)
    w1, b1 = randn(rng, 5, 15, 1, 1, dtype=dtype), randn(rng, 5, dtype=dtype)
    w2, b2 = randn(rng, 15, 5, 1, 1, dtype=dtype), randn(rng, 15, dtype=dtype)
    se = r2n.squeeze_excite(*(a.astype(np.float64) for a in (x, w1, b1, w2, b2)),
                            backend="reference")  # fmt: skip
    expected = se + res.astype(np.float64) if residual else se
    expected = np.maximum(expected, 0) if relu else expected
    matrices = layers.squeeze_excite_matrices(w1, b1, w2, b2, dtype)
    x3, res3 = x.reshape(n, 15, 63), res.reshape(n, 15, 63)
    x3.flags.writeable = res3.flags.writeable = False  # as the launcher passes them
    outs = []
    for kernel in (
        layers._squeeze_excite_serial_kernel,
        layers._squeeze_excite_kernel,
        layers._squeeze_excite_images_kernel,
    ):
        out = np.full_like(x3, np.nan)
        work = np.full((n, 2 * 15 + 5), np.nan, dtype=dtype)  # written before read
        kernel(x3, *matrices, res3 if residual else x3, residual, relu, work, out)
        assert_close(out.reshape(x.shape), expected)
        outs.append(out)
    for other in outs[1:]:
        np.testing.assert_array_equal(other, outs[0])


# --------------------------------------------------------------------------- #
# Hypothesis: pools over random shapes and arguments
# --------------------------------------------------------------------------- #


def _kernel_and_padding():
    """(kernel, padding) along one axis with padding <= kernel // 2."""
    return st.integers(1, 5).flatmap(lambda k: st.tuples(st.just(k), st.integers(0, k // 2)))


pool_given = dict(
    n=st.integers(0, 2),
    c=st.integers(1, 3),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    kernel_pad_h=_kernel_and_padding(),
    kernel_pad_w=_kernel_and_padding(),
    stride=st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)),
    ceil_mode=st.booleans(),
    count_include_pad=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
)


@given(**pool_given)
@example(
    n=1,
    c=2,
    h=1,
    w=1,
    kernel_pad_h=(2, 0),
    kernel_pad_w=(2, 0),
    stride=(2, 2),
    ceil_mode=True,
    count_include_pad=True,
    dtype=np.float64,
    seed=7,
)
def test_pools_match_reference_on_drawn_cases(
    n, c, h, w, kernel_pad_h, kernel_pad_w, stride, ceil_mode, count_include_pad, dtype, seed
):
    x = randn(np.random.default_rng(seed), n, c, h, w, dtype=dtype)
    (kh, ph), (kw, pw) = kernel_pad_h, kernel_pad_w
    args = dict(kernel_size=(kh, kw), stride=stride, padding=(ph, pw), ceil_mode=ceil_mode)
    try:
        r2n.max_pool2d(x, backend="reference", **args)
    except ValueError:
        assume(False)  # no output window: both backends reject it in the shared checks
    _compare("max_pool2d", (x,), args, dtype)
    _compare("avg_pool2d", (x,), dict(args, count_include_pad=count_include_pad), dtype)
