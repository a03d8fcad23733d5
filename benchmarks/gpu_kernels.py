"""Which kernels a GPU forward spends its time in, and how long the forward takes.

Run on a machine with a CUDA GPU, CuPy and PyTorch, from any r2n checkout::

    python benchmarks/gpu_kernels.py [--model res2net50_26w_4s] [--batch 1 32]
                                     [--precision fp32 tf32] [--top 20] [--json PATH]
                                     [--tc-im2col step5 multistage]

For each batch and precision: r2n's model (``r2n.models.create`` with the
model's deterministic random weights, so two checkouts get the same weights),
warmed up, then

* ``forward ms``: the median of CUDA-event times around single forwards (the
  stream's time, launch gaps included), inputs rotated over several sets;
* the kernels of a few profiled forwards (CUPTI through ``torch.profiler``,
  read back from its Chrome trace so the script does not depend on the
  profiler's Python event API): per kernel name, launches and device
  microseconds per forward, and its share of the summed kernel time.

It imports whatever ``r2n`` is first on ``sys.path``, so the same script
times two checkouts side by side (``PYTHONPATH=old/ python ...`` then
``PYTHONPATH=new/ ...``): a regression between them shows as the kernels
whose time moved. Checkouts older than ``precision=`` are run in fp32 only.

``--tc-im2col step5 multistage`` runs each tf32 / bf16 case once per value of
r2n.gpu.conv.TC_IM2COL_MULTISTAGE (the im2col convs without an add on load on
step 5, or on kernels/conv_im2col_tensor_core.cu), labelled ``<label>
<value>``, so one command times both kernels in the same run; fp32 cases run
once (the switch changes no fp32 launch). Checkouts without the switch run
the tf32 / bf16 cases once, as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from collections import defaultdict


def _short(name: str) -> str:
    """A kernel name without ``void``, argument lists and namespaces: the
    template (tile sizes, loader) stays, since it tells the variants apart."""
    name = re.sub(r"^void ", "", name)
    depth, out = 0, []
    for i, ch in enumerate(name):  # drop the trailing (args) of a demangled name
        if ch == "(" and depth == 0 and i > 0:
            break
        depth += ch == "<"
        depth -= ch == ">"
        out.append(ch)
    return "".join(out).replace("r2n_", "")[:110]


def kernel_table(forward, x, reps: int) -> tuple[dict, float]:
    """{kernel: [launches, us]} per forward over ``reps`` profiled forwards,
    and the summed kernel time per forward in ms."""
    import cupy
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            forward(x)
        cupy.cuda.runtime.deviceSynchronize()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    table = defaultdict(lambda: [0, 0.0])
    for ev in trace.get("traceEvents", []):
        if ev.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in ev:
            row = table[_short(ev["name"])]
            row[0] += 1
            row[1] += float(ev["dur"])
    table = {k: [v[0] / reps, v[1] / reps] for k, v in table.items()}
    return table, sum(v[1] for v in table.values()) / 1e3


def forward_ms(forward, inputs, reps: int) -> float:
    """Median CUDA-event time of one forward, inputs rotated."""
    import cupy

    times = []
    for i in range(reps):
        x = inputs[i % len(inputs)]
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        forward(x)
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def plan_runs(precisions, tc_im2col, has_precision: bool, has_switch: bool):
    """The runs of one checkout: (precision, --tc-im2col value or None) each,
    and the notes to print about what it skips (``has_precision``: its
    r2n.models.create takes ``precision=``; ``has_switch``: its r2n.gpu.conv
    has TC_IM2COL_MULTISTAGE). No GPU needed."""
    runs, notes = [], []
    if tc_im2col and not has_switch:
        notes.append("this checkout has no TC_IM2COL_MULTISTAGE; --tc-im2col ignored")
    for precision in precisions:
        if precision != "fp32" and not has_precision:
            notes.append(f"{precision}: this checkout has no precision=; skipped")
            continue
        if precision == "fp32" or not tc_im2col or not has_switch:
            runs.append((precision, None))
        else:
            runs.extend((precision, value) for value in tc_im2col)
    return runs, notes


def build_parser() -> argparse.ArgumentParser:
    """The command line (no GPU needed to parse it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="res2net50_26w_4s")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--precision", nargs="+", default=["fp32"])
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--reps", type=int, default=20, help="timed forwards")
    parser.add_argument("--profiled", type=int, default=3, help="profiled forwards")
    parser.add_argument("--top", type=int, default=20, help="kernels listed")
    parser.add_argument("--label", default=None, help="name of this checkout in the output")
    parser.add_argument("--torch", action="store_true",
                        help="also time timm's model eager, TF32 off and on")  # fmt: skip
    parser.add_argument("--json", metavar="PATH", help="append one JSON line per case")
    parser.add_argument("--tc-im2col", nargs="+", choices=["step5", "multistage"], default=None,
                        help="tf32 / bf16: run once per r2n.gpu.conv.TC_IM2COL_MULTISTAGE "
                             "setting (step 5 or the multistage im2col kernel)")  # fmt: skip
    return parser


def main(argv=None) -> int:
    opts = build_parser().parse_args(argv)

    import inspect

    import cupy
    import numpy as np

    import r2n
    from r2n.gpu import conv as gconv

    checkout = opts.label or os.path.dirname(os.path.dirname(os.path.abspath(r2n.__file__)))
    has_precision = "precision" in inspect.signature(r2n.models.create).parameters
    has_switch = hasattr(gconv, "TC_IM2COL_MULTISTAGE")
    runs, notes = plan_runs(opts.precision, opts.tc_im2col, has_precision, has_switch)
    for note in notes:
        print(f"[{checkout}] {note}")
    rng = np.random.default_rng(0)
    for precision, tc_im2col in runs:
        label = checkout if tc_im2col is None else f"{checkout} {tc_im2col}"
        if tc_im2col is not None:  # launch plans are keyed on it: no stale plan is reused
            gconv.TC_IM2COL_MULTISTAGE = tc_im2col == "multistage"
        kwargs = {"precision": precision} if has_precision else {}
        model = r2n.models.create(opts.model, backend="gpu", **kwargs)
        for batch in opts.batch:
            shape = (batch, 3, opts.size, opts.size)
            sets = max(2, min(8, (256 << 20) // (4 * int(np.prod(shape)))))
            inputs = [cupy.asarray(rng.standard_normal(shape, dtype=np.float32))
                      for _ in range(sets)]  # fmt: skip
            for x in inputs[:3]:  # compiles, plans, scratch
                model(x)
            cupy.cuda.runtime.deviceSynchronize()
            ms = forward_ms(model, inputs, opts.reps)
            table, kernel_ms = kernel_table(model, inputs[0], opts.profiled)
            launches = sum(v[0] for v in table.values())
            print(f"[{label}] {opts.model} N={batch} {precision}: forward {ms:.3f} ms "
                  f"(median of {opts.reps}); kernels {kernel_ms:.3f} ms in "
                  f"{launches:.0f} launches")  # fmt: skip
            rows = sorted(table.items(), key=lambda kv: -kv[1][1])
            for name, (count, us) in rows[: opts.top]:
                print(f"  {us / 1e3:8.3f} ms {100 * us / 1e3 / kernel_ms:5.1f}%"
                      f" {count:5.0f}x  {name}")  # fmt: skip
            if opts.json:
                with open(opts.json, "a") as f:
                    record = dict(label=label, model=opts.model, batch=batch,
                                  precision=precision, tc_im2col=tc_im2col,
                                  forward_ms=ms, kernel_ms=kernel_ms,
                                  kernels={k: v for k, v in rows})  # fmt: skip
                    f.write(json.dumps(record) + "\n")
            del inputs
        del model
        cupy.get_default_memory_pool().free_all_blocks()
    if opts.torch:
        torch_rows(opts, rng)
    return 0


def torch_rows(opts, rng) -> None:
    """timm's model (random weights: only its time matters here) in PyTorch
    eager, cuDNN, TF32 off and on, timed like r2n's forward."""
    import cupy
    import numpy as np
    import timm
    import torch

    net = timm.create_model(opts.model, pretrained=False).eval().cuda()
    for batch in opts.batch:
        shape = (batch, 3, opts.size, opts.size)
        sets = max(2, min(8, (256 << 20) // (4 * int(np.prod(shape)))))
        inputs = [torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).cuda()
                  for _ in range(sets)]  # fmt: skip
        for tf32 in (False, True):
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
            with torch.no_grad():
                for x in inputs[:3]:
                    net(x)
                torch.cuda.synchronize()
                with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
                    ms = forward_ms(net, inputs, opts.reps)
            print(f"[torch {torch.__version__}] {opts.model} N={batch} eager "
                  f"TF32 {'on' if tf32 else 'off'}: forward {ms:.3f} ms")  # fmt: skip
    torch.backends.cudnn.allow_tf32 = True


if __name__ == "__main__":
    sys.exit(main())
