"""Whole networks: the Res2Net family and TResNet, from PyTorch checkpoints.

>>> import r2n, r2n.models
>>> model = r2n.models.create("res2net50_26w_4s", r2n.load_state_dict("w.safetensors"))
>>> logits = model(images)          # (N, 3, 224, 224) float32 -> (N, 1000)

Every model has timm's hyper-parameters, layer structure and state_dict keys
(the official Res2Net checkpoints use the same keys; official TResNet
checkpoints convert with :func:`convert_inplace_abn`). ``num_batches_tracked``
entries are ignored. Without a state_dict the weights are deterministic random
draws (BN statistics included).

A model prepares once, when created: every BatchNorm is folded into its conv
(in float64, then cast), and each conv and Res2Net block is prepared through
``r2n._backends.prepare`` for the backend (weights packed in its layout and on
its device; intermediate buffers reused between calls of one input shape).
Whichever backends exist plug in there; this package imports none of them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .. import _backends
from . import res2net, tresnet
from ._dask import classify_on_dask
from ._model import Arch, Model, make_model, random_state_dict
from ._predictor import Prediction, Predictor
from ._weights import StateDictError, check_state_dict, load_state_dict
from .tresnet import convert_inplace_abn

_FAMILIES = {"res2net": res2net, "tresnet": tresnet}

#: name -> Arch, in the order of list_models()
ARCHS = {
    **{
        name: Arch(name, "res2net", params, res2net.PREPROCESS)
        for name, params in res2net.ARCHS.items()
    },
    **{
        name: Arch(name, "tresnet", params, tresnet.PREPROCESS)
        for name, params in tresnet.ARCHS.items()
    },
}


def list_models() -> list[str]:
    """Names of the models :func:`create` builds."""
    return list(ARCHS)


def _arch(name) -> Arch:
    if not isinstance(name, str) or name not in ARCHS:
        raise ValueError(f"r2n.models: unknown model {name!r}; known models: {', '.join(ARCHS)}")
    return ARCHS[name]


def expected_keys(name: str, num_classes: int = 1000) -> dict[str, tuple]:
    """The state_dict keys and shapes ``create(name, ...)`` expects."""
    arch = _arch(name)
    return _FAMILIES[arch.family].expected_keys(arch, num_classes)


def create(
    name: str,
    state_dict: Mapping | None = None,
    *,
    num_classes: int = 1000,
    backend: str | None = None,
    dtype="float32",
    seed: int | None = None,
    _params: dict | None = None,
) -> Model:
    """Build and prepare a model.

    Parameters
    ----------
    name : one of :func:`list_models`
    state_dict : mapping key -> array (NumPy, torch, CuPy, or anything with
        ``__array__`` / ``__dlpack__``), e.g. from :func:`r2n.load_state_dict`;
        None: deterministic random weights (``seed``, default from the name)
    num_classes : classifier outputs (the checkpoint's fc must match)
    backend : None (NumPy inputs on "cpu", or "reference" without Numba; CuPy
        inputs on "gpu"), or one of r2n.BACKENDS to force one
    dtype : "float32" (default) or "float64"

    Returns
    -------
    Model: ``model(x)`` maps (N, 3, H, W) images of ``dtype`` to (N, num_classes)
    logits of x's array type.

    Raises
    ------
    ValueError for an unknown name or backend; r2n.models.StateDictError (a
    ValueError) listing every missing, unexpected and mis-shaped key.
    """
    arch = _arch(name)
    if _params:  # scaled-down variants for tests (e.g. fewer blocks per stage)
        arch = Arch(arch.name, arch.family, {**arch.params, **_params}, arch.preprocess)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"r2n.models.create: num_classes must be an int >= 1, got {num_classes!r}"
        )
    if backend is not None and backend not in _backends.BACKENDS:
        raise ValueError(
            f"r2n.models.create: backend must be None or one of "
            f"{', '.join(map(repr, _backends.BACKENDS))}, got {backend!r}"
        )
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"r2n.models.create: dtype must be float32 or float64, got {dt}")
    return make_model(arch, _FAMILIES[arch.family], state_dict, num_classes, backend, dt, seed)


__all__ = [
    "create",
    "list_models",
    "expected_keys",
    "load_state_dict",
    "check_state_dict",
    "convert_inplace_abn",
    "random_state_dict",
    "Model",
    "StateDictError",
    "Predictor",
    "Prediction",
    "classify_on_dask",
]
