"""GPU engineer A's CUDA kernels, run on the CPU by the emulator (tests/cuda_emu).

Every op, float32 and float64, every numbered variant, on the cases of
gpu_cases.py, against the float64 reference. Each launch runs twice (two
thread orders) with canaries around every array, so races and out-of-bounds
writes fail here too. Inputs are read-only: a kernel writing to one fails.
"""

from __future__ import annotations

import contextlib
import sys
import types

import numpy as np
import pytest
from cuda_emu import EmuExecutor
from gpu_cases import CASES, VARIANTS, cast, normalised
from helpers import DTYPES, assert_close, gpu_count

import r2n
import r2n.gpu
from r2n import reference
from r2n.gpu import _runtime, elementwise, layers, pool


@pytest.fixture(scope="module")
def ex():
    return EmuExecutor()


def _read_only(args):
    for a in args:
        if a is not None:
            a.flags.writeable = False
    return args


def _variants(op):
    if op not in VARIANTS:
        return [None]
    module, attr = VARIANTS[op]
    return [None, *getattr(getattr(r2n.gpu, module), attr)]  # None: the default choice


PARAMS = [
    pytest.param(name, dtype, variant, id=f"{name}-{np.dtype(dtype).name}-{variant or 'default'}")
    for name, (op, _, _) in CASES.items()
    for dtype in DTYPES
    for variant in _variants(op)
]


def _outputs(out):
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("name,dtype,variant", PARAMS)
def test_op_matches_the_float64_reference(ex, rng, name, dtype, variant):
    op, make, kwargs = CASES[name]
    args64 = make(rng)
    args = _read_only(cast(args64, dtype))
    copies = [None if a is None else a.copy() for a in args]
    call_args, call_kwargs = normalised(op, args, kwargs)
    extra = {} if variant is None else {"variant": variant}
    out = r2n.gpu.OPS[op](*call_args, **call_kwargs, **extra, executor=ex)
    ref_args, ref_kwargs = normalised(op, cast(args64, np.float64), kwargs)
    ref = reference.OPS[op](*ref_args, **ref_kwargs)
    for o, r in zip(_outputs(out), _outputs(ref), strict=True):
        assert isinstance(o, np.ndarray) and o.dtype == dtype and o.shape == r.shape
        assert all(not np.shares_memory(o, a) for a in args if a is not None)
        assert_close(o, r, dtype)
    for a, c in zip(args, copies, strict=True):
        if a is not None:
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_and_pools_propagate_nan_and_inf(ex, rng, dtype):
    x = rng.standard_normal((1, 3, 7, 9)).astype(dtype)
    x[0, 0, 2, 3] = np.nan
    x[0, 1, 4, 4] = np.inf
    x[0, 2, 0, 0] = -np.inf
    for op, kwargs in [
        ("relu", {}),
        ("sigmoid", {}),
        ("leaky_relu", dict(negative_slope=0.1)),
        ("max_pool2d", dict(kernel_size=3, stride=2, padding=1)),
        ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1)),
        ("global_avg_pool2d", {}),
    ]:
        a, kw = normalised(op, (x,), kwargs)
        out = r2n.gpu.OPS[op](*a, **kw, executor=ex)
        ref = reference.OPS[op](*a, **kw)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(ref), err_msg=op)
        finite = np.isfinite(ref)
        np.testing.assert_array_equal(np.isinf(out), np.isinf(ref), err_msg=op)
        np.testing.assert_allclose(out[finite], ref[finite], rtol=1e-6, err_msg=op)


def test_non_contiguous_inputs_are_read_correctly(ex, rng):
    x = rng.standard_normal((9, 7, 15, 1)).transpose(3, 2, 1, 0)  # (1, 15, 7, 9), F-order
    assert not x.flags.c_contiguous
    out = pool.max_pool2d(
        x, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True,
        out_shape=(1, 15, 4, 5), executor=ex,
    )  # fmt: skip
    ref = reference.max_pool2d(
        x, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True,
        out_shape=(1, 15, 4, 5),
    )  # fmt: skip
    np.testing.assert_array_equal(out, ref)
    w = rng.standard_normal((15, 18))[:, ::2]  # (15, 9), strided
    assert not w.flags.c_contiguous
    assert_close(layers.linear(x[0, 0], w, None, executor=ex), reference.linear(x[0, 0], w, None))


def test_empty_batch_launches_nothing(ex):
    x = np.zeros((0, 3, 7, 9), np.float32)
    before = len(ex.launches)
    assert elementwise.relu(x, executor=ex).shape == x.shape
    assert pool.global_avg_pool2d(x, executor=ex).shape == (0, 3)
    assert layers.blur_pool2d(x, executor=ex).shape == (0, 3, 4, 5)
    assert len(ex.launches) == before


# --------------------------------------------------------------------------- #
# Bad inputs: an error before any launch
# --------------------------------------------------------------------------- #

F32 = np.float32


def _bad_calls():
    """(id, call(executor), error) for inputs the kernels must never see."""
    x = np.ones((1, 3, 7, 9), F32)
    row = x[0, 0]  # (7, 9)
    v3 = np.ones(3, F32)
    w = np.ones((4, 7), F32)
    se_w1, se_w2 = np.ones((2, 3, 1, 1), F32), np.ones((3, 2, 1, 1), F32)
    pool_kw = dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=False)
    bn = elementwise.batch_norm
    return [
        # a pool told an out_shape that does not match x: the kernel would write past out
        ("pool-out-shape", lambda e: pool.max_pool2d(x, **pool_kw, out_shape=(1, 3, 9, 9),
                                                     executor=e), ValueError),
        ("avg-pool-padding", lambda e: pool.avg_pool2d(
            x, kernel_size=(3, 3), stride=(1, 1), padding=(2, 2), ceil_mode=False,
            count_include_pad=True, out_shape=(1, 3, 9, 11), executor=e), ValueError),
        ("pool-3d", lambda e: pool.max_pool2d(x[0], **pool_kw, out_shape=(3, 4, 5),
                                              executor=e), ValueError),
        ("gap-variant", lambda e: pool.global_avg_pool2d(x, variant="3", executor=e), ValueError),
        ("gap-empty-plane", lambda e: pool.global_avg_pool2d(x[:, :, :0], executor=e),
         ValueError),
        ("linear-in-features", lambda e: layers.linear(row, w[:, :6], None, executor=e),
         ValueError),
        ("linear-bias", lambda e: layers.linear(row, w, v3, executor=e), ValueError),
        ("linear-variant", lambda e: layers.linear(row, w, None, variant="0", executor=e),
         ValueError),
        ("linear-dtype", lambda e: layers.linear(row, w.astype(np.float64), None, executor=e),
         TypeError),
        ("bn-mean-shape", lambda e: bn(x, w[0], v3, None, None, eps=1e-5, executor=e),
         ValueError),
        ("bn-eps", lambda e: bn(x, v3, v3, None, None, eps=-1.0, executor=e), ValueError),
        ("fold-shape", lambda e: elementwise.fold_batch_norm(
            w, None, v3, v3, None, None, eps=1e-5, executor=e), ValueError),
        ("relu-int", lambda e: elementwise.relu(np.ones(3, np.int32), executor=e), TypeError),
        ("relu-list", lambda e: elementwise.relu([1.0, 2.0], executor=e), TypeError),
        ("s2d-divisible", lambda e: layers.space_to_depth(x, block_size=2, executor=e),
         ValueError),
        ("s2d-block", lambda e: layers.space_to_depth(x, block_size=0, executor=e), ValueError),
        ("blur-1-pixel", lambda e: layers.blur_pool2d(x[:, :, :1], executor=e), ValueError),
        ("se-w2", lambda e: layers.squeeze_excite(x, se_w1, None, se_w1, None, executor=e),
         ValueError),
        ("se-b1", lambda e: layers.squeeze_excite(x, se_w1, v3, se_w2, None, executor=e),
         ValueError),
    ]  # fmt: skip


@pytest.mark.parametrize("call,error", [pytest.param(c, e, id=i) for i, c, e in _bad_calls()])
def test_bad_inputs_raise_before_any_launch(call, error):
    ex = EmuExecutor()
    with pytest.raises(error, match=r"r2n\."):
        call(ex)
    assert ex.launches == []


def test_python_scalars_are_refused_at_launch(ex):
    x = np.ones(4, F32)
    with pytest.raises(TypeError, match="NumPy scalar"):
        ex.launch("elementwise.cu", "relu_kernel<float>", (1,), (32,), (x, x.copy(), 4))


# --------------------------------------------------------------------------- #
# Asking for the GPU without one
# --------------------------------------------------------------------------- #


@pytest.mark.skipif(gpu_count() > 0, reason="a GPU is present")
def test_executor_without_a_gpu_is_a_clear_error():
    pytest.importorskip("cupy")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        _runtime.executor()


def test_executor_without_cupy_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with pytest.raises(RuntimeError, match=r"needs CuPy \(pip install 'r2n\[gpu\]'\)"):
        _runtime.executor()


def test_launchers_without_an_executor_ask_for_the_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(RuntimeError, match="needs CuPy"):
        elementwise.relu(np.ones(3, np.float32))


@pytest.mark.parametrize("module", [pool, layers])
def test_variants_dicts_force_their_variant(ex, rng, module):
    x = rng.standard_normal((2, 3, 5, 7))
    w = rng.standard_normal((4, 7))
    for name, run in module.VARIANTS.items():
        launches = len(ex.launches)
        if module is pool:
            out, ref = run(x, executor=ex), reference.global_avg_pool2d(x)
            kernel = pool.GLOBAL_AVG_POOL_VARIANTS[name][0]
        else:
            out, ref = run(x, w, None, executor=ex), reference.linear(x, w, None)
            kernel = layers.LINEAR_VARIANTS[name]
        assert_close(out, ref)
        assert ex.launches[launches:][-1][1] == f"{kernel}<double>"


# --------------------------------------------------------------------------- #
# The public API end to end: "CuPy" arrays -> backend gpu -> launchers -> emulator
# --------------------------------------------------------------------------- #


class EmulatedCupyArray:
    """Wraps a NumPy array so that r2n's dispatch takes it for a cupy.ndarray
    (r2n recognises CuPy by the type's module); attributes go to the array."""

    def __init__(self, array):
        self.array = array

    def __getattr__(self, name):
        return getattr(self.array, name)

    def reshape(self, *shape):
        return EmulatedCupyArray(self.array.reshape(*shape))

    @property
    def device(self):
        return contextlib.nullcontext()


EmulatedCupyArray.__module__ = "cupy._core.core"


class EmulatedCupyExecutor(EmuExecutor):
    """The emulator, taking and handing out EmulatedCupyArray as CuPy does cupy arrays."""

    xp = types.SimpleNamespace(
        ascontiguousarray=lambda a: EmulatedCupyArray(np.ascontiguousarray(a.array))
    )

    def empty(self, shape, dtype):
        return EmulatedCupyArray(super().empty(shape, dtype))

    def launch(self, file, name_expr, grid, block, args, shared_mem=0):
        unwrapped = tuple(a.array if isinstance(a, EmulatedCupyArray) else a for a in args)
        assert all(not isinstance(a, np.ndarray) for a in args), "a NumPy array reached launch"
        super().launch(file, name_expr, grid, block, unwrapped, shared_mem)


@pytest.mark.parametrize("name", [n for n in CASES if n.partition("-")[0] in r2n.gpu.OPS])
def test_public_api_on_cupy_like_arrays_runs_the_gpu_kernels(rng, monkeypatch, name):
    ex = EmulatedCupyExecutor()
    monkeypatch.setattr(_runtime, "executor", lambda: ex)
    op, make, kwargs = CASES[name]
    args64 = make(rng)
    args = tuple(None if a is None else EmulatedCupyArray(a.astype(np.float32))
                 for a in args64)  # fmt: skip
    out = getattr(r2n, op)(*args, **kwargs)  # backend=None: CuPy arrays go to "gpu"
    assert ex.launches, "the gpu backend did not launch anything"
    ref_args, ref_kwargs = normalised(op, cast(args64, np.float64), kwargs)
    ref = reference.OPS[op](*ref_args, **ref_kwargs)
    for o, r in zip(_outputs(out), _outputs(ref), strict=True):
        assert type(o) is EmulatedCupyArray and o.dtype == np.float32
        assert_close(o.array, r, np.float32)
