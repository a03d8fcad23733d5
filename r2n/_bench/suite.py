"""The cases of ``r2n bench``: the op cases of :mod:`~r2n._bench.cases` and the
whole network of :mod:`~r2n._bench.network`, at Res2Net-50 (26w x 4s) sizes."""

from __future__ import annotations

from . import cases, network


def bench_cases(quick: bool) -> list[cases.BenchCase]:
    """The benchmark cases (batch 1). --quick: 28x28 maps and a 112x112 network;
    default: 56x56 maps (layer1), the stride-2 stage blocks of layer2.0 too,
    and the 224x224 network."""
    hw = 28 if quick else 56
    out = [
        cases.conv_case(1, 26, 26, 3, hw),
        cases.conv_case(1, 256, 104, 1, hw),
        cases.conv_case(1, 64, 64, 3, hw // 2, groups=8),
        cases.chain_case(1, 26, 4, hw, "normal", 1, "layer1.1"),
    ]
    if not quick:
        out.append(cases.chain_case(1, 52, 4, hw, "stage", 2, "layer2.0"))
    out.append(cases.block_case(1, 256, 64, 26, 4, hw, "normal", 1, "layer1.1"))
    if not quick:
        out.append(cases.block_case(1, 256, 128, 52, 4, hw, "stage", 2, "layer2.0"))
    out.append(network.network_case(1, 112 if quick else 224))
    return out
