"""benchmarks/report.py --merge: several machines' JSON files (r2n bench and
pytest-benchmark) in one table, each cell a % of that machine's measured peak."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
_spec = importlib.util.spec_from_file_location(
    "bench_report", os.path.join(ROOT, "benchmarks", "report.py")
)
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def _bench_file(tmp_path, name, *, cpu, cores, sgemm, rows, gpu=None):
    """A minimal r2n bench JSON file: machine, peaks and rows."""
    data = {
        "tool": "r2n bench",
        "machine": {"cpu": cpu, "cpu_count": cores},
        "threads_all": cores,
        "peaks": {"sgemm_gflops": sgemm, "copy_gbs": {}},
        "gpu_peaks": gpu,
        "rows": rows,
        "model": [],
    }
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _row(op, case, row, threads, ms, pct, status="ok"):
    return dict(op=op, case=case, row=row, threads=threads, ms=ms, pct_peak=pct, status=status)


def _pytest_file(tmp_path, name, benchmarks, *, cpu="Test CPU", cores=4):
    data = {
        "machine_info": {"cpu": {"brand_raw": cpu, "count": cores}},
        "benchmarks": [
            {
                "group": group,
                "name": f"test[{backend}-{threads}]",
                "extra_info": {
                    "backend": backend,
                    "threads": threads,
                    "device": device,
                    "flops": flops,
                },
                "stats": {"median": median},
            }
            for group, backend, threads, device, flops, median in benchmarks
        ],
    }
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _table(text):
    """{(benchmark, row): [cells]} of the markdown table."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| benchmark"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_two_machines_share_rows_with_all_threads_aligned(tmp_path):
    small = _bench_file(
        tmp_path,
        "small.json",
        cpu="Small CPU",
        cores=2,
        sgemm={"1": 100.0, "2": 200.0},
        rows=[
            _row("conv2d", "3x3", "cpu 1t", 1, 0.5, 65.0),
            _row("conv2d", "3x3", "cpu 2t", 2, 0.3, 60.0),
            _row("conv2d", "1x1", "cpu 2t", 2, None, None, status="WRONG"),
        ],
    )
    big = _bench_file(
        tmp_path,
        "big.json",
        cpu="Big CPU",
        cores=16,
        sgemm={"1": 80.0, "16": 1100.0},
        gpu={"name": "Some GPU", "sgemm_gflops": 50000.0, "copy_gbs": 3000.0},
        rows=[
            _row("conv2d", "3x3", "cpu 1t", 1, 0.6, 70.0),
            _row("conv2d", "3x3", "cpu 16t", 16, 0.1, 25.0),
            _row("conv2d", "3x3", "gpu", None, 0.09, 0.77),
        ],
    )
    text = report.merged_markdown(report.merge([f"small={small}", f"big={big}"]))
    assert "| benchmark | row | small: % peak (ms) | big: % peak (ms) |" in text
    assert "**big**: Big CPU, 16 cores, Some GPU; all threads = 16" in text
    assert "50000 (gpu)" in text
    table = _table(text)
    assert table[("conv2d 3x3", "cpu 1t")] == ["65% (0.500)", "70% (0.600)"]
    assert table[("conv2d 3x3", "cpu all threads")] == ["60% (0.300)", "25% (0.100)"]
    assert table[("conv2d 3x3", "gpu")] == ["", "0.8% (0.090)"]
    assert table[("conv2d 1x1", "cpu all threads")] == ["WRONG", ""]


def test_pytest_benchmark_rows_take_the_peaks_of_their_machines_bench_file(tmp_path):
    bench = _bench_file(
        tmp_path,
        "bench.json",
        cpu="Test CPU",
        cores=4,
        sgemm={"1": 100.0, "4": 300.0},
        gpu={"name": "G", "sgemm_gflops": 10000.0, "copy_gbs": 1.0},
        rows=[],
    )
    pytest_json = _pytest_file(
        tmp_path,
        "suite.json",
        [
            # group, backend, threads, device, flops, median seconds
            ("chain N=1", "cpu", 1, "cpu", 5e7, 1e-3),  # 50 GFLOP/s of 100: 50%
            ("chain N=1", "cpu", 4, "cpu", 6e7, 1e-3),  # 60 of 300: 20%, "all threads"
            ("chain N=1", "cpu", 2, "cpu", 8e7, 1e-3),  # 80 of ~200 (1t x 2): ~40%
            ("chain N=1", "gpu", None, "cuda", 1e8, 1e-4),  # 1000 of 10000: 10%
            ("chain N=1", "torch-eager", None, "cuda", 5e7, 1e-4),  # 500 of 10000: 5.0%
        ],
    )
    text = report.merged_markdown(report.merge([f"m={pytest_json}", f"m={bench}"]))
    table = _table(text)
    assert table[("chain N=1 [pytest]", "cpu 1t")] == ["50% (1.000)"]
    assert table[("chain N=1 [pytest]", "cpu all threads")] == ["20% (1.000)"]
    assert table[("chain N=1 [pytest]", "cpu 2t")] == ["~40% (1.000)"]
    assert table[("chain N=1 [pytest]", "gpu")] == ["10% (0.100)"]
    assert table[("chain N=1 [pytest]", "torch-eager (cuda)")] == ["5.0% (0.100)"]


def test_estimates_are_capped_by_the_next_measured_thread_count():
    m = report.Machine("m")
    m.peaks = {"1": 100.0, "4": 300.0, "8": 320.0}
    assert m.peak(4) == (300.0, False)
    assert m.peak(3) == (300.0, True)  # 3 x 100 = 300, the 4-thread peak is 300
    assert m.peak(6) == (320.0, True)  # 6/4 x 300 = 450, capped by the 8-thread 320
    assert m.peak(16) == (640.0, True)  # 16/8 x 320, nothing above
    assert m.peak("gpu") == (None, False)


def test_peak_option_supplies_a_machine_without_a_bench_file(tmp_path):
    suite = _pytest_file(tmp_path, "suite.json", [("conv", "cpu", 1, "cpu", 5e7, 1e-3)])
    plain = report.merged_markdown(report.merge([f"a={suite}"]))
    assert _table(plain)[("conv [pytest]", "cpu 1t")] == ["(1.000)"]  # no peak: the time alone
    given = report.merged_markdown(report.merge([f"a={suite}"], ["a=1t:125,gpu:9000"]))
    assert _table(given)[("conv [pytest]", "cpu 1t")] == ["40% (1.000)"]
    assert "sgemm peaks 125 (1t), 9000 (gpu) GFLOP/s" in given


@pytest.mark.parametrize(
    "spec, message",
    [
        ("a=1t:fast", "expected LABEL=1t:GFLOPS"),
        ("a=", "expected LABEL=1t:GFLOPS"),
        ("a=x:100", "expected LABEL=1t:GFLOPS"),
        ("b=1t:100", "no input has the label 'b'"),
    ],
)
def test_bad_peak_options_are_errors_naming_them(tmp_path, spec, message):
    suite = _pytest_file(tmp_path, "suite.json", [("conv", "cpu", 1, "cpu", 5e7, 1e-3)])
    with pytest.raises(SystemExit, match=message):
        report.merge([f"a={suite}"], [spec])


def test_suite_rows_never_merge_with_bench_rows_and_repeated_runs_need_labels(tmp_path):
    bench = _bench_file(
        tmp_path,
        "b.json",
        cpu="C",
        cores=1,
        sgemm={"1": 100.0},
        rows=[_row("conv2d", "3x3", "cpu 1t", 1, 0.5, 65.0)],
    )
    suite = _pytest_file(tmp_path, "s.json", [("conv2d 3x3", "cpu", 1, "cpu", 5e7, 1e-3)])
    table = _table(report.merged_markdown(report.merge([f"m={bench}", f"m={suite}"])))
    assert table[("conv2d 3x3", "cpu 1t")] == ["65% (0.500)"]  # r2n bench: one-call op
    assert table[("conv2d 3x3 [pytest]", "cpu 1t")] == ["50% (1.000)"]  # suite: prepared
    with pytest.raises(SystemExit, match=r"both have 'cpu 1t' of 'conv2d 3x3'.*different labels"):
        report.merge([f"m={bench}", f"m={bench}"])
    two = report.merge([f"run1={bench}", f"run2={bench}"])
    assert [m.label for m in two] == ["run1", "run2"]


def test_labels_default_to_the_machine(tmp_path):
    bench = _bench_file(tmp_path, "b.json", cpu="CPU A", cores=8, sgemm={"1": 1.0}, rows=[])
    suite = _pytest_file(tmp_path, "s.json", [], cpu="CPU B", cores=2)
    labels = [m.label for m in report.merge([bench, suite])]
    assert labels == ["CPU A x8", "CPU B x2"]


def test_command_line_merges_the_saved_runs_of_two_machines(capsys):
    results = os.path.join(ROOT, "benchmarks", "results")
    report.main(
        [
            "--merge",
            f"epyc={results}/2026-11-25-r2n-bench-2core-epyc.json",
            f"h100={results}/2026-11-25-r2n-bench-h100-v2.json",
            "--rows",
            "gpu,torch eager",
        ]
    )
    table = _table(capsys.readouterr().out)
    epyc, h100 = table[("conv2d 3x3 26->26 N=1 56x56", "torch eager all threads")]
    assert epyc == "45% (0.397)" and h100 == "16% (0.219)"  # 2 and 16 threads
    assert table[("conv2d 3x3 26->26 N=1 56x56", "gpu")] == ["", "0.8% (0.097)"]
    report.main(["--merge", f"{results}/2026-11-25-r2n-bench-h100-v2.json", "--only", "res2net50"])
    table = _table(capsys.readouterr().out)
    assert table and all(benchmark.startswith("res2net50_26w_4s") for benchmark, _ in table)


def test_an_unknown_file_format_is_an_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"info": {}, "rows": []}))
    with pytest.raises(SystemExit, match="neither an r2n bench nor a pytest-benchmark"):
        report.merge([str(path)])
