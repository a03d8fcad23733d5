"""r2n and PyTorch side by side, on a quiet machine and next to a busy core.

``python benchmarks/under_load.py [--rounds 8] [--nice -19] [--out FILE.json]
[--workers r2n torch r2n-main=r2n,GOMP_SPINCOUNT=300000 ...]``;
``python benchmarks/under_load.py --report FILE.json`` prints a saved run as
the Markdown table of NOTES.md.

What a user sees when another process keeps one core busy: each library runs
at ``--threads`` threads (default 2) in its own worker process with its
default OpenMP settings (whatever the environment gives: nothing is set here),
as a program using only that library would. ``--workers`` adds workers with
variables of their own, e.g. libgomp's default spin for r2n (what r2n did
before it set ``GOMP_SPINCOUNT``) or ``OMP_WAIT_POLICY=PASSIVE``. The
workers time the same cases:

* ``r2n bench``'s conv2d shapes (``r2n._bench.suite``: 3x3 26->26, 1x1
  256->104 and 3x3 groups=8 64->64, batch 1, 56x56 / 28x28), r2n's
  ``cpu`` backend against ``torch.nn.functional.conv2d``;
* the whole res2net50_26w_4s forward (batch 1, 224x224): ``r2n.models``
  (prepared, float32) against timm in PyTorch eager, same random weights.

The load is a Python busy loop pinned to the last CPU (``--busy-cpu``); the
workers are not pinned. Each round times every case in four blocks, quiet
r2n, quiet torch, busy r2n, busy torch, in an order that alternates from
round to round (r2n first, then torch first). A block is at least
``--min-reps`` calls and ``--min-time`` seconds; its median is the round's
figure. The report gives, per case, worker and load, the median over the
rounds and the spread (25th-75th percentile of the round medians), the
slowdown busy / quiet of the medians, and the mean of all timed calls with
its slowdown (a median hides calls that stall for a time slice when fewer
than half of them do; the mean is what a user waits on average).

The machine this runs on may be shared: other load adds noise on top of the
controlled busy core, which is why the rounds alternate and the report shows
medians and spreads, not single runs. ``--nice -19`` (root) runs the workers
and the busy loop ahead of other processes: the busy loop stays the load
under test, other work mostly waits. This script is a benchmark, not a test:
the suite never times anything.
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
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
#: Environment variables that decide how OpenMP / Numba threads wait and share work.
THREAD_ENV = (
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "OMP_SCHEDULE",
    "NUMBA_THREADING_LAYER",
    "NUMBA_NUM_THREADS",
    "OMP_NUM_THREADS",
)
CASE_NAMES = ("conv 3x3 26->26", "conv 1x1 256->104", "conv 3x3 g8 64->64", "res2net50 N=1")


# --------------------------------------------------------------------------- #
# Worker: one library, its cases, timed on request
# --------------------------------------------------------------------------- #


def _cases():
    """[(name, BenchCase)] in CASE_NAMES order: r2n bench's conv shapes
    (56x56 maps) and the batch-1 224x224 network."""
    from r2n._bench import network, suite

    convs = [c for c in suite.bench_cases(quick=False) if c.op == "conv2d"]
    assert len(convs) == 3, [c.label for c in convs]
    return list(zip(CASE_NAMES, [*convs, network.network_case(1, 224)], strict=True))


def _runners(lib: str, threads: int) -> dict:
    """name -> () -> result, for ``lib`` ("r2n" or "torch") at ``threads``,
    each checked once against the float64 reference."""
    rng = np.random.default_rng(0)
    out = {}
    if lib == "torch":
        import torch  # before anything reads the environment for it

        torch.set_num_threads(threads)
    else:
        import r2n

        r2n.set_num_threads(threads)
    for name, case in _cases():
        args, kwargs = case.make(rng)
        truth = np.asarray(case.reference(args, kwargs))
        args32 = _float32(args)
        if lib == "torch":
            fn = case.torch_runner(args32, kwargs, "eager", "cpu")
            got = fn().numpy()
        else:
            fn = case.r2n_runner(args32, kwargs, "cpu")
            got = np.asarray(fn())
        err = np.linalg.norm(got - truth) / np.linalg.norm(truth)
        if not err <= case.tol:
            raise RuntimeError(f"{lib} {name}: relative error {err:.2e} > {case.tol}")
        out[name] = fn
    return out


def _float32(args):
    from r2n._bench.timing import convert

    return convert(args, lambda a: np.ascontiguousarray(a, np.float32))


def worker(lib: str, threads: int) -> None:
    """Serve timing requests on stdin/stdout, one JSON object a line:
    {"case": name, "min_reps": k, "min_time": s} -> {"times": [seconds, ...]}."""
    runners = _runners(lib, threads)
    info = {"ready": True, "pid": os.getpid(), "torch_loaded": "torch" in sys.modules}
    if lib == "r2n":
        import numba

        info["threading_layer"] = numba.threading_layer()
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        fn = runners[req["case"]]
        fn()  # warm: caches, page faults, the workers' wake-up after a pause
        times = []
        start = time.perf_counter()
        while len(times) < req["min_reps"] or time.perf_counter() - start < req["min_time"]:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        print(json.dumps({"times": times}), flush=True)


# --------------------------------------------------------------------------- #
# Driver
# --------------------------------------------------------------------------- #


class Worker:
    """A worker process: ``label`` runs ``lib`` with ``env`` on top of the
    driver's environment (e.g. ``r2n-gomp-default=r2n,GOMP_SPINCOUNT=300000``)."""

    def __init__(self, spec: str, threads: int, env: dict, nice: int):
        self.label, _, rest = spec.partition("=")
        self.lib, *assignments = (rest or self.label).split(",")
        self.env_changes = dict(a.split("=", 1) for a in assignments)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", self.lib, "--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**env, **self.env_changes},
            cwd=ROOT,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
        self.info = json.loads(self.proc.stdout.readline())

    def time(self, case: str, min_reps: int, min_time: float) -> list:
        self.proc.stdin.write(json.dumps(dict(case=case, min_reps=min_reps, min_time=min_time)))
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["times"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class BusyCore:
    """A Python busy loop pinned to one CPU, while the context is open."""

    def __init__(self, cpu: int, nice: int):
        self.cpu, self.nice = cpu, nice

    def __enter__(self):
        code = f"import os; os.sched_setaffinity(0, {{{self.cpu}}})\nwhile True: pass"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None,
        )
        time.sleep(0.2)  # let it start and settle on its CPU
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def _quartiles(xs):
    q = np.percentile(xs, [25, 50, 75])
    return dict(p25=float(q[0]), median=float(q[1]), p75=float(q[2]))


def run(args) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for assignment in args.env:
        key, _, value = assignment.partition("=")
        env[key] = value
    workers = [Worker(spec, args.threads, env, args.nice) for spec in args.workers]
    labels = [w.label for w in workers]
    rounds = {
        f"{label}|{load}|{case}": []
        for label in labels
        for load in ("quiet", "busy")
        for case in args.cases
    }
    samples = {key: [] for key in rounds}
    try:
        for r in range(args.rounds):
            k = r % len(workers)
            order = workers[k:] + workers[:k]  # each worker goes first in turn
            for load in ("quiet", "busy"):
                ctx = BusyCore(args.busy_cpu, args.nice) if load == "busy" else _Nothing()
                with ctx:
                    for w in order:
                        for case in args.cases:
                            times = w.time(case, args.min_reps, args.min_time)
                            key = f"{w.label}|{load}|{case}"
                            rounds[key].append(statistics.median(times))
                            samples[key].extend(times)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for w in workers:
            w.close()
    summary = {}
    for case in args.cases:
        row = {}
        for label in labels:
            quiet = _quartiles(rounds[f"{label}|quiet|{case}"])
            busy = _quartiles(rounds[f"{label}|busy|{case}"])
            quiet_mean = statistics.fmean(samples[f"{label}|quiet|{case}"])
            busy_mean = statistics.fmean(samples[f"{label}|busy|{case}"])
            row[label] = dict(
                quiet_ms={k: 1e3 * v for k, v in quiet.items()},
                busy_ms={k: 1e3 * v for k, v in busy.items()},
                slowdown=busy["median"] / quiet["median"],
                quiet_mean_ms=1e3 * quiet_mean,
                busy_mean_ms=1e3 * busy_mean,
                slowdown_of_means=busy_mean / quiet_mean,
            )
        summary[case] = row
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=dict(
            cpu=platform.processor() or platform.machine(),
            cpus=os.cpu_count(),
            kernel=platform.release(),
            loadavg_at_end=os.getloadavg(),
        ),
        threads=args.threads,
        busy_cpu=args.busy_cpu,
        env={k: env.get(k) for k in THREAD_ENV},
        niceness=os.nice(0) + args.nice,  # of the workers and the busy loop
        workers={w.label: dict(lib=w.lib, env=w.env_changes, **w.info) for w in workers},
        rounds=args.rounds,
        min_reps=args.min_reps,
        min_time=args.min_time,
        round_medians_s=rounds,
        summary=summary,
    )


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def print_table(result: dict) -> None:
    head = f"{'case':20} {'worker':16} {'quiet ms (p25-p75)':>26} {'busy ms (p25-p75)':>28}"
    print(head + " slowdown  mean quiet / busy ms  slowdown")
    for case, row in result["summary"].items():
        for lib, s in row.items():
            q, b = s["quiet_ms"], s["busy_ms"]
            print(
                f"{case:20} {lib:16} {q['median']:9.3f} ({q['p25']:7.3f}-{q['p75']:7.3f})"
                f" {b['median']:9.3f} ({b['p25']:8.3f}-{b['p75']:8.3f}) {s['slowdown']:7.2f}x"
                f" {s['quiet_mean_ms']:9.3f} / {s['busy_mean_ms']:9.3f}"
                f" {s['slowdown_of_means']:7.2f}x"
            )


def markdown_table(result: dict) -> str:
    """The summary as a Markdown table (for NOTES.md), medians and means."""
    lines = [
        "| case | worker | quiet ms median (p25-p75) | busy ms median (p25-p75) "
        "| slowdown | quiet / busy ms mean | slowdown of means |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for case, row in result["summary"].items():
        for label, s in row.items():
            q, b = s["quiet_ms"], s["busy_ms"]
            means = "| - | - |"  # runs saved before the means were recorded
            if "quiet_mean_ms" in s:
                means = (
                    f"| {s['quiet_mean_ms']:.3f} / {s['busy_mean_ms']:.3f} "
                    f"| {s['slowdown_of_means']:.2f}x |"
                )
            lines.append(
                f"| {case} | {label} | {q['median']:.3f} ({q['p25']:.3f}-{q['p75']:.3f}) "
                f"| {b['median']:.3f} ({b['p25']:.3f}-{b['p75']:.3f}) | {s['slowdown']:.2f}x "
                + means
            )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=("r2n", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--min-reps", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.3)
    p.add_argument("--busy-cpu", type=int, default=(os.cpu_count() or 1) - 1)
    p.add_argument(
        "--workers",
        nargs="+",
        default=["r2n", "torch"],
        help="LABEL[=LIB[,KEY=VALUE...]]: a worker per spec (LIB: r2n or torch)",
    )
    p.add_argument("--nice", type=int, default=0, help="niceness of the workers and the busy loop")
    p.add_argument("--cases", nargs="+", default=list(CASE_NAMES), choices=CASE_NAMES)
    p.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for every worker")
    p.add_argument("--out", help="write the result JSON here")
    p.add_argument("--report", metavar="JSON", help="print a saved run as Markdown")
    args = p.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            print(markdown_table(json.load(f)))
        return
    if args.worker:
        worker(args.worker, args.threads)
        return
    result = run(args)
    print_table(result)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
