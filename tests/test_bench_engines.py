"""benchmarks/bench_engines.py's arithmetic and tables on made-up results.

The harness itself runs end to end in its own smoke test
(``bench_engines.test_quick_run_checks_every_engine``, collected from
benchmarks/); these check what it derives from the timings: the best median
over rounds, GFLOP/s, % of the FMA peak, r2n vs the faster engine, and that
a cell that failed in any round is not reported as ok.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import bench_engines  # noqa: E402


def _ok(ms):
    return {"status": "ok", "median_ms": ms, "rel_err": 1e-6, "top1_agrees": True}


def _cell(results, threads=2, flops=8e9):
    return {"model": "m", "batch": 1, "threads": threads, "flops": flops, "results": results}


def test_best_median_gflops_peak_and_ratios():
    cell = _cell(
        {
            "r2n": [_ok(50.0), _ok(40.0)],
            "torch": [_ok(80.0), _ok(90.0)],
            "onnxruntime": [_ok(45.0), _ok(44.0)],
            "openvino": [_ok(36.0), _ok(48.0)],
        }
    )
    bench_engines.derive(cell, peak=100.0)
    s = cell["summary"]
    assert s["r2n"]["ms"] == 40.0 and s["r2n"]["medians_ms"] == [50.0, 40.0]
    assert s["r2n"]["gflops"] == pytest.approx(200.0)  # 8 GFLOP in 40 ms
    assert s["r2n"]["pct_peak"] == pytest.approx(100.0)  # peak 100 x 2 threads
    assert s["openvino"]["pct_peak"] == pytest.approx(8e9 / 36e-3 / 1e9 / 2)
    assert cell["faster_engine"] == "openvino"
    assert cell["r2n_vs_faster_engine"] == pytest.approx(36.0 / 40.0)
    assert cell["r2n_vs_torch"] == pytest.approx(80.0 / 40.0)


def test_a_failed_round_is_reported_and_left_out_of_the_ratios():
    wrong = {"status": "WRONG", "rel_err": 0.5, "top1_agrees": False}
    cell = _cell(
        {
            "r2n": [_ok(40.0), _ok(41.0)],
            "onnxruntime": [_ok(30.0), wrong],
            "openvino": [{"status": "TIMEOUT"}, {"status": "TIMEOUT"}],
        },
        threads=1,
    )
    bench_engines.derive(cell, peak=None)
    s = cell["summary"]
    assert s["onnxruntime"]["status"] == "WRONG" and s["onnxruntime"]["ms"] == 30.0
    assert s["openvino"]["status"] == "TIMEOUT" and "ms" not in s["openvino"]
    assert "pct_peak" not in s["r2n"]  # no peak measured
    # ratios use only engines that were ok in every round: none here
    assert cell["r2n_vs_faster_engine"] is None and cell["r2n_vs_torch"] is None
    text = bench_engines.markdown(
        {
            "machine": {"cpu": "X", "cpu_count": 2, "simd_flags": ["avx2"]},
            "versions": {"r2n": "0"},
            "engines": ["r2n", "onnxruntime", "openvino"],
            "skipped": {"torch": "torch is not installed"},
            "settings": {"rounds": 2},
            "datetime": "now",
            "fma_peak_gflops": None,
            "cells": [cell],
        }
    )
    assert "| m | 1 | 1 | 40.0 | WRONG | TIMEOUT |  |  |" in text
    assert "PyTorch eager: not run (torch is not installed)." in text


def test_quick_options_and_bad_arguments():
    opts = bench_engines.parse_args(["--quick"])
    assert opts.models == ["res2net50_26w_4s"] and opts.hw == 64
    assert opts.batch == [1] and opts.threads == [1] and opts.rounds == 1
    assert opts.params == {"layers": [1, 1, 1, 1]}
    with pytest.raises(SystemExit):
        bench_engines.parse_args(["--models", "resnet50"])
    with pytest.raises(SystemExit):
        bench_engines.parse_args(["--threads", "0"])


def test_what_the_target_asks_is_computed_on_r2ns_algorithm_flops():
    cell = _cell(
        {"r2n": [_ok(50.0)], "onnxruntime": [_ok(45.0)], "openvino": [_ok(40.0)]},
        threads=2,
    )
    cell["r2n_algorithm_flops"] = 6e9  # Winograd: fewer than the definition's 8e9
    bench_engines.derive(cell, peak=100.0)
    t = cell["target"]
    assert t["ms"] == pytest.approx(40.0 / bench_engines.TARGET)
    assert t["gflops"] == pytest.approx(6e9 / (32e-3) / 1e9)  # 187.5 GFLOP/s in 32 ms
    assert t["pct_peak"] == pytest.approx(187.5 / 200 * 100)
    assert t["r2n_pct_peak"] == pytest.approx(6e9 / 50e-3 / 1e9 / 200 * 100)
    assert t["met"] is False
    cell["results"]["r2n"] = [_ok(31.0)]
    bench_engines.derive(cell, peak=100.0)
    assert cell["target"]["met"] is True
    text = bench_engines.markdown(
        {
            "machine": {}, "versions": {}, "engines": ["r2n", "onnxruntime", "openvino"],
            "datetime": "now", "settings": {"rounds": 1}, "fma_peak_gflops": 100.0,
            "cells": [cell],
        }
    )  # fmt: skip
    assert "| m | 2 | 1 | 8.00 | 6.00 | 32.0 | 94% | 97% | yes |" in text
    # No algorithm FLOPs (a run without Numba, or an older JSON): no target row.
    del cell["r2n_algorithm_flops"]
    bench_engines.derive(cell, peak=100.0)
    assert cell["target"] is None
