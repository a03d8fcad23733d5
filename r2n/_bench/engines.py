"""Other CPU inference engines on the same network: ONNX Runtime and OpenVINO.

The fair comparison for r2n's ``cpu`` backend is not only PyTorch eager but
what a user who wants fast CPU inference picks: ONNX Runtime or OpenVINO. Both
run an ONNX file; this module makes that file from timm's model holding the
same state_dict as r2n's (``torch.onnx.export``, opset 17, static shapes) and
builds each engine's runner with a fixed thread count:

* **onnxruntime**: ``InferenceSession`` on the ``CPUExecutionProvider``,
  ``intra_op_num_threads = threads``, ``inter_op_num_threads = 1``, sequential
  execution, every graph optimisation (the defaults otherwise);
* **openvino**: ``Core().compile_model(onnx, "CPU")`` with
  ``INFERENCE_NUM_THREADS = threads``, ``PERFORMANCE_HINT = LATENCY``,
  ``INFERENCE_PRECISION_HINT = f32`` (no bf16/f16 downcast on CPUs that have
  it), one infer request.

The export uses the TorchScript exporter (``dynamo=False``): in torch 2.14 it
still works (with a DeprecationWarning), folds each BatchNorm into its conv,
and names every node after its module (``/layer1/layer1.0/conv1/Conv``),
which ``r2n profile --onnxruntime`` needs to sum ONNX Runtime's per-node
profile per r2n layer. Where it fails it falls back to the dynamo exporter
(needs ``onnxscript``; opset 18 at least, nodes named ``node_Conv_12``).
Exported files are cached by model, batch, image size and a digest of the
weights (:func:`cached_onnx`), in ``$R2N_BENCH_CACHE`` or
``~/.cache/r2n/bench`` (never in the repository).

onnxruntime, openvino and onnx are the ``bench`` extra
(``pip install 'r2n[bench]'``), never dependencies of the library; the
export needs torch and timm (the ``test`` extra).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import time
import warnings

import numpy as np

#: The engines this module runs, in table order.
ENGINES = ("onnxruntime", "openvino")
#: The ONNX opset of the export.
OPSET = 17
#: Human names, for tables.
TITLES = {
    "r2n": "r2n",
    "torch": "PyTorch eager",
    "onnxruntime": "ONNX Runtime",
    "openvino": "OpenVINO",
}
_INSTALL = "pip install 'r2n[bench]'"


def missing(engine: str) -> str | None:
    """Why ``engine`` cannot run here (a sentence), or None when it can.

    Checks that the engine's package and the exporter's (torch, timm) are
    installed, without importing them."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; engines: {', '.join(ENGINES)}")
    if importlib.util.find_spec(engine) is None:
        return f"{engine} is not installed ({_INSTALL})"
    for exporter in ("torch", "timm"):
        if importlib.util.find_spec(exporter) is None:
            return f"{exporter} is not installed (the ONNX export needs torch and timm)"
    return None


def versions() -> dict:
    """Installed versions of the engines and their helpers (None: not installed)."""
    out = {}
    for dist in ("numpy", "numba", "torch", "timm", "onnx", "onnxruntime", "openvino"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


# --------------------------------------------------------------------------- #
# timm's model and its ONNX export
# --------------------------------------------------------------------------- #


def random_weights(
    name: str, *, num_classes: int = 1000, params: dict | None = None, seed: int = 0
) -> dict:
    """``r2n.models.random_state_dict`` of ``name`` (scaled down by ``params``,
    as ``r2n.models.create(..., _params=)``): the weights every engine shares."""
    import dataclasses

    from .. import models

    arch = models.ARCHS[name]
    if params:
        arch = dataclasses.replace(arch, params={**arch.params, **params})
    family = models.res2net if arch.family == "res2net" else models.tresnet
    return models.random_state_dict(family.expected_keys(arch, num_classes), seed=seed)


def timm_model(name: str, state_dict, *, num_classes: int = 1000, params: dict | None = None):
    """timm's ``name`` (eval mode, float32) holding ``state_dict`` (NumPy arrays).

    ``params``: overrides of timm's model arguments for scaled-down variants,
    e.g. ``{"layers": (1, 1, 1, 1)}`` (as ``r2n.models.create(..., _params=)``).
    Raises RuntimeError when the keys do not match."""
    import timm
    import torch

    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in (params or {}).items()}
    net = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}
    missing_keys, unexpected = net.load_state_dict(state, strict=False)
    missing_keys = [k for k in missing_keys if not k.endswith("num_batches_tracked")]
    if missing_keys or unexpected:
        raise RuntimeError(
            f"timm {name}: state_dict mismatch, missing {missing_keys[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    return net.eval()


def export_onnx(net, batch: int, hw: int, path: str) -> dict:
    """Export the torch module ``net`` on (batch, 3, hw, hw) float32 inputs to ``path``.

    Input ``x``, output ``logits``, static shapes. Returns {"exporter":
    "torchscript" or "dynamo", "opset", "seconds"}; the file appears only
    when the export succeeded (written beside, then renamed)."""
    import torch

    x = torch.zeros(batch, 3, hw, hw)
    tmp = f"{path}.{os.getpid()}.tmp"
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning
            torch.onnx.export(
                net,
                (x,),
                tmp,
                opset_version=OPSET,
                dynamo=False,
                input_names=["x"],
                output_names=["logits"],
            )
        exporter = "torchscript"
    except Exception:  # the TorchScript exporter is gone or failed: the dynamo one
        program = torch.onnx.export(
            net, (x,), dynamo=True, opset_version=max(OPSET, 18), input_names=["x"]
        )
        program.save(tmp, external_data=False)
        exporter = "dynamo"
    os.replace(tmp, path)
    opset = OPSET if exporter == "torchscript" else None
    if importlib.util.find_spec("onnx") is not None:
        import onnx

        opset = max(o.version for o in onnx.load(path, load_external_data=False).opset_import)
    return {"exporter": exporter, "opset": opset, "seconds": time.perf_counter() - start}


def cache_dir() -> str:
    """Where exported ONNX files (and the benchmark's inputs) are kept:
    ``$R2N_BENCH_CACHE``, else ``$XDG_CACHE_HOME/r2n/bench`` (``~/.cache``)."""
    env = os.environ.get("R2N_BENCH_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "r2n", "bench")


def weights_digest(state_dict) -> str:
    """A short digest of a state_dict's keys, dtypes, shapes and values."""
    h = hashlib.blake2b(digest_size=8)
    for key in sorted(state_dict):
        a = np.ascontiguousarray(state_dict[key])
        h.update(f"{key}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cached_onnx(
    name: str,
    state_dict,
    batch: int,
    hw: int,
    *,
    num_classes: int = 1000,
    params: dict | None = None,
    directory: str | None = None,
) -> tuple[str, dict]:
    """(path, export info) of timm's ``name`` with ``state_dict`` as ONNX at
    (batch, 3, hw, hw), exported on the first call and reused after.

    The file name holds the model, batch, size, opset, the torch version and
    the weights' digest, so another state_dict or exporter never reuses it."""
    directory = directory or cache_dir()
    os.makedirs(directory, exist_ok=True)
    tag = "-".join(f"{k}{v}" for k, v in sorted((params or {}).items())).replace(" ", "")
    torch_version = versions()["torch"] or "none"
    stem = f"{name}{'-' + tag if tag else ''}-c{num_classes}-n{batch}-{hw}px"
    stem += f"-op{OPSET}-torch{torch_version}-{weights_digest(state_dict)}"
    path = os.path.join(directory, "".join(c if c.isalnum() or c in "-._" else "_" for c in stem))
    path += ".onnx"
    if os.path.exists(path):
        return path, {"exporter": "cached", "path": path}
    net = timm_model(name, state_dict, num_classes=num_classes, params=params)
    info = export_onnx(net, batch, hw, path)
    info["path"] = path
    return path, info


# --------------------------------------------------------------------------- #
# Runners: fn(x) -> logits, at a fixed thread count
# --------------------------------------------------------------------------- #


def onnxruntime_session(path: str, threads: int, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session of ``path`` on ``threads`` intra-op threads.

    ``profile_prefix``: enable ONNX Runtime's profiler, writing its JSON trace
    at ``profile_prefix*.json`` (``session.end_profiling()`` returns the path)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def onnxruntime_runner(path: str, threads: int):
    """fn(x) -> logits of ONNX Runtime on ``path`` with ``threads`` threads."""
    session = onnxruntime_session(path, threads)
    name = session.get_inputs()[0].name

    def run(x):
        return session.run(None, {name: x})[0]

    return run


def openvino_runner(path: str, threads: int):
    """fn(x) -> logits of OpenVINO's CPU plugin on ``path`` with ``threads`` threads."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(path),
        "CPU",
        {
            "INFERENCE_NUM_THREADS": int(threads),
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        },
    )
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(x):
        return request.infer({0: x})[output]

    return run


RUNNERS = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner}


def settings(engine: str, threads: int) -> dict:
    """The settings a runner of ``engine`` uses at ``threads`` (for reports)."""
    if engine == "onnxruntime":
        return {
            "provider": "CPUExecutionProvider",
            "intra_op_num_threads": threads,
            "inter_op_num_threads": 1,
            "execution_mode": "sequential",
            "graph_optimization_level": "all",
        }
    if engine == "openvino":
        return {
            "device": "CPU",
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
    raise ValueError(f"unknown engine {engine!r}")
