"""Whole networks on four CPU engines: r2n, PyTorch eager, ONNX Runtime, OpenVINO.

    # the full run (28 min on 2 busy cores): 3 models x batch 1, 8 x 1 and all threads
    python benchmarks/bench_engines.py --json benchmarks/results/$(date +%F)-engines-<machine>.json
    # one model
    python benchmarks/bench_engines.py --models res2net50_26w_4s --json FILE.json
    # the CI smoke test (seconds): res2net50_26w_4s with one block per stage,
    # 64x64 images, batch 1, 1 thread, one round, 3 timed calls
    python benchmarks/bench_engines.py --quick
    # the README's tables from a saved run
    python benchmarks/report.py FILE.json

What it does, per model:

1. **Prepare** (a process of its own): the weights are
   ``r2n.models.random_state_dict`` draws (seed 0, deterministic, nothing
   downloaded); timm's model of the same name holds them. It computes the
   truth, timm's logits in float64 on fixed random images, counts the FLOPs
   (every ``nn.Conv2d`` and ``nn.Linear`` of timm's model, multiply-adds x 2,
   with forward hooks) and exports the ONNX file (``r2n._bench.engines``:
   ``torch.onnx.export``, opset 17, static shapes), all into a cache
   directory (``--cache``; default ``$R2N_BENCH_CACHE`` or
   ``~/.cache/r2n/bench``; never the repository).
2. **Measure**: every (engine, model, batch, threads) cell runs in a process
   of its own, so that no engine's threads, allocator or JIT state is seen
   by another. Threads are fixed: ``r2n.set_num_threads``,
   ``torch.set_num_threads``, ONNX Runtime's ``intra_op_num_threads``
   (``inter_op_num_threads = 1``), OpenVINO's ``INFERENCE_NUM_THREADS`` (with
   ``PERFORMANCE_HINT=LATENCY``, ``INFERENCE_PRECISION_HINT=f32``); nothing
   else is tuned. The process first checks its float32 logits against the
   float64 truth (relative error <= 1e-4 and the same top-1 class for every
   image); a cell that disagrees is reported ``WRONG`` and not timed. Then
   ``--warmup`` untimed calls, then at least ``--min-reps`` timed calls and
   more while the total is under ``--min-time`` seconds; the cell's time is
   the median. Each process also measures how busy other processes kept the
   CPUs while it timed (``r2n._bench.machine.OtherLoad``), and the CPU time
   of each call (``time.process_time``, all threads of the process): in a
   1-thread cell that is the call's work without the time other processes
   held the core, the figure to compare on a busy machine (on a quiet one it
   is the wall time; with more threads it also counts workers spinning
   between calls, so it is kept but not compared).
3. **Rounds**: ``--rounds`` passes over every cell, the engines in one order
   in even rounds and reversed in odd ones; a cell's figure is its best
   median over the rounds (the least disturbed one on a shared machine).
4. **Report**: the machine (CPU model, cores, SIMD flags), versions, this
   machine's measured float32 FMA peak of one core (``r2n._bench.fma``, the
   ``benchmarks/fma_peak.py`` measurement), per cell every engine's time,
   GFLOP/s and % of the FMA peak at its thread count (peak x threads), r2n vs
   the faster of ONNX Runtime and OpenVINO and vs PyTorch; ``--json`` writes
   it all (every timed call of every round), and the tables print as
   Markdown (:func:`markdown`, also ``benchmarks/report.py FILE.json``).

Engines that are not installed are skipped with the reason in the header
(onnxruntime, openvino and onnx are the ``bench`` extra:
``pip install -e '.[bench]'``).

In ``python -m pytest`` this file runs :func:`test_quick_run_checks_every_engine`,
the ``--quick`` run, as a smoke test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # r2n from this checkout when run as a script

from r2n._bench import engines, machine  # noqa: E402

MODELS = ("res2net50_26w_4s", "res2net50d", "tresnet_m")
ENGINE_ORDER = ("r2n", "torch") + engines.ENGINES
TOLERANCE = 1e-4  # whole networks, float32 against float64 (tests/helpers.py)
#: Issue 13's target: r2n this many times as fast as the faster of ONNX
#: Runtime and OpenVINO in every cell.
TARGET = 1.25
#: The --quick run: one block per stage, small images.
QUICK = dict(models=["res2net50_26w_4s"], params={"layers": [1, 1, 1, 1]}, hw=64)
#: SIMD flags worth recording from /proc/cpuinfo.
FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
)


# --------------------------------------------------------------------------- #
# Machine
# --------------------------------------------------------------------------- #


def machine_info() -> dict:
    """CPU model, core count, SIMD flags, caches, load average, Python."""
    info = machine.machine_info()
    info.pop("numba", None)  # in "versions"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    info["simd_flags"] = [f for f in FLAGS if f in flags]
    info["platform"] = platform.platform()
    return info


def loadavg() -> list[float] | None:
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return None


def engine_missing(engine: str) -> str | None:
    """Why an engine cannot run here, or None."""
    import importlib.util

    if engine == "r2n":
        if importlib.util.find_spec("numba") is None:
            return "numba is not installed (r2n's cpu backend: pip install -e '.[cpu]')"
        return None
    if engine == "torch":
        for name in ("torch", "timm"):
            if importlib.util.find_spec(name) is None:
                return f"{name} is not installed"
        return None
    return engines.missing(engine)


# --------------------------------------------------------------------------- #
# Worker processes
# --------------------------------------------------------------------------- #


def _paths(cache: str, model: str, batch: int, hw: int, params: dict | None) -> dict:
    """Cache files of one (model, batch, size): inputs, truth, facts."""
    tag = "-".join(f"{k}{v}" for k, v in sorted((params or {}).items()))
    tag = "".join(c if c.isalnum() else "_" for c in tag)
    stem = os.path.join(cache, f"{model}{'-' + tag if tag else ''}-n{batch}-{hw}px")
    return {"x": stem + "-x.npy", "truth": stem + "-truth64.npy", "facts": stem + ".json"}


def prepare(spec: dict) -> dict:
    """The preparation worker: inputs, float64 truth, FLOPs, ONNX file.

    spec: model, batch, hw, params, seed, cache, onnx (export or not).
    Writes the cache files and returns the facts (also saved as JSON)."""
    import torch

    paths = _paths(spec["cache"], spec["model"], spec["batch"], spec["hw"], spec["params"])
    os.makedirs(spec["cache"], exist_ok=True)
    state = engines.random_weights(spec["model"], params=spec["params"], seed=spec["seed"])
    rng = np.random.default_rng(spec["seed"] + 1)
    x = rng.standard_normal((spec["batch"], 3, spec["hw"], spec["hw"])).astype(np.float32)
    net = engines.timm_model(spec["model"], state, params=spec["params"])
    flops = []

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.weight.shape  # (C_out, C_in / groups, kH, kW)
            flops.append(2 * output.numel() * k[1] * k[2] * k[3])
        else:  # nn.Linear
            flops.append(2 * output.numel() * module.in_features)

    hooks = [
        m.register_forward_hook(count)
        for m in net.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        truth = net.double()(torch.from_numpy(x).double()).numpy()
    for h in hooks:
        h.remove()
    np.save(paths["x"], x)
    np.save(paths["truth"], truth)
    facts = {
        "model": spec["model"],
        "batch": spec["batch"],
        "hw": spec["hw"],
        "params": spec["params"],
        "flops": int(sum(flops)),
        "r2n_algorithm_flops": _r2n_algorithm_flops(spec, state, x),
        "weights_digest": engines.weights_digest(state),
        "onnx": None,
    }
    if spec["onnx"]:
        path, info = engines.cached_onnx(
            spec["model"],
            state,
            spec["batch"],
            spec["hw"],
            params=spec["params"],
            directory=spec["cache"],
        )
        facts["onnx"] = {"file": os.path.basename(path), **info}
        facts["onnx"]["path"] = path
    with open(paths["facts"], "w") as f:
        json.dump(facts, f, indent=1)
    return facts


def _runner(spec: dict, state):
    """fn(x) -> logits of spec["engine"] at spec["threads"] threads."""
    engine, threads = spec["engine"], spec["threads"]
    if engine == "r2n":
        import r2n
        import r2n.models

        r2n.set_num_threads(threads)
        model = r2n.models.create(
            spec["model"], state, backend="cpu", _params=_tuple_params(spec["params"])
        )
        return model
    if engine == "torch":
        import torch

        torch.set_num_threads(threads)
        net = engines.timm_model(spec["model"], state, params=spec["params"])

        def run(x):
            with torch.no_grad():
                return net(torch.from_numpy(x)).numpy()

        return run
    return engines.RUNNERS[engine](spec["onnx_path"], threads)


def _r2n_algorithm_flops(spec: dict, state, x) -> int | None:
    """The multiply-adds x 2 of the algorithms r2n's cpu model runs on x:
    fewer than the definition's where its Winograd rules pick F(2x2) or
    F(4x4) (r2n._bench.profile.count_flops). None without Numba."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return None
    import r2n.models
    from r2n._bench.profile import count_flops

    model = r2n.models.create(
        spec["model"], state, backend="cpu", _params=_tuple_params(spec["params"])
    )
    return count_flops(model, x)["algorithm_flops"]


def _tuple_params(params):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in (params or {}).items()}


def measure(spec: dict) -> dict:
    """The measuring worker: one engine on one cell; returns its result."""
    from r2n._bench import timing

    paths = _paths(spec["cache"], spec["model"], spec["batch"], spec["hw"], spec["params"])
    x = np.load(paths["x"], allow_pickle=False)
    truth = np.load(paths["truth"], allow_pickle=False)
    result = {"status": None, "engine": spec["engine"], "round": spec["round"]}
    state = engines.random_weights(spec["model"], params=spec["params"], seed=spec["seed"])
    if engines.weights_digest(state) != spec["weights_digest"]:
        result["status"] = "ERROR"
        result["error"] = "the weights differ from the prepared ones"
        return result
    start = time.perf_counter()
    fn = _runner(spec, state)
    result["build_s"] = time.perf_counter() - start
    start = time.perf_counter()
    out = np.asarray(fn(x))
    result["first_call_s"] = time.perf_counter() - start
    result["rel_err"] = timing.rel_err(out, truth)
    result["top1_agrees"] = bool(
        out.shape == truth.shape and (out.argmax(1) == truth.argmax(1)).all()
    )
    if not (result["rel_err"] <= TOLERANCE and result["top1_agrees"]):
        result["status"] = "WRONG"
        return result
    for _ in range(spec["warmup"]):
        fn(x)
    load = machine.OtherLoad()
    load.start()
    times, cpu_times = [], []
    start = time.perf_counter()
    while len(times) < spec["min_reps"] or (
        time.perf_counter() - start < spec["min_time"] and len(times) < spec["max_reps"]
    ):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(x)
        t1, c1 = time.perf_counter(), time.process_time()
        times.append(t1 - t0)
        cpu_times.append(c1 - c0)
    result["other_load"] = load.stop()
    result.update(
        status="ok",
        median_ms=timing.median_ms(times),
        times_ms=[1e3 * t for t in times],
        cpu_median_ms=timing.median_ms(cpu_times),
        cpu_times_ms=[1e3 * t for t in cpu_times],
    )
    return result


def _worker_main(kind: str, spec_path: str, out_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    try:
        result = prepare(spec) if kind == "prepare" else measure(spec)
    except Exception as exc:  # reported in the cell, not a crash of the run
        import traceback

        result = {
            "status": "ERROR",
            "engine": spec.get("engine"),
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-3000:],
        }
    with open(out_path, "w") as f:
        json.dump(result, f, default=_json_default)
    return 0


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def run_worker(kind: str, spec: dict, timeout: float, workdir: str) -> dict:
    """Run one worker in a fresh Python process; its result dict."""
    fd, spec_path = tempfile.mkstemp(suffix=".json", dir=workdir)
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f)
    out_path = spec_path[:-5] + "-out.json"
    cmd = [sys.executable, os.path.abspath(__file__), f"--{kind}", spec_path, out_path]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "TIMEOUT", "engine": spec.get("engine"), "timeout_s": timeout}
    if done.returncode != 0 or not os.path.exists(out_path):
        return {
            "status": "ERROR",
            "engine": spec.get("engine"),
            "error": f"worker exited with {done.returncode}",
            "stderr": done.stderr[-3000:],
        }
    with open(out_path) as f:
        return json.load(f)


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #


def parse_args(argv=None) -> argparse.Namespace:
    all_threads = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), metavar="MODEL")
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8], metavar="N")
    parser.add_argument(
        "--threads", nargs="+", type=int, default=sorted({1, all_threads}), metavar="T"
    )
    parser.add_argument(
        "--engines", nargs="+", default=list(ENGINE_ORDER), choices=ENGINE_ORDER, metavar="E"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hw", type=int, default=224, help="image size")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds timed per cell")
    parser.add_argument("--min-reps", type=int, default=7)
    parser.add_argument("--max-reps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls after the check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per process")
    parser.add_argument("--cache", default=None, help="default: r2n._bench.engines.cache_dir()")
    parser.add_argument("--json", metavar="PATH", help="write every figure here")
    parser.add_argument("--note", default="", help="a sentence stored in the JSON (the load)")
    parser.add_argument("--quick", action="store_true", help="the CI smoke test (seconds)")
    parser.add_argument("--prepare", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    opts.params = None
    if opts.quick:
        opts.models, opts.params, opts.hw = QUICK["models"], QUICK["params"], QUICK["hw"]
        opts.batch, opts.threads, opts.rounds = [1], [1], 1
        opts.min_time, opts.min_reps, opts.warmup = 0.0, 3, 1
    bad = [m for m in opts.models if m not in _known_models()]
    if bad:
        parser.error(f"unknown model(s) {bad}; known: {', '.join(_known_models())}")
    if min(opts.threads) < 1 or min(opts.batch) < 1 or opts.rounds < 1:
        parser.error("--threads, --batch and --rounds must be >= 1")
    return opts


def _known_models():
    from r2n import models

    return models.list_models()


def run(opts: argparse.Namespace) -> dict:
    """Prepare, measure every cell over the rounds, derive; the report dict."""
    cache = opts.cache or engines.cache_dir()
    selected = list(opts.engines)
    skipped = {e: engine_missing(e) for e in selected if engine_missing(e)}
    active = [e for e in ENGINE_ORDER if e in selected and e not in skipped]
    report = {
        "tool": "bench_engines",
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "quick": bool(opts.quick),
        "note": opts.note,
        "machine": machine_info(),
        "versions": {"r2n": _r2n_version(), **engines.versions()},
        "settings": {
            "rounds": opts.rounds,
            "hw": opts.hw,
            "params": opts.params,
            "min_time_s": opts.min_time,
            "min_reps": opts.min_reps,
            "max_reps": opts.max_reps,
            "warmup": opts.warmup,
            "tolerance": TOLERANCE,
            "seed": opts.seed,
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "engines": {e: engines.settings(e, "T") for e in engines.ENGINES},
        },
        "engines": active,
        "skipped": skipped,
        "loadavg_start": loadavg(),
        "fma_peak_gflops": None,
        "cells": [],
    }
    print(f"bench_engines: engines {', '.join(active)}", file=sys.stderr)
    for engine, why in skipped.items():
        print(f"  {engine}: skipped ({why})", file=sys.stderr)
    from r2n._bench import fma

    report["fma_peak_gflops"] = fma.peak_gflops(seconds=0.2, repeats=7)
    cells = [
        {"model": m, "batch": n, "threads": t, "hw": opts.hw, "params": opts.params}
        for m in opts.models
        for n in opts.batch
        for t in opts.threads
    ]
    with tempfile.TemporaryDirectory(prefix="r2n-bench-engines-") as workdir:
        facts = {}
        for m in opts.models:
            for n in opts.batch:
                print(f"prepare {m} N={n}", file=sys.stderr, end=" ", flush=True)
                start = time.perf_counter()
                spec = dict(
                    model=m,
                    batch=n,
                    hw=opts.hw,
                    params=opts.params,
                    seed=opts.seed,
                    cache=cache,
                    onnx=any(e in engines.ENGINES for e in active),
                )
                facts[(m, n)] = run_worker("prepare", spec, opts.timeout, workdir)
                print(f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        for cell in cells:
            f = facts[(cell["model"], cell["batch"])]
            cell["flops"] = f.get("flops")
            cell["r2n_algorithm_flops"] = f.get("r2n_algorithm_flops")
            cell["prepare"] = {k: v for k, v in f.items() if k not in ("model", "batch", "hw")}
            cell["results"] = {e: [] for e in active}
        for r in range(opts.rounds):
            order = active if r % 2 == 0 else active[::-1]
            for cell in cells:
                f = facts[(cell["model"], cell["batch"])]
                for engine in order:
                    label = f"round {r + 1} {cell['model']} N={cell['batch']} {cell['threads']}t"
                    print(f"{label} {engine}", file=sys.stderr, end=" ", flush=True)
                    if f.get("status") == "ERROR":
                        result = {"status": "ERROR", "error": "preparation failed: " + f["error"]}
                    else:
                        spec = dict(
                            engine=engine,
                            round=r,
                            model=cell["model"],
                            batch=cell["batch"],
                            threads=cell["threads"],
                            hw=opts.hw,
                            params=opts.params,
                            seed=opts.seed,
                            cache=cache,
                            weights_digest=f["weights_digest"],
                            onnx_path=(f.get("onnx") or {}).get("path"),
                            min_time=opts.min_time,
                            min_reps=opts.min_reps,
                            max_reps=opts.max_reps,
                            warmup=opts.warmup,
                        )
                        start = time.perf_counter()
                        result = run_worker("measure", spec, opts.timeout, workdir)
                        result["process_s"] = time.perf_counter() - start
                    cell["results"][engine].append(result)
                    ms = result.get("median_ms")
                    text = f"{ms:.1f} ms" if ms else result["status"]
                    print(f"{text} ({result.get('process_s', 0):.0f} s)", file=sys.stderr)
    for cell in cells:
        derive(cell, report["fma_peak_gflops"])
    report["cells"] = cells
    report["loadavg_end"] = loadavg()
    loads = [
        res["other_load"]
        for cell in cells
        for results in cell["results"].values()
        for res in results
        if res.get("other_load") is not None
    ]
    report["other_load"] = {"mean": statistics.fmean(loads), "max": max(loads)} if loads else None
    return report


def _r2n_version():
    import r2n

    return r2n.__version__


def derive(cell: dict, peak: float | None) -> None:
    """Per engine: status, best median over the rounds, GFLOP/s, % of the FMA
    peak at the cell's threads; r2n vs the faster of ONNX Runtime / OpenVINO
    and vs PyTorch (> 1: r2n is faster)."""
    summary = {}
    for engine, results in cell["results"].items():
        ok = [r for r in results if r.get("status") == "ok"]
        bad = [r for r in results if r.get("status") != "ok"]
        entry = {"status": "ok" if ok and not bad else (bad[0]["status"] if bad else "n/a")}
        if ok:
            best = min(r["median_ms"] for r in ok)
            entry.update(ms=best, medians_ms=[r["median_ms"] for r in ok])
            if all("cpu_median_ms" in r for r in ok):
                entry["cpu_ms"] = min(r["cpu_median_ms"] for r in ok)
            entry["rel_err"] = max(r["rel_err"] for r in ok)
            if cell.get("flops"):
                entry["gflops"] = cell["flops"] / best / 1e6
                if peak:
                    entry["pct_peak"] = 100 * entry["gflops"] / (peak * cell["threads"])
        summary[engine] = entry
    cell["summary"] = summary
    ms = {e: s.get("ms") for e, s in summary.items() if s["status"] == "ok"}
    others = [ms[e] for e in engines.ENGINES if ms.get(e)]
    cell["faster_engine"] = None
    cell["r2n_vs_faster_engine"] = cell["r2n_vs_torch"] = None
    if others:
        cell["faster_engine"] = min((ms[e], e) for e in engines.ENGINES if ms.get(e))[1]
    if ms.get("r2n"):
        if others:
            cell["r2n_vs_faster_engine"] = min(others) / ms["r2n"]
        if ms.get("torch"):
            cell["r2n_vs_torch"] = ms["torch"] / ms["r2n"]
    # The same by CPU time per call (1-thread cells: robust to other processes).
    cpu = {e: s.get("cpu_ms") for e, s in summary.items() if s["status"] == "ok"}
    cpu_others = [cpu[e] for e in engines.ENGINES if cpu.get(e)]
    cell["r2n_vs_faster_engine_cpu"] = None
    if cpu.get("r2n") and cpu_others and cell["threads"] == 1:
        cell["r2n_vs_faster_engine_cpu"] = min(cpu_others) / cpu["r2n"]
    cell["target"] = target_needs(cell, ms, peak)


def target_needs(cell: dict, ms: dict, peak: float | None) -> dict | None:
    """What TARGET x the faster engine asks of r2n in this cell.

    ms: engine -> best median ms. Returns None without an engine time, r2n's
    algorithm FLOPs (``cell["r2n_algorithm_flops"]``) or a peak; else a dict:
    ms (the faster engine's / TARGET), gflops (r2n's algorithm FLOPs in that
    time), pct_peak (of the FMA peak x threads: over 100 no schedule of
    r2n's algorithms can meet it), r2n_pct_peak (r2n's own rate on the same
    FLOPs now), met (r2n's time within it)."""
    others = [ms[e] for e in engines.ENGINES if ms.get(e)]
    alg = cell.get("r2n_algorithm_flops")
    if not others or not alg or not peak:
        return None
    need_ms = min(others) / TARGET
    ceiling = peak * cell["threads"]
    out = {"ms": need_ms, "gflops": alg / need_ms / 1e6}
    out["pct_peak"] = 100 * out["gflops"] / ceiling
    out["r2n_pct_peak"] = 100 * alg / ms["r2n"] / 1e6 / ceiling if ms.get("r2n") else None
    out["met"] = bool(ms.get("r2n") and ms["r2n"] <= need_ms)
    return out


# --------------------------------------------------------------------------- #
# Tables
# --------------------------------------------------------------------------- #


def _f(value, spec, suffix=""):
    return "" if value is None else f"{value:{spec}}{suffix}"


def markdown(data: dict) -> str:
    """The README's tables from a report: machine, times, % of the FMA peak."""
    m, v = data["machine"], data["versions"]
    names = [e for e in ENGINE_ORDER if e in data["engines"]]
    versions = ", ".join(
        f"{k} {v[k]}" for k in ("r2n", "numba", "torch", "onnxruntime", "openvino") if v.get(k)
    )
    peak = data.get("fma_peak_gflops")
    out = [
        f"Machine: {m.get('cpu', '?')}, {m.get('cpu_count', '?')} cores "
        f"({', '.join(m.get('simd_flags', [])) or 'no SIMD flags read'}); {versions}; "
        f"run {data['datetime']}{' (--quick)' if data.get('quick') else ''}.",
        f"Measured float32 FMA peak: {_f(peak, '.1f') or 'n/a'} GFLOP/s per core. "
        f"Best median of {data['settings']['rounds']} round(s) per cell, each engine "
        "in its own process.",
    ]
    load = data.get("other_load")
    if load:
        out.append(
            f"Other processes kept {100 * load['mean']:.0f}% of the CPUs busy on average "
            f"while cells were timed (at most {100 * load['max']:.0f}%)."
        )
    if data.get("note"):
        out.append(data["note"])
    for engine, why in data.get("skipped", {}).items():
        out.append(f"{engines.TITLES[engine]}: not run ({why}).")
    head = ["model", "threads", "batch"] + [engines.TITLES[e] + " ms" for e in names]
    head += ["r2n vs the faster engine", "r2n vs PyTorch"]
    out += ["", "| " + " | ".join(head) + " |", "|---|---:|---:|" + "---:|" * (len(head) - 3)]
    for cell in sorted(data["cells"], key=lambda c: (c["model"], c["threads"], c["batch"])):
        row = [cell["model"], str(cell["threads"]), str(cell["batch"])]
        for e in names:
            s = cell["summary"].get(e, {})
            row.append(_f(s.get("ms"), ".1f") if s.get("status") == "ok" else s.get("status"))
        row += [_f(cell["r2n_vs_faster_engine"], ".2f", "x"), _f(cell["r2n_vs_torch"], ".2f", "x")]
        out.append("| " + " | ".join(row) + " |")
    one = [c for c in data["cells"] if c["threads"] == 1 and _has_cpu(c)]
    if one:
        head = ["model", "batch"] + [engines.TITLES[e] + " CPU ms" for e in names]
        head += ["r2n vs the faster engine (CPU time)"]
        out += [
            "",
            "1-thread cells by CPU time per call (process time, best median of the rounds; "
            "% of the FMA peak in brackets): the work without the time other processes "
            "held the core.",
            "",
            "| " + " | ".join(head) + " |",
            "|---|---:|" + "---:|" * (len(head) - 2),
        ]
        for cell in sorted(one, key=lambda c: (c["model"], c["batch"])):
            row = [cell["model"], str(cell["batch"])]
            for e in names:
                s = cell["summary"].get(e, {})
                ok = s.get("status") == "ok"
                text = _f(s.get("cpu_ms"), ".1f") if ok else s.get("status")
                if ok and s.get("cpu_ms") and cell.get("flops") and data.get("fma_peak_gflops"):
                    pct = cell["flops"] / s["cpu_ms"] / 1e6 / data["fma_peak_gflops"]
                    text += f" ({100 * pct:.0f}%)"
                row.append(text)
            row.append(_f(cell.get("r2n_vs_faster_engine_cpu"), ".2f", "x"))
            out.append("| " + " | ".join(row) + " |")
    head = ["model", "threads", "batch", "GFLOP"] + [engines.TITLES[e] for e in names]
    out += [
        "",
        "GFLOP/s and % of the FMA peak (peak x threads) at each cell's best median:",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(names),
    ]
    for cell in sorted(data["cells"], key=lambda c: (c["model"], c["threads"], c["batch"])):
        row = [cell["model"], str(cell["threads"]), str(cell["batch"])]
        row.append(_f(cell["flops"] / 1e9 if cell.get("flops") else None, ".2f"))
        for e in names:
            s = cell["summary"].get(e, {})
            text = _f(s.get("gflops"), ".0f")
            if s.get("pct_peak") is not None:
                text += f" ({s['pct_peak']:.0f}%)"
            row.append(text)
        out.append("| " + " | ".join(row) + " |")
    needs = [c for c in data["cells"] if c.get("target")]
    if needs:
        out += [
            "",
            f"What {TARGET}x the faster engine asks of r2n: its time, and the rate it needs "
            "on the FLOPs of r2n's own algorithms (Winograd where r2n's rules pick it, "
            "transforms not counted), as a share of the FMA peak x threads (over 100%: "
            "unreachable with these algorithms), beside r2n's rate now:",
            "",
            "| model | threads | batch | GFLOP (definition) | GFLOP (r2n's algorithms) "
            f"| {TARGET}x needs ms | needs % of peak | r2n now % of peak | met |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for cell in sorted(needs, key=lambda c: (c["model"], c["threads"], c["batch"])):
            t = cell["target"]
            out.append(
                f"| {cell['model']} | {cell['threads']} | {cell['batch']} | "
                f"{cell['flops'] / 1e9:.2f} | {cell['r2n_algorithm_flops'] / 1e9:.2f} | "
                f"{t['ms']:.1f} | {t['pct_peak']:.0f}% | {_f(t['r2n_pct_peak'], '.0f', '%')} | "
                f"{'yes' if t['met'] else 'no'} |"
            )
    return "\n".join(out)


def _has_cpu(cell) -> bool:
    return any(s.get("cpu_ms") for s in cell["summary"].values())


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.prepare or opts.measure:
        kind = "prepare" if opts.prepare else "measure"
        return _worker_main(kind, *(opts.prepare or opts.measure))
    report = run(opts)
    print(markdown(report))
    if opts.json:
        directory = os.path.dirname(os.path.abspath(opts.json))
        os.makedirs(directory, exist_ok=True)
        with open(opts.json, "w") as f:
            json.dump(report, f, indent=1, default=_json_default)
        print(f"wrote {opts.json}")
    bad = [
        f"{c['model']} N={c['batch']} {c['threads']}t {e}: {s['status']}"
        for c in report["cells"]
        for e, s in c["summary"].items()
        if s["status"] != "ok"
    ]
    for line in bad:
        print(f"not ok: {line}")
    return 1 if bad else 0


# --------------------------------------------------------------------------- #
# The smoke test (python -m pytest)
# --------------------------------------------------------------------------- #


def test_quick_run_checks_every_engine(tmp_path):
    """--quick end to end: every installed engine agrees with timm and is timed."""
    import pytest

    pytest.importorskip("numba")
    pytest.importorskip("timm")
    path = tmp_path / "engines.json"
    argv = ["--quick", "--cache", str(tmp_path / "cache"), "--json", str(path)]
    assert main(argv) == 0
    data = json.loads(path.read_text())
    assert data["tool"] == "bench_engines" and data["fma_peak_gflops"] > 0
    installed = [e for e in ENGINE_ORDER if engine_missing(e) is None]
    assert data["engines"] == installed and set(data["skipped"]) == set(ENGINE_ORDER) - set(
        installed
    )
    (cell,) = data["cells"]
    assert cell["flops"] > 0 and set(cell["results"]) == set(installed)
    for engine in installed:
        (result,) = cell["results"][engine]
        assert result["status"] == "ok", result
        assert result["rel_err"] <= TOLERANCE and result["top1_agrees"]
        assert len(result["times_ms"]) >= 3
        assert result["median_ms"] == float(np.median(result["times_ms"]))
        s = cell["summary"][engine]
        assert s["ms"] == result["median_ms"] and s["pct_peak"] > 0
        assert result["cpu_median_ms"] == float(np.median(result["cpu_times_ms"])) > 0
    if set(engines.ENGINES) & set(installed):
        others = min(cell["summary"][e]["ms"] for e in engines.ENGINES if e in installed)
        assert cell["r2n_vs_faster_engine"] == others / cell["summary"]["r2n"]["ms"]
    assert "| res2net50_26w_4s | 1 | 1 |" in markdown(data)


if __name__ == "__main__":
    sys.exit(main())
