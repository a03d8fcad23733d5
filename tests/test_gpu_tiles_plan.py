"""benchmarks/gpu_tiles.py without a GPU: ``--dry-run`` builds the plan and
exits 0; the plan holds every distinct conv launch of res2net50_26w_4s (their
FLOPs add up to the network's), each with every choice issue 14 item 3 asks
for and the rule's own; the summary and the suggested table entries are
computed from timed choices as the GPU run will."""

from __future__ import annotations

import numpy as np
import pytest
from bench_scripts import benchmark_script, run_script

from r2n._bench.cases import res2net50_flops
from r2n.gpu import conv as gconv


@pytest.fixture(scope="module")
def gpu_tiles():
    with benchmark_script("gpu_tiles") as module:
        yield module


def test_dry_run_lists_the_plan_and_exits_0():
    proc = run_script("gpu_tiles", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("25 shapes, 75 cases, 337 choices; 132 SMs")
    assert "layer3.1 chain     N=1    rule 4p wide k14" in proc.stdout


def test_the_shapes_are_the_networks_convs(gpu_tiles):
    shapes = gpu_tiles.network_convs()
    assert len(shapes) == len({s.describe() for s in shapes}) == 25
    # 1 stem + 16 conv1 + 4 stage chains + 12 x 3 chain convs + 16 conv3: 73 launches
    assert sum(s.count for s in shapes) == 73
    # their FLOPs (the shortcuts inside conv3's GEMM) are the network's but the fc's
    for n in (1, 32):
        convs = sum(s.count * s.flops(n) for s in shapes)
        assert convs == res2net50_flops(n, 224) - 2 * n * 2048 * 1000
    shares = [s.count * s.flops(1) for s in shapes]
    assert shares == sorted(shares, reverse=True)  # the important ones first
    by_name = {s.name: s for s in shapes}
    assert by_name["layer3.1 chain"].count == 15 and by_name["layer3.1 conv1"].count == 5
    assert by_name["layer2.0 conv3+sc"].rule_key(1, 132) == ("plane+shortcut", 512, 464, 784,
                                                              1, 132)  # fmt: skip
    assert by_name["layer2.0 chain"].rule_key(32, 132) == ("im2col", 52, 468, 784, 96, 132)


def test_every_case_has_the_choices_of_the_issue(gpu_tiles):
    plan = gpu_tiles.build_plan([1, 32, 256])
    assert len(plan) == 75
    for case in plan:
        labels = [c.label for c in case.choices]
        assert len(labels) == len(set(labels)) and labels[-1] == "cudnn"
        assert case.rule in labels
        kind = case.shape.kind
        if kind == gconv.KIND_IM2COL:
            assert {"4p wide", "4p narrow"} <= set(labels)
        else:
            assert {"1x1 wide", "1x1 large"} <= set(labels)
            assert ("1x1 half" in labels) == (kind == gconv.KIND_PLANE)
        for choice in case.choices[:-1]:  # every forced choice is one launch_conv can run
            key = case.shape.rule_key(case.n, 132)
            assert (
                choice.tile
                in gconv._RULE_TILES[
                    kind if choice.variant == case.choices[0].variant else gconv.KIND_IM2COL
                ]
            )
            if choice.k_splits > 1:
                assert choice.tile in gconv._SPLIT_TILES[key[0]]
    rules = {(c.shape.name, c.n): c for c in plan}
    # the rule's split and twice it where it splits; where it does not, the
    # split it would make without its K threshold (K = 104 < SPLIT_K_MIN_K)
    assert [c.label for c in rules["layer3.1 chain", 1].choices] == [
        "4p wide", "4p narrow", "4p wide k14", "4p wide k28", "cudnn"]  # fmt: skip
    assert [c.label for c in rules["layer1.1 chain", 1].choices] == [
        "4p wide", "4p narrow", "4p narrow k3", "4p narrow k6", "cudnn"]  # fmt: skip
    assert rules["layer1.1 conv1", 32].rule == "1x1 half"


def test_summary_and_suggested_entries(gpu_tiles):
    shape = next(s for s in gpu_tiles.network_convs() if s.name == "layer1.1 conv1")
    case = gpu_tiles.plan_case(shape, 32, 132)
    times = {"1x1 wide": 0.30, "1x1 large": 0.31, "1x1 half": 0.40, "4p wide": 0.35,
             "cudnn": 0.20}  # fmt: skip
    for choice in case.choices:
        choice.ms, choice.status = times[choice.label], "ok"
    case.status = "ok"
    sm = gpu_tiles.summary(case)
    assert (sm["best"], sm["rule"]) == ("1x1 wide", "1x1 half")
    assert sm["loss"] == pytest.approx(4 / 3) and sm["best_vs_cudnn"] == pytest.approx(2 / 3)
    (entry,) = gpu_tiles.suggested_entries([case], 0.05)
    assert entry.startswith("    ('plane', 104, 256, 3136, 32, 132): ('wide', 1),")
    # the suggested entry is one the rule accepts, and makes it pick the best
    table = gconv.MeasuredTiles({("plane", 104, 256, 3136, 32, 132): ("wide", 1)})
    rule = (*gconv._fp32_rule()[:2], table, gconv._split_rule())
    assert gconv.fp32_tile_rule(*shape.rule_key(32, 132), rule=rule) == ("wide", 1)
    assert gpu_tiles.suggested_entries([case], 0.5) == []  # within the margin
    assert "1x1 half x1.33" in gpu_tiles.table([case])[0]


@pytest.mark.parametrize(
    "shape",
    [
        # K >= 128: each has split choices (two rows of 64)
        ("t 3x3", "im2col", 16, 10, 3, 1, 7),
        ("t stage", "im2col", 45, 9, 3, 2, 7, 3),  # a "stage" chain: 3 groups, stride 2
        ("t 1x1", "plane", 130, 70, 1, 1, 5),
        ("t conv3", "plane", 130, 70, 1, 1, 5, 1, 0, 0, True),  # + a residual
        ("t conv3+sc", "plane+shortcut", 70, 12, 1, 1, 4, 1, 60, 8),  # shortcut 60 @ 8, s2
    ],
    ids=lambda s: s[0],
)
def test_check_and_time_path_on_the_emulator(gpu_tiles, shape):
    """run_case as on the GPU, with the emulator for CuPy's executor, NumPy for
    CuPy and torch on the CPU: every choice (forced tiles and splits, the
    shortcut, the residual; bias and ReLU) is launched, checked against the
    float64 result, and timed by
    the timers given (a graph timer that fails falls back to the eager one)."""
    from cuda_emu import EmuExecutor

    case = gpu_tiles.plan_case(gpu_tiles.ConvShape(*shape), 2, 132)
    assert any(c.k_splits > 1 for c in case.choices)
    calls = []

    def fake_graph(what, sets, reps):
        raise RuntimeError("no CUDA graphs here")

    def fake_eager(what, sets, reps):
        calls.append(what)
        if callable(what):
            what(sets - 1)  # the last input set
        else:
            what.torch_conv(sets - 1)
        return [1.0] * reps

    timers = {"graph": (fake_graph, fake_graph), "eager": (fake_eager, fake_eager)}
    ok = gpu_tiles.run_case(case, EmuExecutor(check_order=False), 3, 0, xp=np, timers=timers)
    assert ok, [(c.label, c.status) for c in case.choices]
    assert len(calls) == len(case.choices)
    for choice in case.choices:
        assert choice.err <= 1e-5 and choice.ms == 1.0
        assert choice.status.startswith("ok (eager: graph failed: RuntimeError")
    assert "(eager)" in gpu_tiles.table([case])[0]


def test_a_failing_choice_is_reported_not_timed(gpu_tiles, monkeypatch):
    from cuda_emu import EmuExecutor

    case = gpu_tiles.plan_case(gpu_tiles.ConvShape("t", "plane", 12, 70, 1, 1, 5), 1, 132)
    original = gpu_tiles._r2n_call

    def broken(case, choice, inputs, ex):
        call = original(case, choice, inputs, ex)
        if choice.tile != "large":
            return call
        return lambda i: call(i) * 1.001  # off by 1e-3

    monkeypatch.setattr(gpu_tiles, "_r2n_call", broken)
    timers = {"graph": (lambda *a: [2.0],) * 2, "eager": (None, None)}
    ok = gpu_tiles.run_case(case, EmuExecutor(check_order=False), 3, 0, xp=np, timers=timers)
    assert not ok
    large = next(c for c in case.choices if c.tile == "large")
    assert large.status.startswith("FAILED check") and large.ms is None
    assert all(c.ms == 2.0 for c in case.choices if c is not large)
