"""r2n.cpu.LADDERS: every step of every ladder against the float64 reference.

Each step is called as ``r2n ladder`` calls it (the backend's op signature,
arguments as r2n's public op normalises them) on small odd shapes (7x9
images, 3 groups of 5 channels, batch 1 and 2), inputs read-only (a step
never writes its caller's arrays). The conv steps have their own, wider tests
(test_cpu_conv.py, test_cpu_winograd.py): here the ladders as a whole.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
from gpu_cases import cast, chain_inputs, normalised
from helpers import DTYPES, assert_close

import r2n
import r2n.cpu
from r2n import reference
from r2n._ladder import LADDER_OPS

ROOT = pathlib.Path(r2n.__file__).parent.parent


def test_every_ladder_op_has_a_ladder_numbered_from_one_with_the_gpu_names():
    assert tuple(r2n.cpu.LADDERS) == LADDER_OPS
    for op, ladder in r2n.cpu.LADDERS.items():
        assert len(ladder) >= 2, op
        assert [step.number for step in ladder] == list(range(1, len(ladder) + 1)), op
        for step in ladder:
            assert re.fullmatch(r"\d+_[a-z0-9_]+", step.name), step.name
            assert step.summary and len(step.summary) <= 90, step.name
            for source in step.source.split(", "):
                assert (ROOT / source).is_file(), source
    names = {op: [step.name for step in ladder] for op, ladder in r2n.cpu.LADDERS.items()}
    assert names["conv2d"] == list(r2n.cpu.conv.VARIANTS)
    assert names["res2net_chain"] == ["1_unfused", "2_fused_epilogue", "3_fused"]
    # The backend's op is the last rung (conv2d: step 4, Winograd only applies to some).
    assert r2n.cpu.LADDERS["linear"][-1].run is r2n.cpu.layers.linear
    assert r2n.cpu.LADDERS["global_avg_pool2d"][-1].run is r2n.cpu.pool.global_avg_pool2d


# (op, args, kwargs) of public calls on odd shapes
def _cases():
    rng = np.random.default_rng(15)
    x, x2 = rng.standard_normal((1, 15, 7, 9)), rng.standard_normal((2, 15, 9, 7))
    w3, w1 = rng.standard_normal((15, 5, 3, 3)), rng.standard_normal((21, 15, 1, 1))
    b15, b21 = rng.standard_normal(15), rng.standard_normal(21)
    return {
        "conv2d-3x3-s2-g3": ("conv2d", (x, w3, b15), dict(stride=2, padding=1, groups=3)),
        "conv2d-3x3-s1-g3": ("conv2d", (x2, w3, b15), dict(stride=1, padding=1, groups=3)),
        "conv2d-1x1": ("conv2d", (x, w1, None), dict(stride=1, padding=0)),
        "global_avg_pool2d": ("global_avg_pool2d", (x,), {}),
        "global_avg_pool2d-b2": ("global_avg_pool2d", (x2,), {}),
        "linear": (
            "linear",
            (rng.standard_normal((3, 33)), rng.standard_normal((21, 33)), b21),
            {},
        ),
        "linear-1d": (
            "linear",
            (rng.standard_normal(33), rng.standard_normal((21, 33)), None),
            {},
        ),
    }


CASES = _cases()
STEPS = [
    pytest.param(case, step, id=f"{case}-{step.name}")
    for case, (op, _, _) in CASES.items()
    for step in r2n.cpu.LADDERS[op]
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case, step", STEPS)
def test_every_step_matches_the_reference(case, step, dtype):
    op, args, kwargs = CASES[case]
    call_args, call_kwargs = normalised(op, cast(args, dtype), kwargs)
    for a in call_args:
        if isinstance(a, np.ndarray):
            a.flags.writeable = False
    expected = getattr(reference, op)(*args, **normalised(op, args, kwargs)[1])
    if step.applies is not None and not step.applies(*call_args, **call_kwargs):
        with pytest.raises(ValueError):
            step.run(*call_args, **call_kwargs)
        return
    out = step.run(*call_args, **call_kwargs)
    assert out.dtype == dtype and out.shape == expected.shape
    assert_close(out, expected)


# stype, stride, scale, groups, width, batch, H, W
CHAIN_CASES = [
    ("normal", 1, 4, 3, 15, 1, 7, 9),  # 3 groups of 5
    ("stage", 2, 4, 1, 5, 2, 7, 9),
    ("stage", 1, 3, 1, 6, 1, 9, 7),
    ("stage", 5, 3, 1, 5, 1, 9, 7),  # stride > 3: step 4 gathers its input rows
    ("normal", 1, 1, 1, 5, 1, 7, 9),  # scale 1: one conv, no last chunk
]


@pytest.mark.parametrize("biases", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CHAIN_CASES, ids=lambda c: "-".join(map(str, c)))
def test_every_chain_step_matches_the_reference(case, dtype, biases):
    rng = np.random.default_rng(16)
    x, weights, bias, args = chain_inputs(rng, case, dtype, biases=biases)
    x.flags.writeable = False
    expected = reference.res2net_chain(
        x.astype(np.float64),
        [w.astype(np.float64) for w in weights],
        None if bias is None else [b.astype(np.float64) for b in bias],
        **args,
    )
    for step in r2n.cpu.LADDERS["res2net_chain"]:
        out = step.run(x, weights, bias, **args)
        assert out.dtype == dtype and out.shape == args["out_shape"], step.name
        assert_close(out, expected)
