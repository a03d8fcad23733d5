"""The multistage tensor-core im2col GEMM on a GPU at Res2Net-50's sizes (skipped without one).

The kernel runs only when r2n.gpu.conv.TC_IM2COL_MULTISTAGE selects it (the
tests set it). Res2Net-50's chain convs at batch 32 / 256 (grids of
hundreds of blocks, so nothing splits K): the format's norm-wise bound
against float64 (PyTorch's conv2d in float64 on the GPU), step 5 on the
same inputs within 4e-5 (the same rounded operands; the tensor cores'
summation order is not documented, so not bit for bit), every output
element of a NaN-filled channel slice written and the channels around it
untouched; then a layer3.1 "normal" chain (its later convs fed by the sum
pass) against step 5's chain.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import gpu_count, rel_err

from r2n.gpu import _runtime
from r2n.gpu import conv as gconv
from r2n.gpu import conv_tensor_core as tc
from r2n.gpu import res2net as gres

pytestmark = pytest.mark.skipif(gpu_count() == 0, reason="needs CuPy and a CUDA GPU")

SAME_TOL = 4e-5

# n, c (in = out), groups, h = w, stride, residual
CASES = [
    (32, 26, 1, 56, 1, False),  # layer1's chain conv: the 32 x 128 tile, K = 234
    (32, 104, 1, 14, 1, True),  # layer3's: 128 x 64, 16-byte weight copies
    (32, 156, 3, 56, 2, False),  # layer2.0's stage launch: 3 groups of 52, stride 2
    (256, 208, 1, 7, 1, False),  # layer4's at 7x7 (N=256: no split)
]


def _recorded(ex, monkeypatch):
    launches = []
    launch = ex.launch
    monkeypatch.setattr(
        ex,
        "launch",
        lambda file, name, *a, **k: (launches.append(file), launch(file, name, *a, **k)),
    )
    return launches


@pytest.mark.parametrize("precision", tc.PRECISIONS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c[0]}-{c[1]}-g{c[2]}-{c[3]}-s{c[4]}")
def test_multistage_im2col_on_gpu(rng, monkeypatch, case, precision):
    import cupy

    torch = pytest.importorskip("torch")
    n, c, groups, hw, stride, has_residual = case
    ex = _runtime.executor()
    launches = _recorded(ex, monkeypatch)
    x = cupy.asarray(rng.standard_normal((n, c + 2, hw, hw)).astype(np.float32))
    weight = cupy.asarray(
        (rng.standard_normal((c, c // groups, 3, 3)) / np.sqrt(9 * c / groups)).astype(np.float32)
    )
    bias = cupy.asarray(rng.standard_normal(c).astype(np.float32))
    hw_out = (hw - 1) // stride + 1
    out_c0, out_c_total = 3, c + 5
    residual = None
    if has_residual:
        residual = cupy.asarray(
            rng.standard_normal((n, out_c_total, hw_out, hw_out)).astype(np.float32)
        )
    outs = []
    for multistage in (True, False):
        monkeypatch.setattr(gconv, "TC_IM2COL_MULTISTAGE", multistage)
        out = cupy.full((n, out_c_total, hw_out, hw_out), cupy.nan, cupy.float32)
        gconv.launch_conv(
            ex, "5_tensor_core", x, weight, bias, out, stride=(stride, stride), padding=(1, 1),
            dilation=(1, 1), groups=groups, x_c0=1, residual=residual, out_c0=out_c0,
            activation="relu", precision=precision,
        )  # fmt: skip
        outs.append(out)
    assert launches == [tc.IM2COL_FILE, tc.FILE]
    out, on_step_5 = outs
    got = out[:, out_c0 : out_c0 + c]
    assert not bool(cupy.isnan(got).any()), "an output element was not written"
    assert bool(cupy.isnan(out[:, :out_c0]).all() and cupy.isnan(out[:, out_c0 + c :]).all())
    assert rel_err(cupy.asnumpy(got), cupy.asnumpy(on_step_5[:, out_c0 : out_c0 + c])) <= SAME_TOL
    tx = torch.as_tensor(x[:, 1 : 1 + c], device="cuda").double()
    tw = torch.as_tensor(weight, device="cuda").double()
    tb = torch.as_tensor(bias, device="cuda").double()
    exact = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=1, groups=groups)
    if residual is not None:
        exact = exact + torch.as_tensor(residual[:, out_c0 : out_c0 + c], device="cuda").double()
    exact = cupy.asnumpy(cupy.asarray(torch.relu(exact)))
    assert rel_err(cupy.asnumpy(got), exact) <= tc.tolerance(precision)


@pytest.mark.parametrize("precision", tc.PRECISIONS)
def test_layer3_chain_on_the_multistage_kernel_on_gpu(rng, monkeypatch, precision):
    import cupy

    width, n, hw = 104, 32, 14
    ex = _runtime.executor()
    launches = _recorded(ex, monkeypatch)
    x = cupy.asarray(rng.standard_normal((n, 4 * width, hw, hw)).astype(np.float32))
    weights = [
        (rng.standard_normal((width, width, 3, 3)) / np.sqrt(9 * width)).astype(np.float32)
        for _ in range(3)
    ]
    biases = [rng.standard_normal(width).astype(np.float32) for _ in range(3)]
    chain = gres.PreparedChain(weights, biases, scale=4, stype="normal", stride=1, groups=1,
                               width=width, dtype=np.float32, precision=precision)  # fmt: skip
    monkeypatch.setattr(gconv, "TC_IM2COL_MULTISTAGE", True)
    out = chain(x)
    monkeypatch.setattr(gconv, "TC_IM2COL_MULTISTAGE", False)
    on_step_5 = chain(x)
    assert launches == [tc.IM2COL_FILE] * 3 + [tc.FILE] * 3
    assert rel_err(cupy.asnumpy(out), cupy.asnumpy(on_step_5)) <= SAME_TOL
