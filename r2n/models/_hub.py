"""Checkpoints as timm and the Hugging Face Hub publish them, read offline.

Two ways a published checkpoint names itself:

* **timm's tagged names**, ``architecture.tag`` (``res2net50_26w_4s.in1k``,
  ``tresnet_m.miil_in21k_ft_in1k``): the tag names the pretrained weights and
  may change the config (``tresnet_m.miil_in1k_448`` runs at 448 px,
  ``tresnet_m.miil_in21k`` has 11221 classes). r2n knows timm's tags for its
  architectures (each family's ``PRETRAINED_TAGS``) and refuses others rather
  than guess their config: use the bare architecture name for timm's default
  config, or the checkpoint's directory, whose ``config.json`` says it all.
* **a Hub directory**, as ``timm``'s ``save_for_hf`` / ``push_to_hf_hub``
  write it and ``huggingface-cli download timm/<name> --local-dir DIR``
  fetches it: ``config.json`` (``architecture``, ``num_classes``,
  ``pretrained_cfg`` with the preprocessing, optional ``label_names`` and
  ``model_args``) and the weights, ``model.safetensors`` or (read with
  ``torch.load(weights_only=True)``) ``pytorch_model.bin``.

Nothing here touches the network: ``hf-hub:`` names are refused with the
command that downloads them.
"""

from __future__ import annotations

import dataclasses
import json
import os

from ._preprocess import ConfigError, check_config

#: The weight files of a Hub directory, in the order they are looked for.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"
#: Prefix timm uses for a local Hub directory (``local-dir:/path``).
LOCAL_DIR_PREFIX = "local-dir:"

#: timm's global pools that compute r2n's mean over H and W.
_MEAN_POOLS = ("avg", "fast")


@dataclasses.dataclass(frozen=True)
class HubCheckpoint:
    """What a Hub directory's ``config.json`` says, checked.

    Attributes
    ----------
    path : the directory
    architecture : an r2n model name (timm's architecture, no tag)
    tag : pretrained_cfg's ``tag``, or None
    num_classes : classifier outputs
    preprocess : the eval config (see r2n.models._preprocess.check_config)
    label_names : class names by index, or None
    params : hyper-parameters that differ from the architecture's (``layers``)
    weights : path of the weight file (model.safetensors or pytorch_model.bin)
    """

    path: str
    architecture: str
    tag: str | None
    num_classes: int
    preprocess: dict
    label_names: list | None
    params: dict
    weights: str


def split_name(name: str) -> tuple[str, str | None]:
    """``"arch.tag"`` -> ``("arch", "tag")``; ``"arch"`` -> ``("arch", None)``."""
    arch, dot, tag = name.partition(".")
    return arch, (tag if dot else None)


def hub_dir_of(source) -> str | None:
    """The directory ``source`` names, or None when it is a model name.

    A directory is an ``os.PathLike``, a ``"local-dir:PATH"`` string, or a
    string that names an existing directory (a model name never does: names
    are looked up first by the caller).
    """
    if isinstance(source, os.PathLike):
        return os.fspath(source)
    if isinstance(source, str):
        if source.startswith(LOCAL_DIR_PREFIX):
            return source[len(LOCAL_DIR_PREFIX) :]
        if os.path.isdir(source):
            return source
    return None


def refuse_remote(source) -> None:
    """``hf-hub:`` and ``timm/...`` names: say how to download, never download."""
    if isinstance(source, str) and (source.startswith("hf-hub:") or source.startswith("timm/")):
        repo = source.removeprefix("hf-hub:")
        raise ValueError(
            f"r2n.models: {source!r} names a Hugging Face Hub repository; r2n never "
            f"downloads. Fetch it once (huggingface-cli download {repo} --local-dir DIR) "
            f"and pass the directory DIR"
        )


def read_hub_dir(path, known_architectures) -> HubCheckpoint:
    """Read and check a Hub directory's ``config.json`` and find its weights.

    Parameters
    ----------
    path : the directory
    known_architectures : mapping name -> Arch of the models r2n builds

    Raises
    ------
    FileNotFoundError (no directory, no config.json, no weight file);
    ValueError (a config r2n cannot follow: unknown architecture, bad
    num_classes, model_args that change the network, bad preprocessing),
    every message one line naming the file.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"r2n.models: no such checkpoint directory: {path!r}")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"r2n.models: {path!r} has no {CONFIG_FILE}; a Hub checkpoint directory holds "
            f"{CONFIG_FILE} and {' or '.join(WEIGHT_FILES)}"
        )
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"r2n.models: cannot read {config_path!r}: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"r2n.models: {config_path!r} must hold a JSON object")
    where = config_path
    if "pretrained_cfg" not in config:  # timm's older single-dict layout
        pretrained_cfg = dict(config)
    else:
        pretrained_cfg = config["pretrained_cfg"]
        if not isinstance(pretrained_cfg, dict):
            raise ValueError(f"r2n.models: {where}: pretrained_cfg must be a JSON object")
    architecture = config.get("architecture")
    if architecture not in known_architectures:
        raise ValueError(
            f"r2n.models: {where}: architecture {architecture!r} is not a model r2n "
            f"builds; known: {', '.join(known_architectures)}"
        )
    arch = known_architectures[architecture]
    num_classes = config.get("num_classes", pretrained_cfg.get("num_classes", 1000))
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"r2n.models: {where}: num_classes must be an int >= 1, got {num_classes!r}"
        )
    params = _model_args(config.get("model_args") or {}, num_classes, arch, where)
    try:
        preprocess = check_config({**arch.preprocess, **pretrained_cfg}, where)
    except ConfigError as e:
        raise ValueError(f"r2n.models: {e}") from None
    tag = pretrained_cfg.get("tag")
    weights = next(
        (os.path.join(path, f) for f in WEIGHT_FILES if os.path.isfile(os.path.join(path, f))),
        None,
    )
    if weights is None:
        raise FileNotFoundError(
            f"r2n.models: {path!r} has {CONFIG_FILE} but no weights: expected "
            f"{' or '.join(WEIGHT_FILES)}"
        )
    return HubCheckpoint(
        path=path,
        architecture=architecture,
        tag=tag if isinstance(tag, str) and tag else None,
        num_classes=num_classes,
        preprocess=preprocess,
        label_names=_label_names(config, num_classes),
        params=params,
        weights=weights,
    )


def _model_args(model_args, num_classes, arch, where) -> dict:
    """timm's recorded constructor arguments -> r2n hyper-parameter overrides.

    ``layers`` (blocks per stage) is honoured; ``in_chans`` must be 3,
    ``num_classes`` must agree, ``global_pool`` must be a mean; anything else
    would build a network r2n does not have, and is refused by name.
    """
    if not isinstance(model_args, dict):
        raise ValueError(f"r2n.models: {where}: model_args must be a JSON object")
    params = {}
    unsupported = []
    for key, value in model_args.items():
        if key == "in_chans" and value == 3:
            continue
        if key == "num_classes" and value == num_classes:
            continue
        if key == "global_pool" and value in _MEAN_POOLS:
            continue
        if key == "layers" and _is_layers(value, len(arch.params["layers"])):
            params["layers"] = tuple(value)
            continue
        unsupported.append(f"{key}={value!r}")
    if unsupported:
        raise ValueError(
            f"r2n.models: {where}: model_args {', '.join(unsupported)} change the network "
            f"in a way r2n's {arch.name} does not support"
        )
    return params


def _is_layers(value, stages) -> bool:
    return (
        isinstance(value, list)
        and len(value) == stages
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    )


def _label_names(config, num_classes) -> list | None:
    """Class names by index from config's ``label_names`` (a list, or a dict
    index -> name), each replaced by its ``label_descriptions`` entry when
    there is one (timm stores ImageNet synsets as names, lemmas as
    descriptions); None when absent or not one name per class."""
    cfg = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else {}
    names = config.get("label_names", cfg.get("label_names"))
    descriptions = config.get("label_descriptions", cfg.get("label_descriptions"))
    if not isinstance(descriptions, dict):
        descriptions = {}
    if isinstance(names, dict):
        by_index = {}
        for k, v in names.items():
            if str(k).isdigit() and int(k) < num_classes:
                by_index[int(k)] = v
        names = [by_index.get(i, "") for i in range(num_classes)]
    if not isinstance(names, list) or len(names) != num_classes:
        return None
    return [str(descriptions.get(n, n)) if isinstance(n, str) else str(n) for n in names]
