"""Checkpoints as published: timm's tagged names and Hugging Face Hub directories.

The directories are written by the tests with timm's own exporter
(``timm.models._hub.save_for_hf``, what ``push_to_hf_hub`` uploads), from
small timm models (one block per stage) with random weights; nothing is
downloaded, and the socket module is disabled while r2n reads them.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import timm
import torch
from helpers import rel_err
from timm.models._hub import save_for_hf

import r2n
import r2n.models

SMALL_LAYERS = [1, 1, 1, 1]
PREPROCESS_KEYS = ("input_size", "crop_pct", "interpolation", "mean", "std", "crop_mode")


def _timm_tags():
    """timm's pretrained names of the architectures r2n builds."""
    archs = set(r2n.models.list_models())
    return sorted(n for n in timm.list_pretrained() if n.partition(".")[0] in archs)


def _as_lists(config):
    return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in config.items()}


@pytest.fixture
def no_network(monkeypatch):
    """Any socket r2n would open fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("r2n opened a network connection")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --------------------------------------------------------------------------- #
# Tagged names
# --------------------------------------------------------------------------- #


def test_r2n_knows_exactly_timms_tags():
    assert sorted(r2n.models.list_models(pretrained=True)) == _timm_tags()


@pytest.mark.parametrize("name", _timm_tags())
def test_tagged_name_has_timms_config(name):
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    keys = r2n.models.expected_keys(name)
    fc = "fc.weight" if name.startswith("res2") else "head.fc.weight"
    assert keys[fc][0] == cfg["num_classes"]
    model = r2n.models.create(name, _params={"layers": (1, 1, 1, 1)})
    assert model.name == name and model.num_classes == cfg["num_classes"]
    assert _as_lists(model.preprocess) == _as_lists({k: cfg[k] for k in PREPROCESS_KEYS})


def test_bare_name_is_timms_default_tag_and_draws_the_same_weights(rng):
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    small = {"layers": (1, 1, 1, 1)}
    bare = r2n.models.create("tresnet_m", _params=small)
    tagged = r2n.models.create("tresnet_m.miil_in21k_ft_in1k", _params=small)
    assert _as_lists(bare.preprocess) == _as_lists(
        {k: v for k, v in tagged.preprocess.items() if k != "crop_mode"}
    )
    assert np.array_equal(bare(x), tagged(x))


@pytest.mark.parametrize(
    "name, message",
    [
        ("res2net50_26w_4s.in21k", r"unknown tag 'in21k' of res2net50_26w_4s; timm's tags: in1k"),
        ("tresnet_l.miil_in21k", r"timm's tags: miil_in1k, miil_in1k_448\. r2n does not guess"),
        ("hf-hub:timm/tresnet_m.miil_in1k", r"never downloads.*huggingface-cli download"),
        ("timm/res2net50d.in1k", r"never downloads"),
        ("resnet50.a1_in1k", r"unknown model 'resnet50.a1_in1k'"),
    ],
)
def test_unknown_tags_and_remote_names_are_refused(name, message, no_network):
    with pytest.raises(ValueError, match=message):
        r2n.models.create(name)


# --------------------------------------------------------------------------- #
# Hub directories
# --------------------------------------------------------------------------- #


def _export(tmp_path, name, *, safe=True, data_config=None, model_config=None, seed=0):
    """A small timm model with random weights, saved as timm saves for the Hub."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, layers=SMALL_LAYERS).eval()
    with torch.no_grad():  # random BN statistics, so that folding matters
        for key, v in model.state_dict().items():
            if key.endswith("running_var"):
                v.uniform_(0.5, 1.5)
            elif key.endswith("running_mean"):
                v.normal_(0, 0.1)
    path = tmp_path / name.replace(".", "_")
    save_for_hf(
        model,
        str(path),
        safe_serialization=safe,
        data_config=data_config,
        model_config=model_config,
    )
    return path, model


@pytest.mark.parametrize(
    "name, safe",
    [("res2net50d.in1k", True), ("tresnet_m.miil_in1k_448", False), ("res2next50", "both")],
)
def test_hub_directory_gives_architecture_weights_and_preprocessing(tmp_path, name, safe):
    path, model = _export(tmp_path, name, safe=safe)
    files = sorted(p.name for p in path.iterdir())
    assert "config.json" in files and (
        "model.safetensors" in files or "pytorch_model.bin" in files
    )
    ours = r2n.models.create(path)  # a pathlib.Path
    assert ours.name == name or (ours.name == name + "." + model.pretrained_cfg["tag"])
    # timm reads the same directory offline; its data config is ours.
    theirs = timm.create_model(f"local-dir:{path}", pretrained=True).eval()
    data = timm.data.resolve_data_config(model=theirs)
    assert _as_lists(ours.preprocess) == _as_lists({k: data[k] for k in PREPROCESS_KEYS})
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ref = theirs.double()(torch.from_numpy(x).double()).numpy()
    assert rel_err(ours(x), ref) <= 1e-4
    # the same through "local-dir:" and a plain string path
    assert np.array_equal(r2n.models.create(f"local-dir:{path}")(x), ours(x))
    assert np.array_equal(r2n.models.create(str(path))(x), ours(x))


def test_preprocessing_comes_from_the_directory(tmp_path, no_network):
    data_config = {
        "input_size": (3, 160, 160),
        "crop_pct": 0.95,
        "interpolation": "bicubic",
        "mean": (0.5, 0.4, 0.3),
        "std": (0.2, 0.3, 0.25),
        "crop_mode": "squash",
    }
    model_config = {"label_names": [f"n{i:08d}" for i in range(1000)]}
    model_config["label_descriptions"] = {"n00000003": "three"}
    path, _ = _export(
        tmp_path, "res2net50_26w_4s", data_config=data_config, model_config=model_config
    )
    ours = r2n.models.create(f"local-dir:{path}")
    assert _as_lists(ours.preprocess) == _as_lists(data_config)
    checkpoint = r2n.models.hub_checkpoint(path)
    assert checkpoint.label_names[3] == "three" and checkpoint.label_names[4] == "n00000004"
    assert checkpoint.weights.endswith("model.safetensors")


def _edit_config(path, edit):
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "case, exc, message",
    [
        ("no_config", FileNotFoundError, r"has no config.json"),
        ("no_weights", FileNotFoundError, r"has config.json but no weights"),
        ("bad_json", ValueError, r"cannot read .*config.json"),
        ("architecture", ValueError, r"architecture 'resnet50' is not a model r2n builds"),
        ("model_args", ValueError, r"model_args in_chans=1 change the network"),
        ("global_pool", ValueError, r"model_args global_pool='max' change the network"),
        ("crop_mode", ValueError, r"crop_mode must be one of center, squash"),
        ("interpolation", ValueError, r"interpolation must be one of"),
        ("input_size", ValueError, r"input_size must be square"),
        ("std", ValueError, r"std must be 3 numbers > 0"),
        ("num_classes", ValueError, r"num_classes must be an int >= 1, got 'many'"),
        ("state_dict", ValueError, r"holds its own weights; pass state_dict=None"),
        ("classes_disagree", ValueError, r"num_classes=10 but .* has num_classes 1000"),
        ("not_a_dir", FileNotFoundError, r"neither a model name nor an existing checkpoint"),
    ],
)
def test_directories_r2n_cannot_follow_fail_in_one_line(tmp_path, case, exc, message, no_network):
    path, model = _export(tmp_path, "res2net50_26w_4s")
    kwargs = {}
    if case == "no_config":
        (path / "config.json").unlink()
    elif case == "no_weights":
        (path / "model.safetensors").unlink()
    elif case == "bad_json":
        (path / "config.json").write_text("{not json")
    elif case == "architecture":
        _edit_config(path, lambda c: c.update(architecture="resnet50"))
    elif case == "model_args":
        _edit_config(path, lambda c: c["model_args"].update(in_chans=1))
    elif case == "global_pool":
        _edit_config(path, lambda c: c["model_args"].update(global_pool="max"))
    elif case in ("crop_mode", "interpolation", "input_size", "std"):
        bad = {"crop_mode": "border", "interpolation": "cubic", "input_size": [3, 224, 160]}
        bad["std"] = [0.2, 0.0, 0.2]
        _edit_config(path, lambda c: c["pretrained_cfg"].update({case: bad[case]}))
    elif case == "num_classes":
        _edit_config(path, lambda c: c.update(num_classes="many"))
    elif case == "state_dict":
        kwargs["state_dict"] = r2n.load_state_dict(path / "model.safetensors")
    elif case == "classes_disagree":
        kwargs["num_classes"] = 10
    else:
        path = tmp_path / "missing_dir"
    with pytest.raises(exc, match=message) as info:
        r2n.models.create(str(path), **kwargs)
    assert "\n" not in str(info.value)
