"""What benchmarks/gpu_tc_1x1.py and gpu_tc_3x3.py share: compiling their
modules up front, recording which kernel r2n launched, checking a row against
its float64 result, timing it with CUDA events, and the JSON file.

The scripts import it as ``gpu_tc_common`` (run from anywhere, Python puts
the script's folder, benchmarks/, first on ``sys.path``). Nothing here
imports CuPy: the scripts pass their ``cupy`` module in, so that they import
(and their tests run) on machines without a GPU.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def time_ms(cupy, fn, warmup=5, reps=20) -> float:
    """The median of ``reps`` CUDA-event times (ms) of ``fn()`` on the current
    stream, each call synchronized, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return float(np.median(times))


def compile_modules(ex, files, t0: float) -> None:
    """Compile and load ``files`` (r2n/gpu/kernels sources) on ``ex``
    concurrently (NVRTC releases the GIL), and print how long since ``t0``."""
    from r2n.gpu import _runtime

    with ThreadPoolExecutor(len(files)) as pool:
        list(pool.map(lambda f: ex.module(f).get_function(_runtime.names_of(f)[0]), files))
    print(f"compiled {', '.join(files)} in {time.perf_counter() - t0:.1f} s", flush=True)


def record_launches(ex) -> dict:
    """Wrap ``ex.launch`` so that the returned dict's ``"name"`` is the name
    expression of r2n's last launch (printed per row)."""
    launched = {}
    launch = ex.launch

    def recording_launch(file, name, *a, **k):
        launched["name"] = name
        return launch(file, name, *a, **k)

    ex.launch = recording_launch
    return launched


def print_device(cupy, ex, reps: int) -> str:
    """Print the GPU's name, SM count and the timing rule; return the name."""
    gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"{gpu}, {ex.sm_count} SMs; kernel times, median of {reps} (CUDA events)")
    return gpu


def check_and_time(cupy, fn, exact, tolerance: float, reps: int, launched=None, torch_out=False):
    """Run ``fn`` once, compare its output with ``exact`` (norm-wise relative
    error, float64 on the device) and time it (:func:`time_ms`) only if within
    ``tolerance``. ``torch_out``: ``fn`` returns a torch tensor (cuDNN rows,
    bfloat16 ones too), read back as float32. Returns (ms, NaN when the check
    failed; relative error; whether it passed; the name in ``launched``)."""
    if launched is not None:
        launched.clear()
    out = fn()
    kernel = launched.get("name", "") if launched is not None else ""
    if torch_out:
        out = cupy.asarray(out.float())
    err = float(cupy.linalg.norm(out - exact) / cupy.linalg.norm(exact))
    ok = err <= tolerance
    ms = time_ms(cupy, fn, reps=reps) if ok else float("nan")
    del out  # held while timing, as the scripts did before sharing this
    return ms, err, ok, kernel


def write_json(path, gpu: str, rows: list) -> None:
    """Every row, with the GPU's name, to ``path`` (none: nothing written)."""
    if path:
        with open(path, "w") as f:
            json.dump({"gpu": gpu, "rows": rows}, f, indent=1)
