"""The model zoo: every architecture r2n builds, and :func:`create`.

``ARCHS`` maps each name (timm's) to its :class:`~r2n.models._model.Arch`;
tagged names (``"res2net50_26w_4s.in1k"``) and local Hub checkpoint
directories resolve here too. ``r2n.models`` re-exports the public names;
``_predictor`` and ``r2n classify`` use :func:`arch_of`, :func:`directory_of`
and :func:`num_classes_in` (below the package, so nothing imports upward).
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Mapping

import numpy as np

from .. import _backends, _checks
from . import _hub, _preprocess, res2net, tresnet
from ._model import Arch, Model, make_model
from ._weights import load_state_dict

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


def list_models(pretrained: bool = False) -> list[str]:
    """Names of the models :func:`create` builds.

    ``pretrained=True``: timm's tagged names instead (``res2net50_26w_4s.in1k``,
    ``tresnet_m.miil_in1k_448``, ...), which :func:`create` accepts too.
    """
    if not pretrained:
        return list(ARCHS)
    return [f"{name}.{tag}" for name, arch in ARCHS.items() for tag in _tags(arch)]


def _tags(arch: Arch) -> dict:
    return _FAMILIES[arch.family].PRETRAINED_TAGS.get(arch.name, {})


def arch_of(name) -> tuple[Arch, int]:
    """The Arch of a name, tagged or not, and its default num_classes."""
    base, tag = _hub.split_name(name) if isinstance(name, str) else (None, None)
    if base not in ARCHS:
        _hub.refuse_remote(name)
        if isinstance(name, str) and ("/" in name or os.sep in name):
            raise FileNotFoundError(
                f"r2n.models: {name!r} is neither a model name nor an existing "
                f"checkpoint directory"
            )
        raise ValueError(
            f"r2n.models: unknown model {name!r}; known models: {', '.join(ARCHS)} "
            f"(or timm's tagged names, list_models(pretrained=True), or a Hub "
            f"checkpoint directory)"
        )
    arch = ARCHS[base]
    if tag is None:
        return arch, 1000
    tags = _tags(arch)
    if tag not in tags:
        raise ValueError(
            f"r2n.models: unknown tag {tag!r} of {base}; timm's tags: "
            f"{', '.join(tags) or '(none)'}. r2n does not guess an unknown tag's "
            f"config: use {base!r} for timm's default, or the checkpoint's directory "
            f"(its config.json)"
        )
    overrides = tags[tag]
    preprocess = _preprocess.check_config(
        {**arch.preprocess, **{k: v for k, v in overrides.items() if k != "num_classes"}},
        f"r2n.models: {name}",
    )
    tagged = dataclasses.replace(arch, name=f"{base}.{tag}", preprocess=preprocess)
    return tagged, overrides.get("num_classes", 1000)


def expected_keys(name: str, num_classes: int | None = None) -> dict[str, tuple]:
    """The state_dict keys and shapes ``create(name, ...)`` expects.

    ``name`` as in :func:`create` (tagged or not); ``num_classes=None``: the
    tag's (1000 for most).
    """
    arch, default_classes = arch_of(name)
    return _FAMILIES[arch.family].expected_keys(
        arch, default_classes if num_classes is None else num_classes
    )


def directory_of(name) -> str | None:
    """The Hub checkpoint directory ``name`` names (a path, ``pathlib.Path`` or
    ``"local-dir:PATH"``), or None for a model name: names are looked up first,
    so a directory that happens to share a model's name is never taken for it."""
    if isinstance(name, str) and _hub.split_name(name)[0] in ARCHS:
        return None
    return _hub.hub_dir_of(name)


def num_classes_in(name: str, state_dict: Mapping) -> int | None:
    """The classes of a checkpoint for model ``name`` (tagged or not): the rows
    of its family's classifier weight; None where that is not a 2-D array
    (:func:`create` then names the missing or mis-shaped key)."""
    arch, _ = arch_of(name)
    fc = state_dict.get(f"{_FAMILIES[arch.family].CLASSIFIER}.weight")
    return int(fc.shape[0]) if getattr(fc, "ndim", 0) == 2 else None


def create(
    name,
    state_dict: Mapping | None = None,
    *,
    num_classes: int | None = None,
    backend: str | None = None,
    dtype="float32",
    seed: int | None = None,
    precision: str = "fp32",
    graph: bool = False,
    _params: dict | None = None,
) -> Model:
    """Build and prepare a model.

    Parameters
    ----------
    name : one of :func:`list_models`; timm's tagged name of one
        (``"res2net50_26w_4s.in1k"``, ``"tresnet_m.miil_in1k_448"``: the tag's
        input size and classes, :func:`list_models` ``(pretrained=True)``);
        or a local Hugging Face Hub checkpoint directory (a path,
        ``pathlib.Path`` or ``"local-dir:PATH"``) holding ``config.json`` and
        ``model.safetensors`` or ``pytorch_model.bin``, which gives the
        architecture, weights, classes and preprocessing. Never downloads.
    state_dict : mapping key -> array (NumPy, torch, CuPy, or anything with
        ``__array__`` / ``__dlpack__``), e.g. from :func:`r2n.load_state_dict`;
        None: deterministic random weights (``seed``, default from the
        architecture's name), or a directory's weights. The model keeps its
        own copies: editing the arrays later changes nothing.
    num_classes : classifier outputs (the checkpoint's fc must match); None:
        the directory's or the tag's (1000 for most)
    backend : None (NumPy inputs on "cpu", or "reference" without Numba; CuPy
        inputs on "gpu"), or one of r2n.BACKENDS to force one
    dtype : "float32" (default) or "float64"
    precision : "fp32" (default), or "tf32" / "bf16": every conv with at least
        8 output channels per group runs on the GPU's tensor cores with its
        operands rounded (r2n.conv2d's ``precision``; bounds in
        r2n.gpu.conv_tensor_core). Needs float32, CuPy inputs and the gpu
        backend (None or "gpu"); the model is prepared on the current GPU when
        created.
    graph : False (default), or True: on CuPy inputs the forward is recorded
        as a CUDA graph on the first call per input shape, dtype and device,
        and replayed after (r2n.gpu.GraphCache: at most
        r2n.gpu.graph.MAX_GRAPHS kept, least recently used dropped; safe from
        several threads, replays of one shape one after another). Removes the
        host's launch cost at batch 1. Needs the gpu backend (None or "gpu");
        NumPy inputs of a ``backend=None`` model run as without it.

    Returns
    -------
    Model: ``model(x)`` maps (N, 3, H, W) images of ``dtype`` to (N, num_classes)
    logits of x's array type; ``model.preprocess`` is its eval config.

    Raises
    ------
    ValueError for an unknown name, tag or backend, a directory r2n cannot
    follow, or a state_dict given with a directory; FileNotFoundError for a
    directory without config.json or weights; r2n.models.StateDictError (a
    ValueError) listing every missing, unexpected and mis-shaped key.
    """
    path = directory_of(name)
    if path is None:
        arch, default_classes = arch_of(name)
        if seed is None and state_dict is None:  # a tag does not change the random draw
            seed = zlib.crc32(_hub.split_name(arch.name)[0].encode())
    else:
        if state_dict is not None:
            raise ValueError(
                f"r2n.models.create: {path!r} is a checkpoint directory, which holds its "
                f"own weights; pass state_dict=None"
            )
        checkpoint = _hub.read_hub_dir(path, ARCHS)
        base = ARCHS[checkpoint.architecture]
        tagged = base.name + (f".{checkpoint.tag}" if checkpoint.tag else "")
        arch = Arch(
            tagged, base.family, {**base.params, **checkpoint.params}, checkpoint.preprocess
        )
        default_classes = checkpoint.num_classes
        if num_classes is not None and num_classes != checkpoint.num_classes:
            raise ValueError(
                f"r2n.models.create: num_classes={num_classes!r} but {path!r} has "
                f"num_classes {checkpoint.num_classes}"
            )
        state_dict = load_state_dict(checkpoint.weights)
    if _params:  # scaled-down variants for tests (e.g. fewer blocks per stage)
        arch = Arch(arch.name, arch.family, {**arch.params, **_params}, arch.preprocess)
    if num_classes is None:
        num_classes = default_classes
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
    kind = "cupy" if backend in (None, "gpu") else _backends.kind_of(backend)
    _checks.precision_arg("models.create", precision, kind, dt)
    if not isinstance(graph, bool):
        raise TypeError(f"r2n.models.create: graph must be True or False, got {graph!r}")
    if graph and kind != "cupy":
        raise ValueError(
            f"r2n.models.create: graph=True records CUDA graphs, which needs the gpu "
            f"backend (backend=None or 'gpu'), got backend={backend!r}"
        )
    family = _FAMILIES[arch.family]
    return make_model(arch, family, state_dict, num_classes, backend, dt, seed, precision, graph)


def hub_checkpoint(path) -> _hub.HubCheckpoint:
    """What a local Hub checkpoint directory holds (config.json, checked):
    architecture, tag, num_classes, preprocessing, label names, weight file.
    See :func:`create`, which builds the model from it."""
    return _hub.read_hub_dir(path, ARCHS)
