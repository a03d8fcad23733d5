"""The whole-network case: res2net50_26w_4s, ``r2n.models`` against timm.

Weights are ``r2n.models.random_state_dict`` draws under timm's state_dict
keys (deterministic, nothing downloaded). The truth is r2n's model on the
reference backend in float64; r2n's rows build the same weights as float32
models on their backend; PyTorch's row is timm's ``res2net50_26w_4s``
(``pretrained=False``) with the same state_dict loaded, eval mode; the
ONNX Runtime and OpenVINO rows run that model's ONNX export
(:mod:`r2n._bench.engines`, cached after the first run). While
``r2n.models`` cannot be imported every row reports "r2n.models not
available" and nothing fails; without timm there is no PyTorch row.
"""

from __future__ import annotations

import numpy as np

from .cases import FLOAT32_BYTES, BenchCase, Skip, res2net50_flops

NAME = "res2net50_26w_4s"


def _models():
    try:
        from .. import models
    except ImportError as exc:
        raise Skip("r2n.models not available") from exc
    return models


class NetworkCase(BenchCase):
    """res2net50_26w_4s on (n, 3, hw, hw) float inputs, random weights."""

    def _state_dict(self):
        if "state_dict" not in self.extra:
            models = _models()
            expected = models.expected_keys(NAME)
            self.extra["state_dict"] = models.random_state_dict(expected, seed=0)
        return self.extra["state_dict"]

    def _model(self, backend, dtype):
        key = ("model", backend, dtype)
        if key not in self.extra:
            models = _models()
            self.extra[key] = models.create(NAME, self._state_dict(), backend=backend, dtype=dtype)
        return self.extra[key]

    def reference(self, args, kwargs):
        (x,) = args
        return self._model("reference", "float64")(x)

    def r2n_runner(self, args, kwargs, backend):
        (x,) = args
        model = self._model(backend, "float32")
        return lambda: model(x)

    def torch_runner(self, args32, kwargs, form, device):
        try:
            import timm
        except ImportError as exc:
            raise Skip("timm not installed") from exc
        from .torch_import import import_torch

        torch = import_torch()
        net = timm.create_model(NAME, pretrained=False)
        state = {k: torch.from_numpy(np.asarray(v)) for k, v in self._state_dict().items()}
        missing, unexpected = net.load_state_dict(state, strict=False)
        extra_missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if extra_missing or unexpected:
            raise RuntimeError(f"timm state_dict mismatch: {extra_missing[:3]} {unexpected[:3]}")
        net = net.eval().to(device)
        x = torch.from_numpy(args32[0]).to(device)

        def run():
            with torch.no_grad():
                return net(x)

        return run

    def engine_runner(self, args32, engine, threads):
        from . import engines

        why = engines.missing(engine)
        if why is not None:
            raise Skip(why)
        (x,) = args32
        path, _ = engines.cached_onnx(NAME, self._state_dict(), x.shape[0], x.shape[2])
        fn = engines.RUNNERS[engine](path, threads)
        return lambda: fn(x)


def network_case(n: int, hw: int) -> BenchCase:
    """The whole-network case at batch n and hw x hw images.

    The minimal bytes count the input, the logits and the parameters
    (25.7 M for 1000 classes, counted from the model's keys when r2n.models
    is importable)."""

    def make(rng):
        return (rng.standard_normal((n, 3, hw, hw)),), {}

    try:
        expected = _models().expected_keys(NAME)
        params = sum(int(np.prod(s)) for k, s in expected.items() if "running" not in k)
    except Skip:
        params = 25_699_120  # timm's count, used only for the intensity
    nbytes = FLOAT32_BYTES * (n * 3 * hw * hw + params + n * 1000)
    return NetworkCase(
        NAME,
        f"N={n} 3x{hw}x{hw}",
        res2net50_flops(n, hw),
        nbytes,
        make,
        ("eager",),
        tol=1e-4,
        engines=("onnxruntime", "openvino"),
    )
