"""``r2n check``: every backend against the float64 reference, on Res2Net shapes.

For each case (an op at a shape taken from Res2Net-50), the float64 reference
result is the truth. Every backend then runs the same inputs in float32 and is
reported as ``ok`` (relative error within 1e-5), ``WRONG``, ``not implemented``
or ``unavailable``, with its median time. PyTorch, when installed, is timed on
the same float32 inputs as an extra row. The exit code is 1 if any backend
disagreed with the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import _api, _backends
from .._bench import cases as bench_cases
from .._bench import timing, torch_models
from .._bench.torch_import import import_torch

TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


@dataclass
class Case:
    """One op at one shape: ``make(rng)`` returns (args, kwargs), float64 arrays."""

    op: str
    label: str
    make: Callable
    torch_fn: Callable | None = None  # (torch args...) -> tensor, same signature


def _randn(rng, *shape):
    return rng.standard_normal(shape)


def _chain_case(n, width, scale, hw, stype, stride):
    # The inputs of r2n bench's chain case (the same draws from rng).
    make = bench_cases.chain_case(n, width, scale, hw, stype, stride).make

    def torch_fn(x, ws, bs, *, scale, stype, stride):
        return torch_models.folded_chain(x, ws, bs, scale=scale, stype=stype, stride=stride)

    label = f"N={n} {width}w x {scale}s {hw}x{hw} {stype} s{stride}"
    return Case("res2net_chain", label, make, torch_fn)


def _bottle2neck_case(n, c_in, width, scale, planes, hw, stype, stride):
    c_out = planes * 4
    # The inputs of r2n bench's bottleneck case (the same draws from rng).
    make = bench_cases.block_case(n, c_in, planes, width, scale, hw, stype, stride).make
    label = f"N={n} {c_in}->{c_out} {width}w x {scale}s {hw}x{hw} {stype} s{stride}"
    return Case("bottle2neck", label, make)


def _simple_case(op, label, shapes, torch_name=None, **kwargs):
    def make(rng):
        return tuple(_randn(rng, *s) for s in shapes), dict(kwargs)

    torch_fn = None
    if torch_name:

        def torch_fn(*args, **kw):
            import torch.nn.functional as F

            return getattr(F, torch_name)(*args, **kw)

    return Case(op, label, make, torch_fn)


def cases(quick: bool = False) -> list[Case]:
    """The checked cases: Res2Net-50 layer shapes at batch 1 (smaller if quick)."""
    hw = 28 if quick else 56
    return [
        _simple_case(
            "conv2d",
            f"3x3 26->26 {hw}x{hw}",
            [(1, 26, hw, hw), (26, 26, 3, 3)],
            "conv2d",
            padding=1,
        ),
        _simple_case(
            "conv2d", f"1x1 256->104 {hw}x{hw}", [(1, 256, hw, hw), (104, 256, 1, 1)], "conv2d"
        ),
        _simple_case(
            "conv2d",
            f"3x3 groups=8 64->64 {hw // 2}x{hw // 2}",
            [(1, 64, hw // 2, hw // 2), (64, 8, 3, 3)],
            "conv2d",
            padding=1,
            groups=8,
        ),
        _simple_case(
            "max_pool2d",
            f"3x3 s2 64ch {2 * hw}x{2 * hw}",
            [(1, 64, 2 * hw, 2 * hw)],
            "max_pool2d",
            kernel_size=3,
            stride=2,
            padding=1,
        ),
        _simple_case(
            "avg_pool2d",
            f"3x3 s2 52ch {hw}x{hw}",
            [(1, 52, hw, hw)],
            "avg_pool2d",
            kernel_size=3,
            stride=2,
            padding=1,
        ),
        _simple_case("global_avg_pool2d", "2048ch 7x7", [(1, 2048, 7, 7)]),
        _simple_case("linear", "2048->1000", [(1, 2048), (1000, 2048), (1000,)], "linear"),
        _simple_case("space_to_depth", f"3ch {4 * hw}x{4 * hw}", [(1, 3, 4 * hw, 4 * hw)]),
        _simple_case("blur_pool2d", f"64ch {hw}x{hw}", [(1, 64, hw, hw)]),
        _simple_case(
            "squeeze_excite",
            f"256ch {hw}x{hw}",
            [(1, 256, hw, hw), (64, 256, 1, 1), (64,), (256, 64, 1, 1), (256,)],
        ),
        _chain_case(1, 26, 4, hw, "normal", 1),
        _chain_case(1, 52, 4, hw, "stage", 2),
        _bottle2neck_case(1, 256, 26, 4, 64, hw, "normal", 1),
        _bottle2neck_case(1, 256, 52, 4, 128, hw, "stage", 2),
    ]


_as = timing.convert  # apply a function to every array inside nested arguments


#: One warm-up call, then at least 3 timed calls, more while under 0.2 s, at most 50.
BUDGET = timing.Budget(min_time=0.2, min_reps=3, max_reps=50, warmup=1)


def median_ms(fn: Callable) -> float:
    """Median wall time of ``fn()`` in ms, after one warm-up call (see BUDGET)."""
    return timing.median_ms(timing.time_host(fn, BUDGET))


_rel_err = timing.rel_err


def run_case(case: Case, rng) -> list[dict]:
    """Rows (one per backend, plus torch) for one case."""
    args64, kwargs = case.make(rng)
    fn = getattr(_api, case.op)
    ref = fn(*args64, backend="reference", **kwargs)
    args32 = _as(args64, lambda a: a.astype(np.float32))
    tol = TOLERANCE[np.dtype(np.float32)]
    rows = []
    for backend in _backends.BACKENDS:
        row = dict(op=case.op, case=case.label, backend=backend, error=None, ms=None)
        status = _backends.status(backend, case.op)
        if status != "ready":
            row["status"] = status
        elif _backends.kind_of(backend) == "cupy":
            row.update(_gpu_status(case, args32, kwargs, ref, backend))
        else:
            out = fn(*args32, backend=backend, **kwargs)
            err = _rel_err(out, ref)
            row.update(error=err, status="ok" if err <= tol else "WRONG")
            if err <= tol:
                row["ms"] = median_ms(lambda b=backend: fn(*args32, backend=b, **kwargs))
        rows.append(row)
    if case.torch_fn is not None and _torch() is not None:
        torch = _torch()
        targs = _as(args32, torch.from_numpy)
        with torch.no_grad():
            out = case.torch_fn(*targs, **kwargs).numpy()
            err = _rel_err(out, ref)
            ms = median_ms(lambda: case.torch_fn(*targs, **kwargs))
        rows.append(
            dict(
                op=case.op,
                case=case.label,
                backend=f"torch {torch.__version__}",
                status="ok" if err <= tol else "differs",
                error=err,
                ms=ms,
            )
        )
    return rows


def _gpu_status(case, args32, kwargs, ref, backend) -> dict:
    """Run a CuPy backend if CuPy sees a GPU; never fails the check for lack of one."""
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no driver or no device: nothing to check here
        return {"status": "no GPU"}
    fn = getattr(_api, case.op)
    dargs = _as(args32, cupy.asarray)

    def call():
        out = fn(*dargs, backend=backend, **kwargs)
        cupy.cuda.get_current_stream().synchronize()
        return out

    err = _rel_err(cupy.asnumpy(call()), ref)
    tol = TOLERANCE[np.dtype(np.float32)]
    return {
        "error": err,
        "status": "ok" if err <= tol else "WRONG",
        "ms": median_ms(call) if err <= tol else None,
    }


_torch = import_torch  # torch or None, OMP_WAIT_POLICY=PASSIVE first


def format_table(rows: list[dict]) -> str:
    """Plain-text table: op, case, backend, status, relative error, median ms."""
    header = ("op", "case", "backend", "status", "rel. error", "ms (median)")
    lines = [header]
    for r in rows:
        err = "" if r.get("error") is None else f"{r['error']:.1e}"
        ms = "" if r.get("ms") is None else f"{r['ms']:.3f}"
        lines.append((r["op"], r["case"], r["backend"], r["status"], err, ms))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for k, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def add_arguments(parser) -> None:
    """The options of ``r2n check``."""
    parser.add_argument("--quick", action="store_true", help="smaller images (28x28)")
    parser.add_argument("--op", nargs="+", metavar="OP", help="only these ops")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the inputs")


def check(quick: bool = False, ops: list[str] | None = None, seed: int = 0) -> int:
    """Run the check, print the table, return the exit code (0: all agree)."""
    rng = np.random.default_rng(seed)
    selected = [c for c in cases(quick) if not ops or c.op in ops]
    if not selected:
        print(
            f"r2n check: no case for --op {' '.join(ops)}; ops are: "
            f"{', '.join(sorted({c.op for c in cases()}))}"
        )
        return 2
    available = ", ".join(_backends.available_backends())
    print(
        f"r2n check: float32 results vs the float64 reference (tolerance 1e-5), "
        f"{len(selected)} cases; backends available: {available}"
    )
    rows = []
    for i, case in enumerate(selected, 1):
        print(f"  [{i}/{len(selected)}] {case.op} {case.label}", flush=True)
        rows.extend(run_case(case, rng))
    print()
    print(format_table(rows))
    wrong = [r for r in rows if r["status"] == "WRONG"]
    print()
    if wrong:
        print(
            f"{len(wrong)} result(s) disagree with the reference: "
            + ", ".join(f"{r['op']} [{r['backend']}]" for r in wrong)
        )
        return 1
    print("every implemented backend agrees with the reference")
    return 0
