"""benchmarks/gpu_bench.py without a GPU: ``--dry-run`` builds the plan and
exits 0, and the plan holds every row issue 14 asks for; the tolerances and
the target table are computed from the rows as the GPU run will."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import pytest

from r2n.gpu import conv_tensor_core as tc

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_bench.py"


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bench"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["gpu_bench"]


def test_dry_run_lists_the_plan_and_exits_0():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("21 cases, 154 rows")
    assert "res2net50_26w_4s N=256" in proc.stdout
    assert "bottle2neck layer2.0 N=32" in proc.stdout


def test_the_plan_has_every_row_of_the_issue(gpu_bench):
    plan = gpu_bench.build_plan([1, 32, 256], quick=False)
    ops = {(c.op, c.batch) for c in plan}
    for n in (1, 32, 256):
        assert {("res2net50_26w_4s", n), ("res2net_chain", n), ("bottle2neck", n)} <= ops
    for case in plan:
        rows = set(case.rows)
        assert {"r2n fp32", "r2n tf32", "r2n bf16", "torch eager tf32-off",
                "torch eager tf32-on", "torch compile"} <= rows  # fmt: skip
        graphs = {"r2n fp32 graph", "torch graph tf32-off", "torch graph tf32-on"}
        assert graphs <= rows if case.batch == 1 else not graphs & rows
    assert plan[0].op == "res2net50_26w_4s"  # first in the compile budget
    quick = gpu_bench.build_plan([1, 32], quick=True)
    assert len(quick) == 6 and {c.layer for c in quick} == {"", "layer3.1"}


def test_tolerances_follow_the_rows_precision(gpu_bench):
    net = gpu_bench.Case("res2net50_26w_4s", "", 1)
    chain = gpu_bench.Case("res2net_chain", "layer1.1", 1)
    assert gpu_bench.tolerance(net, "r2n fp32", "normal") == 1e-4
    assert gpu_bench.tolerance(chain, "torch eager tf32-off", "normal") == 1e-5
    assert gpu_bench.tolerance(chain, "torch eager tf32-on", "normal") == tc.tolerance("tf32", 3)
    assert gpu_bench.tolerance(chain, "r2n bf16", "stage") == tc.tolerance("bf16", 1)
    # stem + 4 stage blocks (conv1, chain, conv3) + 12 normal (conv1, 3 chain convs, conv3)
    assert gpu_bench.layers_on_longest_path("res2net50_26w_4s") == 1 + 4 * 3 + 12 * 5


def test_targets_are_ratios_of_same_run_rows(gpu_bench):
    R = gpu_bench.Result
    rows = [
        R("net N=1", "res2net50_26w_4s", "", 1, "r2n fp32 graph", 8.5, ms=2.0),
        R("net N=1", "res2net50_26w_4s", "", 1, "torch graph tf32-off", 8.5, ms=3.0),
        R("net N=32", "res2net50_26w_4s", "", 32, "r2n fp32", 272, ms=20.0, peak_mb=100.0),
        R("net N=32", "res2net50_26w_4s", "", 32, "torch eager tf32-off", 272, ms=15.0,
          peak_mb=200.0),
    ]  # fmt: skip
    lines = gpu_bench.targets(rows)
    assert "r2n fp32 graph / torch graph tf32-off: 1.50x (target >= 1.5x)" in lines[0]
    assert "r2n fp32 / torch eager tf32-off: 0.75x (target >= 1.0x)" in lines[1]
    assert "peak memory r2n / torch: 0.50" in lines[1]
    assert "r2n tf32 / torch eager tf32-on: -" in lines[1]  # a row that did not run
