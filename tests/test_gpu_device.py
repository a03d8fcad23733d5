"""GPU engineer A's ops on a real GPU: CuPy arrays through the public API, against
the float64 reference and PyTorch CUDA.

The same cases as the emulated tests (gpu_cases.py). Skipped, module-wide,
when CuPy is missing or sees no GPU (CI); collected without error either way.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gpu_cases import CASES, VARIANTS, cast, normalised
from helpers import DTYPES, assert_close, gpu_count

import r2n
import r2n.gpu
from r2n import reference

pytestmark = pytest.mark.skipif(gpu_count() == 0, reason="CuPy sees no GPU")


def _variants(op):
    if op not in VARIANTS:
        return [None]
    module, attr = VARIANTS[op]
    return list(getattr(getattr(r2n.gpu, module), attr))


def _outputs(out):
    return list(out) if isinstance(out, tuple) else [out]


def _reference(op, args64, kwargs):
    a, kw = normalised(op, cast(args64, np.float64), kwargs)
    return _outputs(reference.OPS[op](*a, **kw))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_public_api_on_cupy_arrays_matches_the_reference(rng, name, dtype):
    import cupy

    op, make, kwargs = CASES[name]
    args64 = make(rng)
    args = cast(args64, dtype, cupy)
    copies = [None if a is None else a.copy() for a in args]
    out = getattr(r2n, op)(*args, **kwargs)  # the default backend for CuPy arrays: gpu
    for o, r in zip(_outputs(out), _reference(op, args64, kwargs), strict=True):
        assert isinstance(o, cupy.ndarray) and o.dtype == dtype and o.shape == r.shape
        assert o.device.id == cupy.cuda.Device().id
        assert_close(cupy.asnumpy(o), r, dtype)
    for a, c in zip(args, copies, strict=True):
        if a is not None:
            assert bool((a == c).all()), "an input was modified"


@pytest.mark.parametrize(
    "name,variant",
    [(n, v) for n, (op, _, _) in CASES.items() if op in VARIANTS for v in _variants(op)],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_variant_on_the_gpu_matches_the_reference(rng, name, variant, dtype):
    import cupy

    op, make, kwargs = CASES[name]
    args64 = make(rng)
    a, kw = normalised(op, cast(args64, dtype, cupy), kwargs)
    out = r2n.gpu.OPS[op](*a, **kw, variant=variant)
    (ref,) = _reference(op, args64, kwargs)
    assert_close(cupy.asnumpy(out), ref, dtype)


# --------------------------------------------------------------------------- #
# PyTorch CUDA
# --------------------------------------------------------------------------- #


def _torch_op(op, args, kwargs):
    """The op in PyTorch on float64 CUDA tensors (args already tensors or None)."""
    if op == "relu":
        return F.relu(args[0])
    if op == "leaky_relu":
        return F.leaky_relu(args[0], kwargs.get("negative_slope", 0.01))
    if op == "sigmoid":
        return torch.sigmoid(args[0])
    if op == "batch_norm":
        x, m, v, w, b = args
        return F.batch_norm(x, m, v, w, b, training=False, eps=kwargs.get("eps", 1e-5))
    if op == "fold_batch_norm":
        cw, cb, m, v, w, b = args
        scale = torch.rsqrt(v + kwargs.get("eps", 1e-5)) * (1 if w is None else w)
        folded_b = ((0 if cb is None else cb) - m) * scale + (0 if b is None else b)
        return cw * scale.reshape((-1,) + (1,) * (cw.ndim - 1)), folded_b
    if op in ("max_pool2d", "avg_pool2d"):
        return getattr(F, op)(args[0], **kwargs)
    if op == "global_avg_pool2d":
        return args[0].mean(dim=(2, 3))
    if op == "linear":
        return F.linear(*args)
    if op == "space_to_depth":
        x, b = args[0], kwargs.get("block_size", 4)
        n, c, h, w = x.shape
        blocks = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return blocks.reshape(n, b * b * c, h // b, w // b)
    if op == "blur_pool2d":
        x = args[0]
        taps = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
        kernel = (torch.outer(taps, taps) / 16).expand(x.shape[1], 1, 3, 3)
        return F.conv2d(
            F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, stride=2, groups=x.shape[1]
        )
    if op == "squeeze_excite":
        x, w1, b1, w2, b2 = args
        s = x.mean(dim=(2, 3), keepdim=True)
        g = torch.sigmoid(F.conv2d(F.relu(F.conv2d(s, w1, b1)), w2, b2))
        return x * g
    raise KeyError(op)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch sees no CUDA device")
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_public_api_on_cupy_arrays_matches_pytorch_cuda(rng, name, dtype):
    import cupy

    op, make, kwargs = CASES[name]
    args64 = make(rng)
    out = getattr(r2n, op)(*cast(args64, dtype, cupy), **kwargs)
    targs = [None if a is None else torch.tensor(a, dtype=torch.float64, device="cuda")
             for a in args64]  # fmt: skip
    expected = _torch_op(op, targs, kwargs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for o, t in zip(_outputs(out), expected, strict=True):
        assert_close(cupy.asnumpy(o), t.cpu().numpy(), dtype)


# --------------------------------------------------------------------------- #
# Devices and streams
# --------------------------------------------------------------------------- #


def test_launches_run_on_the_current_stream(rng):
    """r2n's kernels must be ordered after earlier work on the current stream.

    The input is produced on a non-blocking stream behind ~tens of ms of queued
    work; the legacy default stream does not wait for that stream, so a kernel
    launched anywhere but the current stream would read the input before it is
    written (garbage), and the comparison fails.
    """
    import cupy

    x = cupy.asarray(rng.standard_normal((2, 15, 7, 9)).astype(np.float32))
    busy = cupy.ones(1 << 24, dtype=cupy.float32)
    cupy.cuda.Device().synchronize()
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        for _ in range(500):  # queued work that the producer of y waits behind
            cupy.multiply(busy, 1.0, out=busy)
        y = -x
        out = r2n.max_pool2d(r2n.relu(y), 3, 2, 1, ceil_mode=True)
    stream.synchronize()
    ref = reference.max_pool2d(
        reference.relu(-cupy.asnumpy(x)), kernel_size=(3, 3), stride=(2, 2), padding=(1, 1),
        ceil_mode=True, out_shape=out.shape,
    )  # fmt: skip
    np.testing.assert_array_equal(cupy.asnumpy(out), ref)


@pytest.mark.skipif(gpu_count() < 2, reason="needs two GPUs")
def test_outputs_stay_on_the_inputs_device(rng):
    import cupy

    with cupy.cuda.Device(1):
        x = cupy.asarray(rng.standard_normal((1, 15, 7, 9)))
    with cupy.cuda.Device(0):
        out = r2n.global_avg_pool2d(x)
    assert out.device.id == 1
    assert_close(cupy.asnumpy(out), cupy.asnumpy(x).mean(axis=(2, 3)))
