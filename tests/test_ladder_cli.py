"""``r2n ladder``: end to end on small shapes, wrong / crashing / skipped steps,
the library row, the GPU path through a stand-in, --shape, and report.py's tables.

The runs are in-process with --quick and one thread; timings themselves are
never asserted (the machine is shared), only their presence and the
arithmetic between them. Test ladders are built from the backends' public
``OPS`` so they do not depend on the names of today's variants.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import r2n
from r2n import _ladder
from r2n._bench import ladder_cases, machine, timing
from r2n.cli import ladder

pytest.importorskip("numba")


def _run(tmp_path, *argv, name="ladder.json"):
    path = tmp_path / name
    code = ladder.main(["--quick", "--threads", "1", "--json", str(path), *argv])
    with open(path) as f:
        return code, json.load(f)


def _cpu_conv(x, weight, bias, **kwargs):
    return r2n.cpu.OPS["conv2d"](x, weight, bias, **kwargs)


def _steps_of(report, k=0):
    return {r["step"]: r for r in report["ladders"][k]["rows"]}


def test_every_op_end_to_end_with_the_library_row_and_a_plot(tmp_path):
    """Every op at its --quick Res2Net-50 shapes, with whatever ladders r2n.cpu
    has: each step agrees (or does not apply), is timed, and the derived
    figures follow from the times and the measured peaks."""
    pytest.importorskip("matplotlib")
    png = tmp_path / "ladder.png"
    code, report = _run(tmp_path, "--plot", str(png))
    assert code == 0 and report["exit_code"] == 0 and not report["failed"]
    assert report["tool"] == "r2n ladder" and report["backend"] == "cpu"
    assert report["threads"] == 1 and report["machine"]["numpy"] == np.__version__
    assert png.stat().st_size > 10_000
    peaks = report["peaks"]
    assert peaks["sgemm_gflops"]["1"] > 0 and peaks["copy_gbs"]["1"] > 0
    names = [(lad["op"], lad["name"]) for lad in report["ladders"]]
    assert names == [
        ("conv2d", "3x3"),
        ("conv2d", "1x1"),
        ("conv2d", "grouped"),
        ("res2net_chain", "layer1"),
        ("global_avg_pool2d", "head"),
        ("linear", "classifier"),
    ]
    for lad in report["ladders"]:
        roof = machine.roofline_gflops(
            peaks["sgemm_gflops"]["1"], peaks["copy_gbs"]["1"], lad["intensity"]
        )
        assert lad["roofline_gflops"] == pytest.approx(roof)
        assert lad["intensity"] == pytest.approx(lad["flops"] / lad["min_bytes"])
        rows = lad["rows"]
        steps = [r for r in rows if r["kind"] == "step"]
        assert steps and [r["number"] for r in steps] == sorted(r["number"] for r in steps)
        assert steps[0]["number"] == 1 and steps[0]["status"] == "ok"
        # The library (PyTorch is installed with the test extra): the last rung.
        assert rows[-1]["kind"] == "library" and rows[-1]["step"].startswith("torch ")
        assert rows[-1]["status"] == "ok" and "PyTorch" in rows[-1]["summary"]
        previous = None
        for r in rows:
            assert r["status"] in ("ok", "skipped"), r
            if r["status"] == "skipped":
                assert r["reason"] and r["ms"] is None
                continue
            assert r["rel_err"] <= r["tolerance"] == pytest.approx(1e-5)
            assert len(r["times_ms"]) >= timing.QUICK.min_reps
            assert r["ms"] == pytest.approx(float(np.median(r["times_ms"])))
            assert r["gflops"] == pytest.approx(lad["flops"] / r["ms"] / 1e6)
            assert r["pct_roofline"] == pytest.approx(100 * r["gflops"] / roof)
            assert r["x_step1"] == pytest.approx(steps[0]["ms"] / r["ms"])
            if previous is None:
                assert r["x_previous"] is None
            else:
                assert r["x_previous"] == pytest.approx(previous["ms"] / r["ms"])
            previous = r


def test_wrong_crashing_and_skipped_steps(tmp_path, monkeypatch):
    """A wrong step is reported and never timed, a crash is an ERROR with its
    message, a step that does not apply is skipped with its reason, and the
    speedups skip over them; the exit code is 1."""
    calls = {"wrong": 0}

    def wrong(*args, **kwargs):
        calls["wrong"] += 1
        return _cpu_conv(*args, **kwargs) * np.float32(1.001)

    def crashes(*args, **kwargs):
        raise RuntimeError("out of registers")

    def only_1x1(x, weight, bias, **checked):
        """This step computes 1x1 kernels only"""
        return weight.shape[2:] == (1, 1)

    steps = (
        _ladder.Step("1_first", "the first", _cpu_conv),
        _ladder.Step("2_wrong", "off by 0.1%", wrong),
        _ladder.Step("3_crashes", "raises", crashes),
        _ladder.Step("4_skipped", "1x1 only", _cpu_conv, applies=only_1x1),
        _ladder.Step("5_last", "the last", _cpu_conv),
    )
    monkeypatch.setattr(r2n.cpu, "LADDERS", {"conv2d": steps}, raising=False)
    code, report = _run(tmp_path, "conv2d", "--shape", "1x6x7x9->5,k=3", "--no-library")
    assert code == 1 and report["exit_code"] == 1
    assert report["ladders_from"] == "r2n.cpu.LADDERS"
    rows = _steps_of(report)
    assert list(rows) == ["1_first", "2_wrong", "3_crashes", "4_skipped", "5_last"]
    assert rows["2_wrong"]["status"] == "WRONG" and rows["2_wrong"]["ms"] is None
    assert rows["2_wrong"]["rel_err"] == pytest.approx(1e-3, rel=1e-2)
    assert calls["wrong"] == 1  # checked once, never timed
    assert rows["3_crashes"]["status"] == "ERROR"
    assert rows["3_crashes"]["error"] == "RuntimeError: out of registers"
    assert rows["4_skipped"]["status"] == "skipped"
    assert rows["4_skipped"]["reason"] == "This step computes 1x1 kernels only"
    assert rows["5_last"]["x_previous"] == pytest.approx(
        rows["1_first"]["ms"] / rows["5_last"]["ms"]
    )
    assert report["failed"] == [
        "conv2d 3x3 6->5 N=1 7x9 [2_wrong]",
        "conv2d 3x3 6->5 N=1 7x9 [3_crashes]",
    ]
    assert [r["kind"] for r in report["ladders"][0]["rows"]] == ["step"] * 5  # --no-library


def test_a_step_is_held_to_its_own_tolerance(tmp_path, monkeypatch):
    """A step that declares a tolerance (tensor-core precision) is checked
    against it; without one, 1e-5."""

    def rounded(*args, **kwargs):
        return _cpu_conv(*args, **kwargs) * np.float32(1 + 1e-4)

    steps = (
        _ladder.Step("1_exact", "float32", _cpu_conv),
        _ladder.Step("2_rounded", "TF32-like", rounded, tolerance=1e-3),
        _ladder.Step("3_rounded", "the same, no tolerance declared", rounded),
    )
    monkeypatch.setattr(r2n.cpu, "LADDERS", {"conv2d": steps}, raising=False)
    code, report = _run(tmp_path, "conv2d", "--shape", "1x4x5x5->4,k=1", "--no-library")
    rows = _steps_of(report)
    assert rows["2_rounded"]["status"] == "ok" and rows["2_rounded"]["tolerance"] == 1e-3
    assert rows["3_rounded"]["status"] == "WRONG" and rows["3_rounded"]["tolerance"] == 1e-5
    assert code == 1


def test_ops_without_a_ladder_are_noted_and_skipped(tmp_path, monkeypatch):
    steps = (_ladder.Step("1_only", "the op", r2n.cpu.OPS["linear"]),)
    monkeypatch.setattr(r2n.cpu, "LADDERS", {"linear": steps}, raising=False)
    code, report = _run(tmp_path, "--no-library")
    assert code == 0 and [lad["op"] for lad in report["ladders"]] == ["linear"]
    for op in ("conv2d", "res2net_chain", "global_avg_pool2d"):
        assert f"{op}: no ladder (r2n.cpu.LADDERS lists none)" in report["notes"]


def test_the_gpu_path_through_a_stand_in(tmp_path, monkeypatch):
    """--backend gpu without a GPU: the same code path with the CUDA emulator
    as the device (NumPy arrays, host timer, steps given executor=), the
    GPU's peaks for the roofline, no thread count and no library row."""
    from cuda_emu import EmuExecutor

    ex = EmuExecutor()
    calls = []

    def pool(x, *, executor=None):
        calls.append(executor)
        return r2n.gpu.OPS["global_avg_pool2d"](x, executor=executor)

    steps = (
        _ladder.Step("1_naive", "one", pool, source="r2n/gpu/kernels/pool.cu"),
        _ladder.Step("2_again", "two", pool),
    )
    monkeypatch.setattr(r2n.gpu, "LADDERS", {"global_avg_pool2d": steps}, raising=False)
    monkeypatch.setattr(
        ladder,
        "gpu_device",
        lambda: ladder.Device("gpu", "emulated", step_kwargs={"executor": ex}, torch_device=None),
    )
    gpu_peaks = {"name": "emulated", "sgemm_gflops": 1000.0, "copy_gbs": 100.0}
    monkeypatch.setattr(machine, "gpu_peaks", lambda quick: gpu_peaks)
    code, report = _run(tmp_path, "global_avg_pool2d", "--backend", "gpu", "--shape", "2x5x7x9")
    assert code == 0 and report["device"] == "emulated" and report["threads"] is None
    assert report["peaks"] is None and report["gpu_peaks"] == gpu_peaks
    (lad,) = report["ladders"]
    assert lad["roofline_gflops"] == pytest.approx(100.0 * lad["intensity"])
    assert [r["status"] for r in lad["rows"]] == ["ok", "ok"]
    assert set(calls) == {ex} and len(calls) >= 2 * (1 + timing.QUICK.min_reps)
    assert "library: no row (torch sees no GPU)" in report["notes"]


def test_gpu_ladders_run_under_the_emulator(tmp_path, monkeypatch):
    """r2n.gpu.LADDERS, when the gpu backend lists them, every step on tiny
    shapes under the CUDA emulator (the real steps, the stand-in device)."""
    ladders = getattr(r2n.gpu, "LADDERS", None)
    if not ladders:
        pytest.skip("r2n.gpu has no LADDERS yet")
    from cuda_emu import EmuExecutor

    ex = EmuExecutor()
    monkeypatch.setattr(
        ladder,
        "gpu_device",
        lambda: ladder.Device("gpu", "emulated", step_kwargs={"executor": ex}, torch_device=None),
    )
    monkeypatch.setattr(machine, "gpu_peaks", lambda quick: None)
    shapes = {
        "conv2d": "1x16x6x7->16,k=3",
        "res2net_chain": "1x16x6x7,scale=4",
        "global_avg_pool2d": "1x16x6x7",
        "linear": "3x16->10",
    }
    for op in ladders:
        code, report = _run(tmp_path, op, "--backend", "gpu", "--shape", shapes[op])
        assert code == 0, report["failed"]
        assert all(r["status"] in ("ok", "skipped") for r in report["ladders"][0]["rows"])


@pytest.mark.skipif(machine.cupy_with_gpu() is not None, reason="this machine has a GPU")
def test_gpu_without_a_gpu_exits_2(capsys):
    assert ladder.main(["linear", "--backend", "gpu", "--quick"]) == 2
    assert "no GPU" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shape", "1x6x7x7->4,k=3"], "--shape needs an OP"),
        (["conv2d", "--shape", "1x6x7x7->4"], "k=K (the kernel size) is required"),
        (["conv2d", "--shape", "1x6x7x7->4,k=3,groups=4"], "groups=4 must divide"),
        (["linear", "--shape", "2048->1000"], "expected NxIN->OUT"),
        (["res2net_chain", "--shape", "1x8x7x7,scale=4,stride=2"], "stype 'normal' requires"),
        (["linear", "--threads", "0"], "--threads must be from 1"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ladder.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_shapes_parse_into_the_cases_r2n_bench_uses():
    """--shape per op: sizes, options, FLOPs and bytes (multiply-adds count 2,
    every array moved once in float32)."""
    depthwise = ladder_cases.parse_shape("conv2d", "2x64x56x56->64,k=3,groups=64")
    assert depthwise.label == "3x3 groups=64 64->64 N=2 56x56"
    assert depthwise.flops == 2 * 2 * 64 * 1 * 9 * 56 * 56
    assert ladder_cases.check_shapes(depthwise)["out_shape"] == (2, 64, 56, 56)
    odd = ladder_cases.parse_shape("conv2d", "1x6x7x9->4,k=3x1,stride=2,groups=2,dilation=2")
    assert ladder_cases.check_shapes(odd) == dict(
        stride=(2, 2), padding=(2, 0), dilation=(2, 2), groups=2, out_shape=(1, 4, 4, 5)
    )
    chain = ladder_cases.parse_shape("res2net_chain", "1x20x7x9,scale=4,stype=stage,stride=2")
    assert ladder_cases.check_shapes(chain)["out_shape"] == (1, 20, 4, 5)
    assert chain.flops == 3 * 2 * 5 * 5 * 9 * 4 * 5
    pool = ladder_cases.parse_shape("global_avg_pool2d", "8x2048x7x7")
    assert (pool.flops, pool.min_bytes) == (8 * 2048 * 49, 4 * (8 * 2048 * 49 + 8 * 2048))
    fc = ladder_cases.parse_shape("linear", "8x2048->1000")
    assert fc.min_bytes == 4 * (8 * 2048 + 1000 * 2048 + 1000 + 8 * 1000)
    # The defaults are Res2Net-50's (module docstring), halved maps under --quick.
    (default,) = ladder_cases.default_cases("res2net_chain", quick=False)
    assert default[2].label == "layer1.1 N=1 26w x 4s 56x56 normal"
    conv3x3 = ladder_cases.default_cases("conv2d", quick=True, batch=2)[0][2]
    assert conv3x3.label == "3x3 26->26 N=2 28x28"


def test_report_renders_the_ladder_json_and_the_command_dispatches(tmp_path, monkeypatch):
    """benchmarks/report.py turns a saved run into the README's table; the
    ``r2n`` command line reaches ``ladder``."""
    from r2n.cli import main

    steps = (
        _ladder.Step("1_first", "the first", _cpu_conv),
        _ladder.Step("2_skip", "never", _cpu_conv, applies=lambda *a, **k: False),
    )
    monkeypatch.setattr(r2n.cpu, "LADDERS", {"conv2d": steps}, raising=False)
    path = tmp_path / "ladder.json"
    argv = ["ladder", "conv2d", "--shape", "1x6x7x9->5,k=3", "--quick", "--threads", "1"]
    assert main([*argv, "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
    import report

    text = report.ladder_markdown(data)
    first, skipped, library = data["ladders"][0]["rows"]
    assert "**conv2d 3x3 6->5 N=1 7x9** (--shape 1x6x7x9->5,k=3)" in text
    rate = report.format_rate(first["gflops"])  # 1 decimal, 3 below 1 GFLOP/s (a loaded machine)
    assert f"| `1_first` | the first | {first['ms']:.3f} | {rate} |" in text
    assert "| `2_skip` | never | skipped: this step does not compute this case |" in text
    assert f"| {library['step']} | PyTorch, eager: F.conv2d (oneDNN) |" in text
    assert f"{library['x_previous']:.2f}x | {library['x_step1']:.2f}x |" in text
    assert "Measured at that thread count: sgemm" in text
