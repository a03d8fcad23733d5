"""``r2n bench``: end to end, wrong backends, Ctrl-C, subsets, and the model's arithmetic.

The end-to-end runs use --quick and small op subsets, in-process (Numba's disk
cache makes the kernels cheap after the first test); one subprocess checks
the console entry point. Timings themselves are not asserted: the machine is
shared, so only their presence and consistency are.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import rel_err

import r2n
from r2n._bench import engines, model, timing
from r2n._bench.cases import block_case, chain_case, conv_case
from r2n._bench.engines import ENGINES
from r2n._bench.torch_import import import_torch
from r2n.cli import bench as bench_cli

pytest.importorskip("numba")


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path, monkeypatch):
    """ONNX exports of the engine rows go to the test's directory, not ~/.cache."""
    monkeypatch.setenv("R2N_BENCH_CACHE", str(tmp_path / "onnx-cache"))


def _run(tmp_path, *argv):
    path = tmp_path / "bench.json"
    code = bench_cli.main(["--quick", "--json", str(path), *argv])
    with open(path) as f:
        return code, json.load(f)


def test_quick_run_end_to_end_writes_every_figure_and_a_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    code, report = _run(tmp_path, "--plot", str(png))  # every op, every row
    assert code == 0
    assert report["exit_code"] == 0 and not report["interrupted"] and not report["failed"]
    assert png.stat().st_size > 10_000
    peaks = report["peaks"]
    for t in ("1", str(report["threads_all"])):
        assert peaks["sgemm_gflops"][t] > 0 and peaks["copy_gbs"][t] > 0
    rows = report["rows"]
    assert {r["op"] for r in rows} == {
        "conv2d",
        "res2net_chain",
        "bottle2neck",
        "res2net50_26w_4s",
    }
    labels = {r["row"] for r in rows}
    assert {"reference 1t", "cpu 1t", "torch eager 1t", "torch folded 1t"} <= labels
    for r in rows:
        if r["op"] == "res2net50_26w_4s" and r["status"] == "r2n.models not available":
            continue  # built in parallel; the row skips until it lands
        assert r["status"] == "ok", r
        assert r["rel_err"] <= r["tolerance"]
        assert r["ms"] > 0 and len(r["times_ms"]) >= timing.QUICK.min_reps
        assert r["ms"] == pytest.approx(float(np.median(r["times_ms"])))
        assert r["gflops"] == pytest.approx(r["flops"] / r["ms"] / 1e6)
        assert r["pct_peak"] > 0 and r["vs_serial"] > 0 and r["vs_torch"] > 0
        assert r["intensity"] == pytest.approx(r["flops"] / r["min_bytes"])
    # The other engines: network rows only, at 1 and all threads, when installed.
    installed = [e for e in ENGINES if engines.missing(e) is None]
    for engine in ENGINES:
        rows_of = [r for r in rows if r["engine"] == engine]
        if engine not in installed:
            assert not rows_of and any(n.startswith(f"{engine}: no rows") for n in report["notes"])
            continue
        assert {r["op"] for r in rows_of} == {"res2net50_26w_4s"}
        assert {r["threads"] for r in rows_of} == {1, report["threads_all"]}
        assert all(r["vs_best_engine"] <= 1.0 + 1e-12 for r in rows_of)
        assert report["machine"][engine] == engines.versions()[engine]
    network = {r["row"]: r for r in rows if r["op"] == "res2net50_26w_4s"}
    if installed and "cpu 1t" in network and network["cpu 1t"]["ms"]:
        best = min(r["ms"] for r in network.values() if r["engine"] != "r2n" and r["threads"] == 1)
        assert network["cpu 1t"]["vs_best_engine"] == pytest.approx(best / network["cpu 1t"]["ms"])
        exported = list((tmp_path / "onnx-cache").glob("res2net50_26w_4s-*-n1-112px-*.onnx"))
        assert len(exported) == 1  # exported once, shared by the engine rows
    # The model: one bottleneck, cpu on all threads (no GPU here).
    (m,) = report["model"]
    assert m["status"] == "ok" and m["parallel"].startswith("cpu")
    s, t1, t2 = (m["ms"][f"{p}_serial"] for p in ("S", "T1", "T2"))
    assert m["k1"] == pytest.approx(t1 / m["ms"]["T1_parallel"])
    assert m["predicted_vs_serial"] == pytest.approx(
        model.predicted_speedups(s, t1, t2, m["k1"], m["k2"])[0]
    )
    assert m["measured_r2n_vs_torch"] > 0


def test_console_script_runs_bench(tmp_path):
    path = tmp_path / "b.json"
    cmd = [sys.executable, "-m", "r2n", "bench", "--quick", "--op", "conv2d"]
    cmd += ["--backend", "reference", "--json", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every row agrees with the reference" in done.stdout
    assert {r["row"] for r in json.loads(path.read_text())["rows"]} == {"reference 1t"}


def test_a_backend_that_disagrees_is_reported_wrong_not_timed_and_fails(tmp_path, monkeypatch):
    real = r2n.cpu.OPS["conv2d"]

    def off_by_a_little(*args, **kwargs):
        return real(*args, **kwargs) * np.float32(1.001)

    monkeypatch.setitem(r2n.cpu.OPS, "conv2d", off_by_a_little)
    code, report = _run(tmp_path, "--op", "conv2d", "--backend", "reference", "cpu")
    assert code == 1 and report["exit_code"] == 1
    cpu_rows = [r for r in report["rows"] if r["backend"] == "cpu"]
    assert cpu_rows and all(r["status"] == "WRONG" and r["ms"] is None for r in cpu_rows)
    assert all(r["rel_err"] == pytest.approx(1e-3, rel=1e-2) for r in cpu_rows)
    assert all(r["status"] == "ok" for r in report["rows"] if r["backend"] == "reference")
    assert len(report["failed"]) == len(cpu_rows)


def test_a_backend_that_raises_is_an_error_and_fails(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(r2n.cpu.OPS, "res2net_chain", broken)
    code, report = _run(tmp_path, "--op", "res2net_chain", "--backend", "cpu")
    assert code == 1
    assert all(r["status"] == "ERROR" and "kernel exploded" in r["error"] for r in report["rows"])


def test_ctrl_c_writes_what_was_measured_and_exits_130(tmp_path, monkeypatch):
    real = timing.TIMERS["host"]
    calls = []

    def interrupted_on_third_row(fn, budget):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(fn, budget)

    monkeypatch.setitem(timing.TIMERS, "host", interrupted_on_third_row)
    code, report = _run(tmp_path, "--op", "conv2d", "--backend", "reference", "cpu")
    assert code == 130 and report["interrupted"] and report["exit_code"] == 130
    timed = [r for r in report["rows"] if r["ms"] is not None]
    assert len(timed) == 2  # the two rows before the interrupted one
    assert len(report["rows"]) == 2


def test_backend_and_op_select_subsets(tmp_path):
    code, report = _run(tmp_path, "--op", "res2net_chain", "--backend", "reference", "torch")
    assert code == 0
    assert {r["op"] for r in report["rows"]} == {"res2net_chain"}
    assert {r["engine"] for r in report["rows"]} >= {"r2n", "torch"}
    assert {r["backend"] for r in report["rows"] if r["engine"] == "r2n"} == {"reference"}
    assert report["model"] == []


def test_unknown_op_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        bench_cli.main(["--op", "nonsense"])
    assert exc.value.code == 2


def test_predicted_speedups_on_known_numbers():
    # S=2, T1=6, T2=2 with k1=3, k2=2: accelerated 2 + 2 + 1 = 5.
    vs_serial, vs_torch = model.predicted_speedups(2.0, 6.0, 2.0, 3.0, 2.0)
    assert vs_serial == pytest.approx(10 / 5)
    assert vs_torch == pytest.approx((2 + 2 + 2) / 5)
    # No parallelism: no speedup; only the glue parallel: vs PyTorch-style > 1.
    assert model.predicted_speedups(1.0, 1.0, 1.0, 1.0, 1.0) == (1.0, 1.0)
    assert model.predicted_speedups(0.0, 4.0, 4.0, 4.0, 4.0) == pytest.approx((4.0, 2.5))


def _fake_row(row, device, threads, ms, flops=2e9):
    engine = row.split()[0]
    return dict(
        op="conv2d",
        case="c",
        row=row,
        engine="torch" if row.startswith("torch") else engine if engine in ENGINES else "r2n",
        backend=row.split()[0],
        device=device,
        threads=threads,
        flops=flops,
        min_bytes=1e6,
        intensity=flops / 1e6,
        status="ok",
        rel_err=1e-7,
        ms=ms,
    )


def test_derived_columns_and_table_from_fake_timings():
    rows = [
        _fake_row("reference 1t", "cpu", 1, 40.0),
        _fake_row("cpu 1t", "cpu", 1, 20.0),
        _fake_row("cpu 4t", "cpu", 4, 5.0),
        _fake_row("gpu", "cuda", None, 1.0),
        _fake_row("torch eager 1t", "cpu", 1, 25.0),
        _fake_row("torch eager 4t", "cpu", 4, 10.0),
        _fake_row("torch-cuda eager", "cuda", None, 2.0),
        dict(_fake_row("cpu 2t", "cpu", 2, None), status="WRONG", rel_err=0.1),
    ]
    peaks = {"sgemm_gflops": {"1": 200.0, "4": 800.0}, "copy_gbs": {"1": 10, "4": 20}}
    bench_cli.derive(rows, peaks, {"sgemm_gflops": 20000.0, "copy_gbs": 3000.0})
    by = {r["row"]: r for r in rows}
    assert by["cpu 4t"]["gflops"] == pytest.approx(400.0)  # 2 GFLOP in 5 ms
    assert by["cpu 4t"]["pct_peak"] == pytest.approx(50.0)
    assert by["cpu 1t"]["pct_peak"] == pytest.approx(50.0)
    assert by["cpu 4t"]["vs_serial"] == pytest.approx(8.0)
    assert by["cpu 4t"]["vs_torch"] == pytest.approx(2.0)
    assert by["cpu 1t"]["vs_torch"] == pytest.approx(1.25)
    assert by["gpu"]["vs_torch"] == pytest.approx(2.0) and by["gpu"]["vs_serial"] == 40.0
    assert by["gpu"]["pct_peak"] == pytest.approx(10.0)
    assert "gflops" not in by["cpu 2t"]
    # A memory-bound row: the roof is bandwidth x intensity (10 GB/s x 2 FLOP/B).
    low = dict(_fake_row("cpu 1t", "cpu", 1, 20.0), intensity=2.0)
    bench_cli.derive([low], peaks, None)
    assert low["roofline_gflops"] == 20.0 and low["pct_peak"] == pytest.approx(500.0)
    table = bench_cli.format_table(rows)
    assert "8.00x" in table and "WRONG" in table and "50%" in table


def test_vs_best_engine_is_the_fastest_other_engine_at_the_same_threads():
    rows = [
        _fake_row("cpu 1t", "cpu", 1, 20.0),
        _fake_row("cpu 2t", "cpu", 2, 10.0),
        _fake_row("torch eager 1t", "cpu", 1, 30.0),
        _fake_row("torch folded 1t", "cpu", 1, 28.0),
        _fake_row("onnxruntime 1t", "cpu", 1, 16.0),
        _fake_row("openvino 1t", "cpu", 1, 18.0),
        _fake_row("torch eager 2t", "cpu", 2, 20.0),
        _fake_row("openvino 2t", "cpu", 2, 12.5),
        dict(_fake_row("onnxruntime 2t", "cpu", 2, None), status="WRONG"),
    ]
    peaks = {"sgemm_gflops": {"1": 200.0, "2": 400.0}, "copy_gbs": {"1": 10, "2": 20}}
    bench_cli.derive(rows, peaks, None)
    by = {r["row"]: r for r in rows}
    assert by["cpu 1t"]["vs_best_engine"] == pytest.approx(16.0 / 20.0)  # onnxruntime
    assert by["cpu 2t"]["vs_best_engine"] == pytest.approx(12.5 / 10.0)  # openvino; ORT wrong
    assert by["cpu 1t"]["vs_torch"] == pytest.approx(1.5)
    assert by["onnxruntime 1t"]["vs_best_engine"] == pytest.approx(1.0)
    assert by["openvino 1t"]["vs_torch"] == pytest.approx(30.0 / 18.0)
    table = bench_cli.format_table(rows)
    assert "vs best engine" in table and "0.80x" in table and "1.25x" in table


def test_missing_engines_give_no_rows_and_say_why(monkeypatch):
    monkeypatch.setattr(engines, "missing", lambda e: f"{e} is not installed (pip)")
    env = bench_cli.Env({"cpu", "onnxruntime", "openvino"})
    specs = bench_cli.row_specs(env, {"cpu", "onnxruntime", "openvino"})
    assert all(spec.engine == "r2n" for spec in specs)
    notes = env.notes()
    assert "onnxruntime: no rows (onnxruntime is not installed (pip))" in notes
    assert "openvino: no rows (openvino is not installed (pip))" in notes


def test_model_text_from_fake_result():
    s, t1, t2, k1, k2 = 1.0, 3.0, 1.0, 2.0, 4.0
    ms = dict(S_serial=s, T1_serial=t1, T2_serial=t2, S_parallel=0.5, T1_parallel=1.5)
    ms.update(T2_parallel=0.25, fused_parallel=1.25)
    vs_serial, vs_torch = model.predicted_speedups(s, t1, t2, k1, k2)
    result = dict(
        case="block",
        parallel="cpu 2t",
        status="ok",
        ms=ms,
        k1=k1,
        k2=k2,
        kS=2.0,
        serial_ms=5.0,
        predicted_vs_serial=vs_serial,
        predicted_vs_torch_style=vs_torch,
        measured_parts_parallel_vs_serial=5.0 / 2.25,
        measured_r2n_vs_serial=4.0,
        torch_label="torch eager 2t",
        torch_ms=2.5,
        measured_torch_vs_serial=2.0,
        measured_r2n_vs_torch=2.0,
    )
    text = model.format_model([result])
    assert f"{5.0 / 2.75:.2f}x" in text  # (1+3+1)/(1+1.5+0.25)
    assert f"{3.5 / 2.75:.2f}x" in text  # (1+1.5+1)/(1+1.5+0.25): vs PyTorch-style
    assert "k1 = 2.00" in text and "k2 = 4.00" in text and "torch eager 2t 2.00x" in text


@pytest.mark.parametrize("stype, stride", [("normal", 1), ("stage", 2)])
def test_model_decomposition_computes_the_block(rng, stype, stride):
    case = block_case(1, 24, 8, 5, 4, 9, stype, stride)  # 20 chain channels, 9x9
    args64, kwargs = case.make(rng)
    ref = case.reference(args64, kwargs)
    args32 = timing.convert(args64, lambda a: a.astype(np.float32))
    s_part, t1_part, t2_part, out = model.decompose(model.cpu_engine(), *args32, **kwargs)
    assert rel_err(out, ref) <= 1e-5
    for part in (s_part, t1_part, t2_part):
        part()  # runs on the stored intermediates


@pytest.mark.parametrize("form", ["eager", "folded"])
@pytest.mark.parametrize("stype, stride", [("normal", 1), ("stage", 2)])
def test_torch_rows_compute_the_reference(rng, form, stype, stride):
    pytest.importorskip("torch")
    for case in (
        chain_case(1, 5, 3, 9, stype, stride),
        block_case(2, 12, 4, 5, 3, 7, stype, stride),
    ):
        args64, kwargs = case.make(rng)
        ref = case.reference(args64, kwargs)
        args32 = timing.convert(args64, lambda a: a.astype(np.float32))
        out = case.torch_runner(args32, kwargs, form, "cpu")()
        assert rel_err(out.numpy(), ref) <= 1e-5, case.label


def test_grouped_conv_case_runs_on_torch(rng):
    pytest.importorskip("torch")
    case = conv_case(1, 15, 15, 3, 7, groups=3)
    args64, kwargs = case.make(rng)
    ref = case.reference(args64, kwargs)
    args32 = timing.convert(args64, lambda a: a.astype(np.float32))
    assert rel_err(case.torch_runner(args32, kwargs, "eager", "cpu")().numpy(), ref) <= 1e-5


def test_no_gpu_means_no_gpu_rows_and_nothing_fails():
    env = bench_cli.Env({"reference", "cpu", "gpu", "torch"})
    if env.cupy is not None:
        pytest.skip("this machine has a GPU")
    assert all(spec.device != "cuda" for spec in bench_cli.row_specs(env, {"gpu", "torch"}))
    assert any("gpu" in note for note in env.notes())
    assert import_torch() is not None


def test_report_renders_a_saved_bench_json(tmp_path, monkeypatch):
    import os

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
    import report

    code, data = _run(tmp_path, "--op", "conv2d", "--backend", "reference", "cpu")
    assert code == 0
    text = report.bench_markdown(data, keep_threads=1)
    timed = [r for r in data["rows"] if r["threads"] == 1]
    assert text.count("| conv2d |") == len(timed)
    first = timed[0]
    assert f"| {first['ms']:.3f} |" in text and f"{first['vs_serial']:.2f}x" in text
    assert "Measured peaks: sgemm" in text


def test_check_still_runs_and_agrees():
    from r2n.cli import check as check_cli

    assert check_cli.check(quick=True, ops=["res2net_chain"]) == 0


def test_cupy_timer_reads_cuda_events_in_seconds(monkeypatch):
    """The GPU timing path, on a stand-in for cupy (no GPU here): warm-up, one
    stream sync, then event pairs whose elapsed milliseconds become seconds."""
    import types

    calls = []

    class Event:
        def record(self):
            calls.append("record")

        def synchronize(self):
            calls.append("sync")

    stream = types.SimpleNamespace(synchronize=lambda: calls.append("stream"))
    cuda = types.SimpleNamespace(
        Event=Event, get_current_stream=lambda: stream, get_elapsed_time=lambda a, b: 2.5
    )
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    budget = timing.Budget(min_time=0.0, min_reps=4, max_reps=4, warmup=2)
    ran = []
    times = timing.time_cupy(lambda: ran.append(1), budget)
    assert times == [2.5e-3] * 4 and len(ran) == 6
    assert calls[0] == "stream" and calls.count("sync") == 4


def test_a_wrong_model_decomposition_is_reported_and_fails(tmp_path, monkeypatch):
    from r2n._bench import residual

    real = residual.add
    monkeypatch.setattr(residual, "add", lambda a, b: real(a, b) + np.float32(0.5))
    code, report = _run(tmp_path, "--op", "model", "--backend", "cpu")
    assert code == 1 and report["rows"] == []
    assert [m["status"] for m in report["model"]] == ["WRONG"]
    assert report["model"][0]["serial_rel_err"] > 1e-3
