"""Whole networks: the Res2Net family and TResNet, from PyTorch checkpoints.

>>> import r2n, r2n.models
>>> model = r2n.models.create("res2net50_26w_4s", r2n.load_state_dict("w.safetensors"))
>>> logits = model(images)          # (N, 3, 224, 224) float32 -> (N, 1000)

Every model has timm's hyper-parameters, layer structure and state_dict keys
(the official Res2Net checkpoints use the same keys; official TResNet
checkpoints convert with :func:`convert_inplace_abn`). ``num_batches_tracked``
entries are ignored. Without a state_dict the weights are deterministic random
draws (BN statistics included). :func:`create` also takes timm's tagged names
(``"tresnet_m.miil_in1k_448"``) and local Hugging Face Hub checkpoint
directories (``config.json`` + ``model.safetensors``), offline (``_hub.py``).

A model prepares once, when created: every BatchNorm is folded into its conv
(in float64, then cast), and each conv and Res2Net block is prepared through
``r2n._backends.prepare`` for the backend (weights packed in its layout and on
its device; intermediate buffers reused between calls of one input shape).
Whichever backends exist plug in there; this package imports none of them.
"""

from __future__ import annotations

from ._dask import classify_on_dask
from ._model import Model, random_state_dict
from ._predictor import Prediction, Predictor
from ._weights import StateDictError, check_state_dict, load_state_dict
from ._zoo import ARCHS as ARCHS  # name -> Arch, in the order of list_models()
from ._zoo import create, expected_keys, hub_checkpoint, list_models
from .tresnet import convert_inplace_abn

__all__ = [
    "create",
    "list_models",
    "hub_checkpoint",
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
