"""benchmarks/gpu_bench.py without a GPU: ``--dry-run`` builds the plan and
exits 0, and the plan holds every row issue 14 asks for; the tolerances and
the target table are computed from the rows as the GPU run will."""

from __future__ import annotations

import sys

import pytest
from bench_scripts import benchmark_script, run_script

from r2n.gpu import conv_tensor_core as tc


@pytest.fixture(scope="module")
def gpu_bench():
    with benchmark_script("gpu_bench") as module:
        yield module


def test_dry_run_lists_the_plan_and_exits_0():
    proc = run_script("gpu_bench", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("21 cases, 168 rows")
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
        graphs = {"r2n fp32 graph", "torch graph tf32-off", "torch graph tf32-on",
                  "r2n fp32 nosplit", "r2n fp32 graph nosplit"}  # fmt: skip
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


@pytest.fixture
def fake_gpu(gpu_bench, monkeypatch):
    """CuPy arrays as the emulator's stand-ins, torch.cuda's calls as no-ops
    (timings are fake: only the control flow, the float64 checks and the
    rows' results are real), graph capture as a plain call, tiny shapes: a
    "stage" bottleneck (one-launch chain, conv3 + shortcut GEMM, tf32 / bf16
    on tensor cores) and a chain."""
    import contextlib
    import importlib.machinery
    import types

    import numpy as np
    import torch
    from test_gpu_emulated import EmulatedCupyArray
    from test_gpu_tensor_core_emulated import cupy_like

    import r2n.gpu
    import r2n.gpu.graph as rgraph
    from r2n._bench import network

    ex, wrap = cupy_like.__wrapped__(monkeypatch)
    null = types.SimpleNamespace(wait_stream=lambda s: None)
    event = type("Event", (), {"record": lambda self, *a: None, "synchronize": lambda self: None})
    hook = type("Hook", (), {"__enter__": lambda self: self, "__exit__": lambda self, *a: None})
    fake = types.ModuleType("cupy")
    fake.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    fake.__version__ = "stand-in"
    fake.ndarray, fake.asarray = EmulatedCupyArray, lambda a: wrap(np.asarray(a))
    fake.asnumpy = lambda a: np.asarray(a.array)
    fake.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)
    device = types.SimpleNamespace(synchronize=lambda: None, attributes={"MultiProcessorCount": 0})
    fake.cuda = types.SimpleNamespace(
        Event=event, get_elapsed_time=lambda s, e: 1.0, MemoryHook=hook, Device=lambda *a: device,
        runtime=types.SimpleNamespace(runtimeGetVersion=lambda: 0, driverGetVersion=lambda: 0),
    )  # fmt: skip
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    for name, value in dict(
        synchronize=lambda: None, reset_peak_memory_stats=lambda: None,
        memory_allocated=lambda: 0, max_memory_allocated=lambda: 2**20, empty_cache=lambda: None,
        Stream=lambda: null, current_stream=lambda: null,
        stream=lambda s: contextlib.nullcontext(),
        CUDAGraph=lambda: types.SimpleNamespace(replay=lambda: None),
        graph=lambda g: contextlib.nullcontext(), get_device_name=lambda: "Stand-in GPU",
    ).items():  # fmt: skip
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: module)
    monkeypatch.setattr(rgraph, "capture", lambda fn, x: fn)
    monkeypatch.setattr(r2n.gpu, "capture", lambda fn, x: fn)
    monkeypatch.setattr(gpu_bench, "LAYERS", (("layer2.0", 16, 8, 9, 9, "stage", 2),))
    monkeypatch.setattr(network, "network_case", lambda n, hw: None)
    real_plan = gpu_bench.build_plan
    monkeypatch.setattr(gpu_bench, "build_plan", lambda batches, quick: [
        c for c in real_plan(batches, quick) if c.op != gpu_bench.NETWORK])  # fmt: skip
    monkeypatch.setattr(gpu_bench, "ceilings", lambda quick: {"matmul fp32 TFLOP/s": 1.0})
    return gpu_bench


def test_check_and_timing_path_runs_on_the_emulator(fake_gpu):
    import types

    import numpy as np

    gpu_bench = fake_gpu
    opts = types.SimpleNamespace(reps=2, warmup=1)
    state = dict(deadline=float("inf"), compile_left=10.0, failed=False, deferred=[])
    rng = np.random.default_rng(0)
    results, lines = [], []
    for case in gpu_bench.build_plan([1, 2], quick=False):
        results += gpu_bench.run_case(case, rng, opts, lines.append, state)
    assert {r.status for r in results if r.row == "torch compile"} == {"deferred"}
    gpu_bench.run_deferred(opts, lines.append, state)
    assert not state["failed"], [(r.case, r.row, r.status) for r in results if r.status != "ok"]
    assert len(results) == 2 * 12 + 2 * 6
    by_row = {(r.op, r.batch, r.row): r for r in results}
    block_tf32 = by_row[("bottle2neck", 1, "r2n tf32")]
    assert 1e-5 < block_tf32.err <= block_tf32.tol  # really rounded to TF32
    assert by_row[("bottle2neck", 2, "r2n fp32")].err <= 1e-5
    assert by_row[("bottle2neck", 2, "r2n fp32")].ms == 1.0  # the fake events
    assert any("truth check" in line for line in lines)
    assert by_row[("res2net_chain", 2, "torch compile")].compile_s is not None


def test_main_writes_json_and_log(fake_gpu, tmp_path, capsys):
    import json

    gpu_bench = fake_gpu
    argv = ["--batch", "2", "--reps", "2", "--out", str(tmp_path), "--tag", "standin"]
    assert gpu_bench.main(argv) == 0
    (path,) = tmp_path.glob("*-gpu-bench-standin.json")
    data = json.loads(path.read_text())
    assert data["done"] and len(data["rows"]) == 2 * 6
    assert {r["status"] for r in data["rows"]} == {"ok"}
    log = path.with_suffix(".log").read_text()
    assert "targets (issue 14 item 6" in log and "every row checked" in log


def test_a_compile_past_the_budget_is_interrupted_not_failed(gpu_bench):
    import time

    with pytest.raises(gpu_bench.CompileTimeout):
        with gpu_bench._time_limit(0.05):
            time.sleep(2)
