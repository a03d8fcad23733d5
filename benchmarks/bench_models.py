"""The whole res2net50_26w_4s (224x224), r2n.models vs timm in PyTorch eager.

Groups ``res2net50_26w_4s N=1`` and ``N=8``. Rows (``backend`` and ``threads``
in extra_info):

* ``cpu``: ``r2n.models.create("res2net50_26w_4s", state_dict, backend="cpu")``,
  float32, at 1 thread and all cores (``r2n.set_num_threads``);
* ``torch-eager``: timm's ``res2net50_26w_4s`` with the same state_dict, eval
  mode, ``torch.no_grad()``, the same thread counts (``torch.set_num_threads``);
* ``gpu`` / ``torch-eager-cuda`` when CuPy / PyTorch see a GPU.

Both models hold the same random weights and BN statistics
(``r2n.models.random_state_dict``); the benchmark first checks that their
logits agree (relative error <= 1e-4), so the rows time the same function.

Memory, measured on a warm forward pass (after one call on the shape) and
stored in extra_info:

* ``host_peak_mib``: the process's peak resident memory during the call
  (``VmHWM`` from /proc/self/status after resetting it through
  /proc/self/clear_refs; Linux only, else None), minus the resident memory
  just before: what the call needs beyond what the process already holds;
* ``host_rss_mib``: the resident memory before the call (weights, buffers, ...);
* ``numpy_peak_mib`` (r2n rows): the peak of NumPy allocations during the
  call (tracemalloc), i.e. the arrays a forward pass allocates anew, including
  the Numba kernels' temporaries (Numba allocates through Python's raw
  allocator, which tracemalloc traces): at batch 1 mostly the max pool's
  output and the 1x1 convs' per-job row buffers;
* ``device_peak_mib`` (GPU rows): CuPy's pool / PyTorch's allocator peak
  during the call, above what was in use before it.

``flops`` (convs and fc, multiply-adds x 2) gives GFLOP/s (report.py).
"""

from __future__ import annotations

import os
import re
import tracemalloc

import numpy as np
import pytest
import torch

import r2n
import r2n.models
from r2n._bench import machine
from r2n._bench.cases import res2net50_flops

timm = pytest.importorskip("timm")

NAME = "res2net50_26w_4s"
HW = 224
ALL = os.cpu_count() or 1
BATCHES = (1, 8)
ROWS = [("cpu", 1), ("cpu", ALL), ("torch-eager", 1), ("torch-eager", ALL)]
CUPY = machine.cupy_with_gpu()
if CUPY is not None:
    ROWS.append(("gpu", None))
if torch.cuda.is_available():
    ROWS.append(("torch-eager-cuda", None))
ROW_IDS = [row if threads is None else f"{row}-{threads}t" for row, threads in ROWS]
MIB = 2.0**20


def _status_kib(field):
    try:
        with open("/proc/self/status") as f:
            return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))
    except (OSError, AttributeError):
        return None


def host_peak(fn):
    """(peak resident bytes during fn() above the resident bytes before it,
    resident bytes before), or (None, None) where /proc cannot tell."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
    except OSError:
        return None, None
    before = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return None, None
    return (peak - before) * 1024, before * 1024


def numpy_peak(fn):
    """Peak bytes of the NumPy arrays, Numba temporaries and Python objects
    allocated during fn()."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def weights():
    """The shared state_dict and timm's model holding it (eval, float32)."""
    state = r2n.models.random_state_dict(r2n.models.expected_keys(NAME), seed=0)
    net = timm.create_model(NAME, pretrained=False)
    missing, unexpected = net.load_state_dict(
        {k: torch.from_numpy(v) for k, v in state.items()}, strict=False
    )
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return state, net.eval()


_INPUTS = {}
_MODELS = {}


def _model(state, backend):
    """r2n's model on ``backend`` (created, i.e. folded and packed, once)."""
    if backend not in _MODELS:
        _MODELS[backend] = r2n.models.create(NAME, state, backend=backend)
    return _MODELS[backend]


def _inputs(n, net):
    """Images (n, 3, 224, 224) and timm's float32 logits on them (cached per n)."""
    if n not in _INPUTS:
        x = np.random.default_rng(1).standard_normal((n, 3, HW, HW)).astype(np.float32)
        with torch.no_grad():
            _INPUTS[n] = x, net.cpu()(torch.from_numpy(x)).numpy()
    return _INPUTS[n]


def _sync():
    if CUPY is not None:
        CUPY.cuda.get_current_stream().synchronize()
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@pytest.mark.parametrize("row, threads", ROWS, ids=ROW_IDS)
@pytest.mark.parametrize("n", BATCHES)
def test_res2net50_26w_4s(benchmark, timed, weights, n, row, threads):
    state, net = weights
    flops = res2net50_flops(n, HW)
    device = "cuda" if row in ("gpu", "torch-eager-cuda") else "cpu"
    benchmark.group = f"{NAME} N={n}"
    benchmark.extra_info.update(
        backend=row, threads=threads, device=device, flops=flops, gflop=flops / 1e9, batch=n
    )
    torch.set_num_threads(threads or ALL)
    r2n.set_num_threads(threads or ALL)
    x, truth = _inputs(n, net)
    # Untimed smoke runs (--benchmark-disable, every pytest run) skip the
    # memory measurement at N=8, which costs two more forward passes.
    measure_memory = not benchmark.disabled or n == 1

    if row in ("cpu", "gpu"):
        model = _model(state, row)
        if row == "gpu":
            xd = CUPY.asarray(x)
            pool = CUPY.get_default_memory_pool()

            def run():
                out = model(xd)
                _sync()
                return out

            out = CUPY.asnumpy(run())  # warm: buffers for this shape
            pool.free_all_blocks()  # now total == used; the pool then grows to the peak
            used = pool.used_bytes()
            run()
            benchmark.extra_info["device_peak_mib"] = (pool.total_bytes() - used) / MIB
        else:

            def run():
                return model(x)

            out = run()  # warm: buffers for this shape
            if measure_memory:
                benchmark.extra_info["numpy_peak_mib"] = numpy_peak(run) / MIB
    else:
        tnet = net.to(device)
        tx = torch.from_numpy(x).to(device)

        def run():
            with torch.no_grad():
                out = tnet(tx)
            _sync()
            return out

        out = run().cpu().numpy()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            used = torch.cuda.memory_allocated()
            run()
            benchmark.extra_info["device_peak_mib"] = (
                torch.cuda.max_memory_allocated() - used
            ) / MIB
    err = np.linalg.norm(out - truth) / np.linalg.norm(truth)
    assert err <= 1e-4, f"{row}: logits differ from timm's by {err:.2e}"
    if measure_memory:
        peak, rss = host_peak(run)
        benchmark.extra_info["host_peak_mib"] = None if peak is None else peak / MIB
        benchmark.extra_info["host_rss_mib"] = None if rss is None else rss / MIB
    timed(run)
    if device == "cuda":
        net.to("cpu")
