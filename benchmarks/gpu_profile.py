"""Where r2n's GPU time goes: host time, device time and launch gaps, against PyTorch.

Run on a machine with a CUDA GPU (CuPy and PyTorch installed), from the repo root::

    python benchmarks/gpu_profile.py [--batch 1 32] [--json PATH] [--profile]

For each ``r2n bench`` shape (conv, chain, bottle2neck, the whole res2net50_26w_4s)
at each batch, and for r2n's gpu backend and PyTorch eager on CUDA (cuDNN, TF32 off):

* ``host ms``: median host time of one call, launches queued but not waited for
  (``cupyx.profiler.benchmark``'s CPU time);
* ``stream ms``: median time between CUDA events around the call on the stream,
  so it includes the gaps where the GPU waits for the host to launch;
* ``graph ms``: the same call captured once in a CUDA graph and replayed: the
  device's own time with (almost) no launch gaps, the floor of that code.

The whole network also gets an ``r2n graph`` row: r2n.gpu.capture's replay
(input copy, one graph launch, output copy) timed like the others.

``stream`` close to ``host`` and far above ``graph`` means the call is bound by
the host (Python, argument checks, launch latency), not by its kernels.
``--profile`` adds cProfile's top functions of r2n's batch-1 calls.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys

import numpy as np


def _median_ms(values) -> float:
    return float(np.median(np.asarray(values))) * 1e3


def host_and_stream_ms(fn, n_repeat: int) -> tuple[float, float]:
    """Median host and stream (event) time of ``fn()`` in ms, after a warm-up."""
    from cupyx.profiler import benchmark

    result = benchmark(fn, n_repeat=n_repeat, n_warmup=10)
    return _median_ms(result.cpu_times), _median_ms(result.gpu_times[0])


def cupy_graph_ms(fn, reps: int = 50) -> float | None:
    """Median replay time (ms) of ``fn`` captured in a CUDA graph; None if capture fails."""
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    try:
        with stream:
            fn()  # warm the memory pool with this call's sizes
            stream.synchronize()
            stream.begin_capture()
            try:
                fn()
            finally:
                graph = stream.end_capture()
            graph.launch(stream)
            stream.synchronize()
    except Exception as exc:  # capture is best effort: report, don't fail the run
        print(f"  (graph capture failed: {type(exc).__name__}: {exc})")
        return None
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(reps):
        start.record(stream)
        graph.launch(stream)
        end.record(stream)
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
    return _median_ms(times)


def torch_graph_ms(fn, reps: int = 50) -> float | None:
    """Median replay time (ms) of a PyTorch callable captured in a CUDA graph."""
    import torch

    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except Exception as exc:
        print(f"  (torch graph capture failed: {type(exc).__name__}: {exc})")
        return None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return _median_ms(times)


def bench_cases(batches):
    from r2n._bench import cases, network

    out = []
    for n in batches:
        out += [
            cases.conv_case(n, 26, 26, 3, 56),
            cases.conv_case(n, 256, 104, 1, 56),
            cases.conv_case(n, 104, 104, 3, 14),
            cases.chain_case(n, 26, 4, 56, "normal", 1, "layer1.1"),
            cases.chain_case(n, 52, 4, 56, "stage", 2, "layer2.0"),
            cases.chain_case(n, 104, 4, 14, "normal", 1, "layer3.1"),
            cases.block_case(n, 256, 64, 26, 4, 56, "normal", 1, "layer1.1"),
            cases.block_case(n, 256, 128, 52, 4, 56, "stage", 2, "layer2.0"),
            cases.block_case(n, 1024, 256, 104, 4, 14, "normal", 1, "layer3.1"),
            network.network_case(n, 224),
        ]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--profile", action="store_true", help="cProfile r2n's batch-1 calls")
    args = parser.parse_args(argv)

    import cupy
    import torch

    import r2n.gpu
    from r2n._bench import timing

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'op':<17} {'shape':<44} {'row':<10} {'host ms':>8} {'stream ms':>9} {'graph ms':>8}")
    for case in bench_cases(args.batch):
        fargs, kwargs = case.make(rng)
        args32 = timing.convert(fargs, lambda a: np.ascontiguousarray(a, np.float32))
        runners = {
            "r2n gpu": (case.r2n_runner(timing.convert(args32, cupy.asarray), kwargs, "gpu"), 0),
            "torch": (case.torch_runner(args32, kwargs, "eager", "cuda"), 1),
        }
        if case.op == "res2net50_26w_4s":  # the whole forward replayed as one CUDA graph
            x_gpu = cupy.asarray(args32[0])
            forward = r2n.gpu.capture(case._model("gpu", "float32"), x_gpu)
            runners["r2n graph"] = (lambda forward=forward, x=x_gpu: forward(x), 0)
        for row, (fn, is_torch) in runners.items():
            try:
                host, stream = host_and_stream_ms(fn, args.repeat)
                if row == "r2n graph":  # already one graph: nothing to capture again
                    graph = None
                else:
                    graph = torch_graph_ms(fn) if is_torch else cupy_graph_ms(fn)
            except Exception as exc:
                print(f"{case.op:<17} {case.label:<44} {row:<10} failed: {exc!r}")
                continue
            g = f"{graph:8.3f}" if graph is not None else "       -"
            print(f"{case.op:<17} {case.label:<44} {row:<10} {host:8.3f} {stream:9.3f} {g}")
            rows.append(
                dict(op=case.op, label=case.label, row=row, host_ms=host, stream_ms=stream,
                     graph_ms=graph, gflop=case.flops / 1e9)
            )  # fmt: skip
        sys.stdout.flush()
        profiled = ("3x3 26->26 N=1", "layer1.1 N=1 256", "N=1 3x")
        if args.profile and case.label.startswith(profiled):
            fn = runners["r2n gpu"][0]
            profiler = cProfile.Profile()
            profiler.enable()
            calls = 20 if case.op == "res2net50_26w_4s" else 200
            for _ in range(calls):
                fn()
            profiler.disable()
            cupy.cuda.get_current_stream().synchronize()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(18)
            print(f"--- cProfile, {calls} calls of r2n {case.op} {case.label} ---")
            print("\n".join(text.getvalue().splitlines()[:40]))
    if args.json:
        info = dict(
            device=torch.cuda.get_device_name(),
            torch=torch.__version__,
            cupy=cupy.__version__,
            driver=cupy.cuda.runtime.driverGetVersion(),
        )
        with open(args.json, "w") as f:
            json.dump(dict(info=info, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
