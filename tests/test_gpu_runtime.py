"""r2n.gpu._runtime without a GPU: the registry, the launch checks, and what
CupyExecutor hands to CuPy (a stand-in records the calls: CI has no GPU).

What runs on a GPU is tested in test_gpu_device.py; what the kernels compute,
under the emulator, in test_gpu_emulated.py.
"""

from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest

from r2n.gpu import _runtime, elementwise, pool


class FakeDeviceArray(np.ndarray):
    """A NumPy array that says it lives on device 0 (stands in for cupy.ndarray)."""

    @property
    def device(self):
        return types.SimpleNamespace(id=0)


def _fake(a):
    return np.ascontiguousarray(a).view(FakeDeviceArray)


class FakeCupy:
    """Records RawModule compilations and launches; computes nothing."""

    ndarray = FakeDeviceArray

    def __init__(self):
        self.modules = []  # RawModule kwargs
        self.launches = []  # (name, grid, block, args, shared_mem)
        self.attributes = []  # funcSetAttribute calls
        self.lookups = []  # RawModule.get_function calls
        fake = self

        class RawKernel:
            """What cupy.RawModule.get_function returns: a cupy.RawKernel, which has
            no ``ptr`` (that is cupy.cuda.Function's); the > 48 KiB opt-in is its
            ``max_dynamic_shared_size_bytes`` property (see test_stand_in_models_cupy)."""

            __slots__ = ("name",)

            def __init__(self, name):
                self.name = name

            @property
            def max_dynamic_shared_size_bytes(self):
                return 48 * 1024

            @max_dynamic_shared_size_bytes.setter
            def max_dynamic_shared_size_bytes(self, value):
                fake.attributes.append((self.name, value))

            def __call__(self, grid, block, args, *, shared_mem=0):
                fake.launches.append((self.name, grid, block, args, shared_mem))

        class RawModule:
            def __init__(self, **kwargs):
                fake.modules.append(kwargs)

            def get_function(self, name):
                fake.lookups.append(name)
                return RawKernel(name)

        self.RawModule = RawModule
        self.RawKernel = RawKernel

        class Device(contextlib.nullcontext):
            """cupy.cuda.Device: a context manager with the device's attributes."""

            attributes = {"MaxSharedMemoryPerBlockOptin": 99 * 1024}  # an sm_86 GPU

            def __init__(self, device_id):
                super().__init__()

        self.cuda = types.SimpleNamespace(Device=Device)

    @staticmethod
    def empty(shape, dtype):
        return np.empty(shape, dtype).view(FakeDeviceArray)

    ascontiguousarray = staticmethod(_fake)


@pytest.fixture
def fake_executor():
    return _runtime.CupyExecutor(0, cupy_module=FakeCupy())


def test_cupy_executor_compiles_once_with_the_registered_names(fake_executor):
    ex = fake_executor
    x = _fake(np.arange(-3, 4, dtype=np.float32))
    elementwise.relu(x, executor=ex)
    elementwise.sigmoid(x, executor=ex)
    (module,) = ex.xp.modules  # compiled once per (device, file)
    assert module["code"] == _runtime.kernel_source("elementwise.cu")
    assert module["options"] == _runtime.NVRTC_OPTIONS
    assert module["name_expressions"] == _runtime.names_of("elementwise.cu")
    names = [launch[0] for launch in ex.xp.launches]
    assert names == ["relu_kernel<float>", "sigmoid_kernel<float>"]
    name, grid, block, args, shared = ex.xp.launches[0]
    assert grid == (1, 1, 1) and block == (256, 1, 1) and shared == 0
    assert isinstance(args[0], FakeDeviceArray) and type(args[2]) is np.int64


def test_cupy_executor_opts_in_to_large_dynamic_shared_memory(fake_executor):
    ex = fake_executor
    out = ex.empty((4,), np.float32)
    args = (out, out, np.int64(4))
    ex.launch("elementwise.cu", "relu_kernel<float>", (1,), (32,), args, shared_mem=64 * 1024)
    assert ex.xp.attributes == [("relu_kernel<float>", 64 * 1024)]
    ex.launch("elementwise.cu", "relu_kernel<float>", (1,), (32,), args, shared_mem=1024)
    ex.launch("elementwise.cu", "relu_kernel<float>", (1,), (32,), args, shared_mem=64 * 1024)
    assert len(ex.xp.attributes) == 1  # opted in once; a launch needing less keeps it
    ex.launch("elementwise.cu", "relu_kernel<float>", (1,), (32,), args, shared_mem=80 * 1024)
    assert ex.xp.attributes[1:] == [("relu_kernel<float>", 80 * 1024)]
    assert [launch[4] for launch in ex.xp.launches] == [64 * 1024, 1024, 64 * 1024, 80 * 1024]
    assert ex.xp.lookups == ["relu_kernel<float>"]  # the kernel object is looked up once


def test_shared_memory_past_the_devices_limit_is_refused(fake_executor):
    """The stand-in is an sm_86 GPU (99 KiB): 120 KiB passes the static check
    for sm_80 but not this device's, and nothing is launched."""
    ex = fake_executor
    out = ex.empty((4,), np.float32)
    with pytest.raises(ValueError, match="allows at most 101376"):
        ex.launch(
            "elementwise.cu", "relu_kernel<float>", (1,), (32,), (out, out, np.int64(4)),
            shared_mem=120 * 1024,
        )  # fmt: skip
    assert ex.xp.launches == []


def test_stand_in_models_cupy():
    """The stand-in's RawKernel offers only what cupy.RawKernel (the type that
    RawModule.get_function returns) has, and lacks Function's ``ptr``."""
    cupy = pytest.importorskip("cupy")
    public = {a for a in dir(FakeCupy().RawKernel) if not a.startswith("_")}
    assert public <= set(dir(cupy.RawKernel))
    assert "ptr" not in dir(cupy.RawKernel)
    assert "RawKernel" in (cupy.RawModule.get_function.__doc__ or "")


@pytest.mark.parametrize(
    "args,error,match",
    [
        ((3,), TypeError, "NumPy scalar"),  # a Python int would be passed as 64 bits
        ((2.0,), TypeError, "NumPy scalar"),
        ((np.int16(3),), TypeError, "NumPy scalar"),
        ((np.zeros((4, 4), np.float32).view(FakeDeviceArray)[:, 1],), ValueError, "contiguous"),
    ],
)
def test_cupy_executor_refuses_bad_arguments(fake_executor, args, error, match):
    with pytest.raises(error, match=match):
        fake_executor.launch("elementwise.cu", "relu_kernel<float>", (1,), (32,), args)
    assert fake_executor.xp.launches == []


def test_unregistered_kernel_is_refused(fake_executor):
    with pytest.raises(ValueError, match="not registered"):
        fake_executor.launch("elementwise.cu", "relu_kernel<half>", (1,), (32,), ())
    with pytest.raises(ValueError, match="never registered"):
        _runtime.names_of("nonexistent.cu")


@pytest.mark.parametrize(
    "grid,block,shared",
    [
        ((0,), (32,), 0),
        ((1, 2, 3, 4), (32,), 0),
        ((1,), (2048,), 0),
        ((1,), (64, 32), 0),
        ((2**31,), (32,), 0),
        ((1, 65536), (32,), 0),
        ((1,), (32,), -1),
        ((1,), (32,), 164 * 1024),
    ],
)
def test_launch_configurations_outside_cuda_limits_are_refused(fake_executor, grid, block, shared):
    with pytest.raises(ValueError):
        fake_executor.launch("elementwise.cu", "relu_kernel<float>", grid, block, (), shared)


def test_float_grid_is_a_type_error(fake_executor):
    with pytest.raises(TypeError, match="grid"):
        fake_executor.launch("elementwise.cu", "relu_kernel<float>", (1.0,), (32,), ())


def test_registry_holds_every_kernel_of_each_area():
    assert "max_pool2d_kernel<double>" in _runtime.names_of(pool.FILE)
    with pytest.raises(ValueError, match="no kernel source"):
        _runtime.register("nonexistent.cu", ["k<float>"])


def test_sizes_that_do_not_fit_an_int_are_refused():
    assert _runtime.int32_or_error("op", "H", 2**31 - 1) == 2**31 - 1
    with pytest.raises(ValueError, match="does not fit"):
        _runtime.int32_or_error("op", "H", 2**31)


def test_grid_1d_caps_the_blocks_of_grid_stride_loops():
    assert _runtime.grid_1d(1) == (1,)
    assert _runtime.grid_1d(257) == (2,)
    assert _runtime.grid_1d(10**12) == (_runtime.MAX_BLOCKS_1D,)


def test_dtype_name():
    assert _runtime.dtype_name(np.float32) == "float"
    assert _runtime.dtype_name(np.dtype("float64")) == "double"
    with pytest.raises(TypeError):
        _runtime.dtype_name(np.float16)


def test_kernel_source_pastes_included_headers_once(tmp_path, monkeypatch):
    text = _runtime.kernel_source("conv_tensor_core.cu")
    assert text.count("// ---- conv_common.cuh ----") == 1  # also included by nothing else
    assert text.count("// ---- mma.cuh ----") == 1
    assert not _runtime._INCLUDE.search(text)  # every project header is pasted in
    assert text.index("R2N_CONV_PARAMS") < text.index("conv2d_4_tensor_core")
    # A header included twice (here, by another header) is pasted once.
    (tmp_path / "a.cuh").write_text('#include "b.cuh"\nint a;')
    (tmp_path / "b.cuh").write_text("int b;")
    (tmp_path / "x.cu").write_text('#include "a.cuh"\n#include "b.cuh"\n#include <cstdio>\n')
    monkeypatch.setattr(_runtime, "KERNEL_DIR", tmp_path)
    body = _runtime.expand_includes((tmp_path / "x.cu").read_text(), "x.cu")
    assert body.count("int b;") == 1 and body.index("int b;") < body.index("int a;")
    assert "#include <cstdio>" in body  # system headers are left alone
    with pytest.raises(ValueError, match="includes 'missing.cuh', not a file in"):
        _runtime.expand_includes('#include "missing.cuh"', "y.cu")
