"""The PNGs of ``r2n bench --plot`` (speedup bars and a roofline chart) and of
``r2n ladder --plot`` (:func:`plot_ladders`: each ladder's steps against its roofline).

Left: per case, every timed row's speedup over the serial reference row
(log scale). Middle: the roofline of this machine, from the peaks measured
at start (sgemm GFLOP/s as the flat roof, copy GB/s as the slope) at 1 and
all threads, with each timed row at its arithmetic intensity (FLOPs per
minimal byte: inputs, weights and output each moved once) and its GFLOP/s.
Right, when the speedup model ran: its predicted speedups next to the
measured ones, per block and parallel engine.
matplotlib is an optional dependency; this module imports it (Agg backend).
"""

from __future__ import annotations

import numpy as np


def plot(report: dict, path: str) -> None:
    """Write the PNG of ``report`` (the dict ``r2n bench --json`` writes) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r.get("ms")]
    labels = list(dict.fromkeys(r["row"] for r in report["rows"]))
    cases = list(dict.fromkeys(f"{r['op']}\n{r['case']}" for r in report["rows"]))
    colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}

    models = [m for m in report.get("model", []) if m.get("status") == "ok"]
    if models:
        fig, (bars, roof, model_ax) = plt.subplots(1, 3, figsize=(24, 7), width_ratios=(3, 2, 2))
        _model_panel(model_ax, models)
    else:
        fig, (bars, roof) = plt.subplots(1, 2, figsize=(18, 7), width_ratios=(3, 2))
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        xs, ys = [], []
        for r in rows:
            if r["row"] == label and r.get("vs_serial"):
                xs.append(cases.index(f"{r['op']}\n{r['case']}") + (i - len(labels) / 2) * width)
                ys.append(r["vs_serial"])
        bars.bar(xs, ys, width, label=label, color=colors[label], align="edge")
    bars.axhline(1.0, color="black", lw=0.8)
    bars.set_yscale("log")
    bars.set_xticks(range(len(cases)), cases, fontsize=7, rotation=30, ha="right")
    bars.set_ylabel("speedup vs serial reference (x, log)")
    bars.set_title("Speedup over the serial reference (median times)")
    bars.legend(fontsize=7, ncol=2)

    peaks = report.get("peaks") or {}
    ais = [r["intensity"] for r in rows] or [1.0]
    ai = np.logspace(np.log10(min(min(ais) / 4, 0.25)), np.log10(max(ais) * 4), 200)
    for threads, flops in (peaks.get("sgemm_gflops") or {}).items():
        bw = (peaks.get("copy_gbs") or {}).get(threads)
        if not flops or not bw:
            continue
        roof.plot(ai, np.minimum(flops, bw * ai), "--", lw=1, label=f"roof, {threads} thread(s)")
    gpu = report.get("gpu_peaks")
    if gpu:
        roof.plot(
            ai, np.minimum(gpu["sgemm_gflops"], gpu["copy_gbs"] * ai), ":", label="roof, GPU"
        )
    for label in labels:
        pts = [
            (r["intensity"], r["gflops"]) for r in rows if r["row"] == label and r.get("gflops")
        ]
        if pts:
            x, y = zip(*pts, strict=True)
            roof.scatter(x, y, s=18, color=colors[label], label=label)
    roof.set_xscale("log")
    roof.set_yscale("log")
    roof.set_xlabel("arithmetic intensity (FLOP / minimal byte)")
    roof.set_ylabel("GFLOP/s")
    roof.set_title("Roofline (peaks measured at start)")
    roof.legend(fontsize=7)
    m = report.get("machine", {})
    fig.suptitle(
        f"r2n bench {report.get('datetime', '')}: {m.get('cpu', '?')}, "
        f"{report.get('threads_all', '?')} threads"
        + (" (quick)" if report.get("quick") else "")
        + (
            f"; other processes kept {100 * report['other_load']:.0f}% of the CPUs busy"
            if report.get("other_load") is not None
            else ""
        )
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: The speedup model's figures drawn side by side: (key in the result, legend).
MODEL_BARS = (
    ("predicted_vs_serial", "predicted vs serial"),
    ("measured_r2n_vs_serial", "measured r2n (fused) vs serial"),
    ("measured_torch_vs_serial", "measured PyTorch vs serial"),
    ("predicted_vs_torch_style", "predicted vs PyTorch-style"),
    ("measured_r2n_vs_torch", "measured r2n vs PyTorch"),
)


def _model_panel(ax, models: list[dict]) -> None:
    """Grouped bars: the model's predicted speedups next to the measured ones."""
    labels = [f"{m['case'].split(' N=')[0]}\n{m['parallel']}" for m in models]
    width = 0.8 / len(MODEL_BARS)
    for i, (key, legend) in enumerate(MODEL_BARS):
        xs = [k + (i - len(MODEL_BARS) / 2) * width for k in range(len(models))]
        ys = [m.get(key) or 0.0 for m in models]
        ax.bar(xs, ys, width, label=legend, align="edge")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(models)), labels, fontsize=8)
    ax.set_ylabel("speedup (x)")
    ax.set_title("Speedup model: (S+T1+T2)/(S+T1/k1+T2/k2) vs measured")
    ax.legend(fontsize=7)


def plot_ladders(report: dict, path: str) -> None:
    """Write the PNG of ``r2n ladder --json``'s ``report`` to ``path``: per ladder,
    each step's GFLOP/s as a bar (the library last, hatched) under the
    roofline at the op's arithmetic intensity (solid) and the flat sgemm
    roof (dashed), log scale; bars are labelled with % of the roofline, and a
    step that was not timed carries its status instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ladders = report["ladders"]
    cols = min(3, len(ladders))
    rows_n = (len(ladders) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.5 * cols, 4.8 * rows_n), squeeze=False)
    peaks = report.get("peaks") or {}
    threads = str(report.get("threads"))
    flat = (
        (report.get("gpu_peaks") or {}).get("sgemm_gflops")
        if report.get("backend") == "gpu"
        else (peaks.get("sgemm_gflops") or {}).get(threads)
    )
    for ax, ladder in zip(axes.flat, ladders, strict=False):
        rows = ladder["rows"]
        names = [r["step"] for r in rows]
        heights = [r.get("gflops") or 0.0 for r in rows]
        colors = ["tab:gray" if r["kind"] == "library" else "tab:blue" for r in rows]
        bars = ax.bar(range(len(rows)), heights, color=colors)
        for bar, r in zip(bars, rows, strict=True):
            if r["kind"] == "library":
                bar.set_hatch("//")
            text = (
                f"{r['pct_roofline']:.0f}%"
                if r.get("pct_roofline") is not None
                else ("" if r.get("gflops") else r["status"])
            )
            top = bar.get_height() if r.get("gflops") else 1.0
            x = bar.get_x() + bar.get_width() / 2
            ax.annotate(text, (x, top), ha="center", va="bottom", fontsize=7)
        roof = ladder.get("roofline_gflops")
        if roof:
            ax.axhline(roof, color="tab:red", lw=1.2, label=f"roofline {roof:.0f} GFLOP/s")
        if flat and (not roof or flat > roof * 1.01):
            ax.axhline(flat, color="tab:red", ls="--", lw=0.8, label=f"sgemm {flat:.0f}")
        ax.set_yscale("log")
        top = max([roof or 0.0, flat or 0.0, *heights, 1.0])
        ax.set_ylim(0.5 if min(h for h in heights + [1.0] if h) >= 1 else None, top * 2)
        ax.set_xticks(range(len(rows)), names, fontsize=7, rotation=25, ha="right")
        ax.set_ylabel("GFLOP/s (log)")
        ax.set_title(
            f"{ladder['op']} {ladder['case']}\n{ladder['intensity']:.1f} FLOP/byte", fontsize=9
        )
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(ladders) :]:
        ax.axis("off")
    m = report.get("machine", {})
    where = f"{report.get('threads')} thread(s)" if report.get("threads") else report.get("device")
    fig.suptitle(
        f"r2n ladder {report.get('datetime', '')}: {report.get('backend')} on "
        f"{m.get('cpu', '?')}, {where}" + (" (quick)" if report.get("quick") else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
