"""r2n.gpu.LADDERS: every step of every ladder, under the CPU emulator (tests/cuda_emu).

Each step is called as ``r2n ladder`` calls it (the backend's op signature,
arguments as r2n's public op normalises them, ``executor=``) on small odd
shapes (7x9 images, 3 groups of 5 channels, batch 1 and 2) and compared with
the float64 reference; the chain's steps are also counted: each fusion must
remove the launches it claims to. The steps' kernels have their own, wider
tests (test_gpu_conv_emulated.py, test_gpu_tensor_core_emulated.py,
test_gpu_emulated.py): here the ladder as a whole.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
from cuda_emu import EmuExecutor
from gpu_cases import cast, chain_inputs, normalised
from helpers import DTYPES, assert_close, gpu_count, rel_err

import r2n
import r2n.gpu
from r2n import reference
from r2n._ladder import LADDER_OPS
from r2n.gpu import conv_tensor_core as tc

ROOT = pathlib.Path(r2n.__file__).parent.parent


@pytest.fixture(scope="module")
def ex():
    return EmuExecutor()


def test_every_ladder_op_has_a_ladder_numbered_from_one():
    assert tuple(r2n.gpu.LADDERS) == LADDER_OPS
    for op, ladder in r2n.gpu.LADDERS.items():
        assert len(ladder) >= 2, op
        assert [step.number for step in ladder] == list(range(1, len(ladder) + 1)), op
        for step in ladder:
            assert re.fullmatch(r"\d+_[a-z0-9_]+", step.name), step.name
            assert step.summary and len(step.summary) <= 90, step.name
            assert (ROOT / step.source).is_file(), step.source
    conv_steps = [step.name for step in r2n.gpu.LADDERS["conv2d"]]
    assert conv_steps == list(r2n.gpu.conv.VARIANTS)
    assert conv_steps[:3] == ["1_naive", "2_smem_tiles", "3_register_tiles"]


def test_each_conv_step_is_one_kernel_file_with_its_header():
    for step in r2n.gpu.LADDERS["conv2d"]:
        source = ROOT / step.source
        assert source.name == f"conv_{step.name}.cu", step.source
        header = source.read_text().split("\n#include", 1)[0]
        assert f"step {step.name}" in header.splitlines()[0], step.name
        assert "Measured" in header, step.name


def _case(op):
    """(args, kwargs) of a public call of ``op`` on odd shapes, fresh random values."""
    rng = np.random.default_rng(15)
    if op == "conv2d":
        args = (rng.standard_normal((2, 15, 7, 9)), rng.standard_normal((15, 5, 3, 3)))
        return (*args, rng.standard_normal(15)), dict(stride=2, padding=1, groups=3)
    if op == "global_avg_pool2d":
        return (rng.standard_normal((1, 15, 7, 9)),), {}
    if op == "linear":
        x, w = rng.standard_normal((3, 33)), rng.standard_normal((21, 33))
        return (x, w, rng.standard_normal(21)), {}
    raise AssertionError(op)


STEPS = [
    pytest.param(op, step, id=f"{op}-{step.name}")
    for op in ("conv2d", "global_avg_pool2d", "linear")
    for step in r2n.gpu.LADDERS[op]
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("op, step", STEPS)
def test_every_step_matches_the_reference(ex, op, step, dtype):
    args, kwargs = _case(op)
    call_args, call_kwargs = normalised(op, cast(args, dtype), kwargs)
    expected = getattr(reference, op)(*args, **normalised(op, args, kwargs)[1])
    if step.name == "5_tensor_core" and dtype == np.float64:
        with pytest.raises(ValueError, match="float64 has no tensor-core path"):
            step.run(*call_args, executor=ex, **call_kwargs)
        return
    out = step.run(*call_args, executor=ex, **call_kwargs)
    assert out.dtype == dtype and out.shape == expected.shape
    if step.name == "5_tensor_core":  # the ladder runs it on TF32 operands
        assert rel_err(out, expected) <= tc.tolerance("tf32")
    else:
        assert_close(out, expected)


# stype, stride, scale, groups, width, batch, H, W
CHAIN_CASES = [
    ("normal", 1, 4, 3, 15, 1, 7, 9),  # 3 groups of 5
    ("stage", 2, 4, 1, 5, 2, 7, 9),
    ("stage", 1, 3, 1, 6, 1, 9, 7),
    ("normal", 1, 1, 1, 5, 1, 7, 9),  # scale 1: one conv, no last chunk
]


def _launches_of(step_name, args):
    """The launches a chain step makes: per conv, 1_unfused runs the conv and a
    ReLU, the fused steps the conv alone; the pooled last chunk ("stage", scale
    > 1) is its own launch except in 3_fused, where the first conv's extra blocks
    write it, and where a "stage" chain's independent convs are one launch."""
    nums = max(args["scale"] - 1, 1)
    if step_name == "3_fused" and args["stype"] == "stage":
        return 1
    per_conv = 2 if step_name == "1_unfused" else 1
    pooled = args["stype"] == "stage" and args["scale"] > 1 and step_name != "3_fused"
    return nums * per_conv + pooled


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CHAIN_CASES, ids=lambda c: "-".join(map(str, c)))
def test_every_chain_step_matches_the_reference(ex, case, dtype):
    rng = np.random.default_rng(16)
    x, weights, biases, args = chain_inputs(rng, case, dtype)
    x.flags.writeable = False
    expected = reference.res2net_chain(
        x.astype(np.float64),
        [w.astype(np.float64) for w in weights],
        [b.astype(np.float64) for b in biases],
        **args,
    )
    for step in r2n.gpu.LADDERS["res2net_chain"]:
        ex.launches.clear()
        out = step.run(x, weights, biases, executor=ex, **args)
        assert out.dtype == dtype and out.shape == args["out_shape"], step.name
        assert_close(out, expected)
        assert len(ex.launches) == _launches_of(step.name, args), (step.name, ex.launches)


def test_chain_steps_without_biases(ex):
    rng = np.random.default_rng(17)
    x, weights, _, args = chain_inputs(rng, ("normal", 1, 3, 1, 6, 1, 7, 9), np.float64, False)
    expected = reference.res2net_chain(x, weights, None, **args)
    for step in r2n.gpu.LADDERS["res2net_chain"]:
        assert_close(step.run(x, weights, None, executor=ex, **args), expected)


# --------------------------------------------------------------------------- #
# On a real GPU (skipped without one): every step on CuPy arrays
# --------------------------------------------------------------------------- #


@pytest.mark.skipif(gpu_count() == 0, reason="CuPy sees no GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("op", LADDER_OPS)
def test_every_step_on_the_gpu_matches_the_reference(op, dtype):
    import cupy

    if op == "res2net_chain":
        x, weights, biases, kwargs = chain_inputs(np.random.default_rng(18), CHAIN_CASES[1], dtype)
        call_args = (cupy.asarray(x), [cupy.asarray(w) for w in weights],
                     [cupy.asarray(b) for b in biases])  # fmt: skip
        expected = reference.res2net_chain(*cast((x,), np.float64), weights, biases, **kwargs)
    else:
        args, kwargs = _case(op)
        expected = getattr(reference, op)(*args, **normalised(op, args, kwargs)[1])
        call_args, kwargs = normalised(op, cast(args, dtype, cupy), kwargs)
    for step in r2n.gpu.LADDERS[op]:
        if step.name == "5_tensor_core":
            if dtype == np.float32:
                out = step.run(*call_args, **kwargs)
                assert rel_err(cupy.asnumpy(out), expected) <= tc.tolerance("tf32")
            continue
        out = step.run(*call_args, **kwargs)
        assert isinstance(out, cupy.ndarray) and out.dtype == dtype, step.name
        assert_close(cupy.asnumpy(out), expected)
