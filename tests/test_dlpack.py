"""DLPack at the public boundary (r2n/_interop.py): torch tensors, JAX arrays and
bare ``__dlpack__`` objects in, the caller's kind out, with no copy on the way in.

Every public op runs the same call once on NumPy arrays and once on the
other kind; the results must be bit-identical (same kernels, same values).
The CUDA tests need a GPU seen by both CuPy and torch and skip themselves
otherwise (CI).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import gpu_count
from op_cases import CASES, all_arrays, map_arrays

import r2n
import r2n.models
from r2n import _interop

OPS = list(CASES)


class BareDLPack:
    """An array that offers nothing but the DLPack protocol."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def _outputs(out):
    return list(out) if isinstance(out, tuple) else [out]


def _as_torch(args):
    return map_arrays(args, torch.from_numpy)


# --------------------------------------------------------------------------- #
# torch CPU tensors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", OPS)
def test_torch_tensors_in_give_torch_tensors_out_equal_to_numpy(op, dtype, rng):
    args, kwargs = CASES[op](rng, dtype, 2)
    expected = _outputs(getattr(r2n, op)(*args, **kwargs))
    got = _outputs(getattr(r2n, op)(*_as_torch(args), **kwargs))
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert isinstance(g, torch.Tensor) and g.device.type == "cpu"
        assert g.dtype == torch.from_numpy(e).dtype
        np.testing.assert_array_equal(g.numpy(), e)


@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_torch_views_work_without_a_copy_in(op, rng):
    args, kwargs = CASES[op](rng, np.float32, 2)
    expected = _outputs(getattr(r2n, op)(*args, **kwargs))

    def transposed_view(a):  # same values, reversed strides: a view no NumPy code made
        t = torch.from_numpy(np.ascontiguousarray(a.T)).permute(*reversed(range(a.ndim)))
        assert a.ndim < 2 or not t.is_contiguous()
        return t

    got = _outputs(getattr(r2n, op)(*map_arrays(args, transposed_view), **kwargs))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g.numpy(), e)


def test_import_shares_memory_with_the_tensor():
    t = torch.randn(2, 3, 4, 5, dtype=torch.float64).transpose(1, 3)
    a, device = _interop.import_array(t, "r2n.test", "x")
    assert device is None and isinstance(a, np.ndarray)
    assert a.shape == tuple(t.shape) and np.shares_memory(a, t.numpy())


@pytest.mark.parametrize("op", OPS)
def test_torch_inputs_are_not_modified(op, rng):
    args, kwargs = CASES[op](rng, np.float32, 2)
    tensors = _as_torch(args)
    before = [a.copy() for a in all_arrays(args)]  # the tensors share these arrays
    getattr(r2n, op)(*tensors, **kwargs)
    for a, b in zip(all_arrays(args), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_first_array_argument_decides_the_kind_returned(rng):
    x = rng.standard_normal((1, 6, 7, 9))
    w = rng.standard_normal((4, 6, 3, 3))
    expected = r2n.conv2d(x, w)
    from_torch_x = r2n.conv2d(torch.from_numpy(x), w)
    from_numpy_x = r2n.conv2d(x, torch.from_numpy(w))
    assert isinstance(from_torch_x, torch.Tensor) and isinstance(from_numpy_x, np.ndarray)
    np.testing.assert_array_equal(from_torch_x.numpy(), expected)
    np.testing.assert_array_equal(from_numpy_x, expected)


def test_a_stacked_torch_chain_weight_tensor_works(rng):
    x = rng.standard_normal((1, 12, 7, 9))
    w = rng.standard_normal((3, 3, 3, 3, 3))
    expected = r2n.res2net_chain(x, w, scale=4)
    got = r2n.res2net_chain(torch.from_numpy(x), torch.from_numpy(w), scale=4)
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize(
    "dtype, shown",
    [
        (torch.float16, "torch.Tensor of dtype float16"),
        (torch.int64, "torch.Tensor of dtype int64"),
        (torch.bool, "torch.Tensor of dtype bool"),
        (torch.bfloat16, "torch.Tensor of dtype torch.bfloat16 on cpu"),
    ],
)
def test_a_torch_tensor_of_another_dtype_is_a_type_error_naming_it(dtype, shown, rng):
    w = torch.from_numpy(rng.standard_normal((4, 6, 3, 3)).astype(np.float32))
    with pytest.raises(TypeError, match=rf"r2n.conv2d: x is a {shown}"):
        r2n.conv2d(torch.ones(1, 6, 7, 9, dtype=dtype), w)


def test_a_torch_weight_of_another_dtype_names_the_weight(rng):
    x = rng.standard_normal((1, 6, 7, 9)).astype(np.float32)
    w = torch.ones(4, 6, 3, 3, dtype=torch.float16)
    with pytest.raises(TypeError, match=r"r2n.conv2d: weight is a torch.Tensor of dtype float16"):
        r2n.conv2d(x, w)


def test_float32_mixed_with_float64_tensors_is_the_usual_type_error(rng):
    x = torch.from_numpy(rng.standard_normal((1, 6, 7, 9)).astype(np.float32))
    w = torch.from_numpy(rng.standard_normal((4, 6, 3, 3)))
    with pytest.raises(TypeError, match=r"weight has dtype float64 but x has dtype float32"):
        r2n.conv2d(x, w)


def test_a_tensor_that_requires_grad_is_a_type_error_saying_detach():
    x = torch.ones(1, 3, 4, 4, requires_grad=True)
    with pytest.raises(TypeError, match=r"r2n.relu: x is a torch.Tensor .*detach\(\)"):
        r2n.relu(x)


# --------------------------------------------------------------------------- #
# Bare __dlpack__ objects, read-only memory, other devices
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("op", OPS)
def test_a_bare_dlpack_object_works_and_gives_numpy(op, rng):
    args, kwargs = CASES[op](rng, np.float64, 2)
    expected = _outputs(getattr(r2n, op)(*args, **kwargs))
    got = _outputs(getattr(r2n, op)(*map_arrays(args, BareDLPack), **kwargs))
    for g, e in zip(got, expected, strict=True):
        assert type(g) is np.ndarray
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("op", OPS)
def test_read_only_imports_work(op, rng):
    args, kwargs = CASES[op](rng, np.float32, 2)
    expected = _outputs(getattr(r2n, op)(*args, **kwargs))

    def read_only(a):
        a = a.copy()
        a.flags.writeable = False
        return BareDLPack(a)

    readonly_args = map_arrays(args, read_only)
    x = next(iter(all_arrays(args)), None)
    imported, _ = _interop.import_array(read_only(x), "r2n.test", "x")
    assert not imported.flags.writeable  # NumPy marks such imports read-only
    got = _outputs(getattr(r2n, op)(*readonly_args, **kwargs))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


def test_a_read_only_result_is_copied_before_export():
    out = np.ones(3)
    out.flags.writeable = False
    tensor = _interop._export(out, torch.from_dlpack)
    assert isinstance(tensor, torch.Tensor) and not np.shares_memory(tensor.numpy(), out)


class OnDevice(BareDLPack):
    def __init__(self, a, device):
        super().__init__(a)
        self._device = device
        self.dtype = a.dtype

    def __dlpack_device__(self):
        return self._device


def test_an_array_on_a_device_r2n_cannot_use_is_a_type_error_naming_it():
    x = OnDevice(np.ones((1, 3, 4, 4)), (8, 0))  # kDLMetal
    with pytest.raises(TypeError, match=r"x is a .*OnDevice of dtype float64 on metal:0"):
        r2n.relu(x)


def test_a_cuda_array_is_imported_by_cupy_on_its_device(monkeypatch):
    """Routing only (no GPU here): a CUDA DLPack array goes to cupy.from_dlpack
    under its own device, so the stream CuPy hands the producer is that device's."""
    cupy = pytest.importorskip("cupy")
    calls = []

    class Device:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            calls.append(("enter", self.index))

        def __exit__(self, *exc):
            calls.append(("exit", self.index))

    def from_dlpack(a):
        calls.append(("from_dlpack", a))
        return "imported"

    monkeypatch.setattr(cupy.cuda, "Device", Device)
    monkeypatch.setattr(cupy, "from_dlpack", from_dlpack)
    x = OnDevice(np.ones(3), (2, 1))  # kDLCUDA, GPU 1
    assert _interop.import_array(x, "r2n.test", "x") == ("imported", 1)
    assert calls == [("enter", 1), ("from_dlpack", x), ("exit", 1)]


def test_host_and_cuda_arrays_in_one_call_are_a_type_error_naming_both(monkeypatch, rng):
    cupy = pytest.importorskip("cupy")

    class FakeCupyArray:  # what cupy.from_dlpack would return, without a GPU
        __module__ = "cupy._core.core"

        def __init__(self, a):
            self.shape, self.ndim, self.dtype = a.shape, a.ndim, a.dtype

    class NoDevice:
        def __init__(self, index):
            pass

        def __enter__(self):
            pass

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(cupy.cuda, "Device", NoDevice)
    monkeypatch.setattr(cupy, "from_dlpack", lambda a: FakeCupyArray(a._a))
    x = torch.from_numpy(rng.standard_normal((1, 6, 7, 9)))
    w = OnDevice(rng.standard_normal((4, 6, 3, 3)), (2, 0))
    with pytest.raises(
        TypeError,
        match=r"cannot mix host and CUDA arrays: x is a torch.Tensor of dtype torch.float64 "
        r"on cpu \(host memory\) but weight is .*OnDevice of dtype float64 on cuda:0",
    ):
        r2n.conv2d(x, w)


def test_using_dlpack_imports_no_framework():
    code = (
        "import sys, numpy as np, r2n\n"
        "class Bare:\n"
        "    def __init__(self, a): self.a = a\n"
        "    def __dlpack__(self, **kw): return self.a.__dlpack__(**kw)\n"
        "    def __dlpack_device__(self): return self.a.__dlpack_device__()\n"
        "y = r2n.relu(Bare(np.array([[-1.0, 2.0]])), backend='reference')\n"
        "assert type(y) is np.ndarray and y.tolist() == [[0.0, 2.0]]\n"
        "print('torch' in sys.modules, 'cupy' in sys.modules, 'jax' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False", "False"], out.stderr


def test_numpy_arguments_take_the_fast_path(monkeypatch, rng):
    """No signature binding, no import attempt: NumPy calls go straight through."""

    def fail(*args, **kwargs):
        raise AssertionError("the DLPack path ran for NumPy arguments")

    monkeypatch.setattr(_interop, "_Import", fail)
    x = rng.standard_normal((1, 6, 7, 9))
    r2n.conv2d(x, rng.standard_normal((4, 6, 3, 3)), None, stride=(1, 1), padding=1)
    chain_weights = [rng.standard_normal((2, 2, 3, 3))] * 3
    r2n.res2net_chain(rng.standard_normal((1, 8, 5, 5)), chain_weights, scale=4)
    args, kwargs = CASES["bottle2neck"](rng, np.float64, 1)
    r2n.bottle2neck(*args, **kwargs)


# --------------------------------------------------------------------------- #
# Models
# --------------------------------------------------------------------------- #


def test_a_model_takes_torch_images_and_returns_torch_logits(rng):
    model = r2n.models.create("res2net50_26w_4s", _params=dict(layers=(1, 1, 1, 1)))
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    expected = model(x)
    got = model(torch.from_numpy(x))
    assert isinstance(got, torch.Tensor)
    np.testing.assert_array_equal(got.numpy(), expected)
    with pytest.raises(TypeError, match=r"r2n model res2net50_26w_4s: x is a torch.Tensor"):
        model(torch.from_numpy(x).half())


# --------------------------------------------------------------------------- #
# JAX (only where it is installed; not in CI)
# --------------------------------------------------------------------------- #


def test_jax_arrays_in_give_jax_arrays_out(rng):
    jnp = pytest.importorskip("jax.numpy")
    x = rng.standard_normal((1, 6, 7, 9)).astype(np.float32)
    w = rng.standard_normal((4, 6, 3, 3)).astype(np.float32)
    got = r2n.conv2d(jnp.asarray(x), jnp.asarray(w))
    assert type(got).__module__.partition(".")[0] in ("jax", "jaxlib")
    np.testing.assert_array_equal(np.asarray(got), r2n.conv2d(x, w))


# --------------------------------------------------------------------------- #
# torch CUDA tensors (a GPU that both torch and CuPy see)
# --------------------------------------------------------------------------- #

cuda = pytest.mark.skipif(
    gpu_count() == 0 or not torch.cuda.is_available(), reason="needs a GPU seen by CuPy and torch"
)


@cuda
@pytest.mark.parametrize("op", OPS)
def test_torch_cuda_tensors_run_on_the_gpu_and_come_back_on_their_device(op, rng):
    import cupy

    args, kwargs = CASES[op](rng, np.float32, 2)
    device = torch.device("cuda", torch.cuda.device_count() - 1)  # the last GPU: not always 0
    with cupy.cuda.Device(device.index):
        on_cupy = _outputs(getattr(r2n, op)(*map_arrays(args, cupy.asarray), **kwargs))
        expected = [cupy.asnumpy(o) for o in on_cupy]
    tensors = map_arrays(args, lambda a: torch.from_numpy(a).to(device))
    got = _outputs(getattr(r2n, op)(*tensors, **kwargs))
    for g, e in zip(got, expected, strict=True):
        assert isinstance(g, torch.Tensor) and g.device == device
        np.testing.assert_array_equal(g.cpu().numpy(), e)


@cuda
def test_a_tensor_written_on_a_torch_side_stream_is_read_after_it_is_ready(rng):
    """Producer and consumer streams differ: DLPack's stream handshake orders them."""
    x = rng.standard_normal((8, 64, 56, 56)).astype(np.float32)
    expected = r2n.relu(x * 3.0 - 1.0)
    stream = torch.cuda.Stream()
    base = torch.from_numpy(x).cuda()
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        # queued on the side stream; a reader that ignored streams could see zeros
        y = torch.zeros_like(base)
        for _ in range(20):
            y.copy_(base * 3.0 - 1.0)
        out = r2n.relu(y)  # no synchronize: torch's current stream is the side stream
        result = out.cpu()
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-6, atol=1e-6)


@cuda
def test_a_model_takes_torch_cuda_images(rng):
    model = r2n.models.create("res2net50_26w_4s", _params=dict(layers=(1, 1, 1, 1)))
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    got = model(torch.from_numpy(x).cuda())
    assert isinstance(got, torch.Tensor) and got.is_cuda
    ref = model(x)
    assert np.linalg.norm(got.cpu().numpy() - ref) <= 1e-4 * np.linalg.norm(ref)
