"""The cpu backend's ladders from today's code, until ``r2n.cpu.LADDERS`` exists.

Issue 15 moves every numbered variant into step files and has each backend
package list them in ``LADDERS`` (``r2n._ladder``); ``r2n ladder`` reads that
first. Until r2n/cpu does, this module lists what r2n/cpu holds now:

* conv2d: ``r2n.cpu.conv.VARIANTS`` (1_naive, 2_rows, 3_simd, 4_winograd);
* res2net_chain: the chain as separate parallel kernels (r2n's conv2d and
  relu, the split / add / concatenate kernels of ``r2n._bench.residual``),
  then r2n.cpu's fused chain;
* global_avg_pool2d and linear: r2n.cpu's one kernel each.

Delete this module (and its use in ``r2n.cli.ladder``) once ``r2n.cpu.LADDERS``
has landed.
"""

from __future__ import annotations

from .. import _ladder


def _winograd_applies(x, weight, bias, *, stride, dilation, **_) -> bool:
    """Winograd F(2x2, 3x3) computes 3x3 kernels at stride 1, dilation 1 only"""
    return weight.shape[2:] == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)


def _unfused_chain(x, weights, biases, *, scale, stype, stride, groups, width, out_shape):
    """The chain as one parallel kernel per op, every intermediate through memory."""
    from .. import _api
    from . import residual

    chunks = [residual.split(x, i * width, width) for i in range(scale)]
    nums = max(scale - 1, 1)
    outs = []
    for i in range(nums):
        sp = chunks[i] if i == 0 or stype == "stage" else residual.add(outs[-1], chunks[i])
        conv = _api.conv2d(
            sp, weights[i], biases[i], stride=stride, padding=1, groups=groups, backend="cpu"
        )
        outs.append(_api.relu(conv, backend="cpu"))
    if scale > 1:
        last = chunks[nums]
        if stype == "stage":
            last = _api.avg_pool2d(last, 3, stride, 1, backend="cpu")
        outs.append(last)
    return residual.concatenate(outs)


def cpu_ladders() -> dict:
    """op -> the Steps of r2n/cpu as it is today (module docstring)."""
    from ..cpu import conv, layers, pool, res2net

    def step(name, summary, run, source, applies=None):
        return _ladder.Step(name, summary, run, applies=applies, source=source)

    return {
        "conv2d": conv.LADDER,
        "res2net_chain": (
            step(
                "1_unfused",
                "a parallel kernel per op (split, add, conv, ReLU, concatenate), intermediates "
                "through memory",
                _unfused_chain,
                "r2n/_bench/interim_ladders.py, r2n/_bench/residual.py",
            ),
            step(
                "2_fused",
                "one pass per conv: the add on the conv's input, bias + ReLU + the write into "
                "the output slice in its epilogue",
                res2net.res2net_chain,
                "r2n/cpu/res2net.py",
            ),
        ),
        "global_avg_pool2d": (
            step(
                "1_planes",
                "a thread per (n, c) plane, summed in float64",
                pool.global_avg_pool2d,
                "r2n/cpu/pool.py",
            ),
        ),
        "linear": (
            step(
                "1_tiles",
                "4 rows x 16 output features a job, each weight row reused by the tile's rows",
                layers.linear,
                "r2n/cpu/layers.py",
            ),
        ),
    }
