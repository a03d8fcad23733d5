"""``r2n classify``: preprocessing as timm's, top-k output, one-line errors.

The tests write their own images (Pillow) and weights (a random r2n state_dict
saved to .safetensors); nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import timm
from PIL import Image
from safetensors.numpy import save_file

import r2n
import r2n.models
from r2n.__main__ import main
from r2n.models import _preprocess


def _write_image(path, h, w, seed, mode="RGB"):
    pixels = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("classify")
    state = r2n.models.random_state_dict(r2n.models.expected_keys("res2net50_26w_4s"), seed=7)
    weights = str(d / "w.safetensors")
    save_file(state, weights)
    tres = str(d / "tresnet.safetensors")
    save_file(r2n.models.random_state_dict(r2n.models.expected_keys("tresnet_m")), tres)
    not_image = d / "notes.jpg"
    not_image.write_text("not an image")
    return {
        "weights": weights,
        "tresnet_weights": tres,
        "state": state,
        "wide": _write_image(d / "wide.png", 240, 320, 1),
        "tall": _write_image(d / "tall.jpg", 301, 257, 2, mode="L"),  # grayscale JPEG
        "not_image": str(not_image),
        "dir": d,
    }


@pytest.mark.parametrize("name", ["res2net50_26w_4s", "tresnet_m"])
@pytest.mark.parametrize("image", ["wide", "tall"])
def test_preprocessing_is_timms_eval_transform(files, name, image):
    model = timm.create_model(name, pretrained=False, device="meta")
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    pil = Image.open(files[image])
    theirs = transform(pil.convert("RGB")).numpy()
    ours = _preprocess.preprocess(pil, r2n.models.ARCHS[name].preprocess)
    assert ours.dtype == np.float32 and ours.shape == (3, 224, 224)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6)


def test_classify_prints_topk_with_class_names(files, capsys):
    code = main(
        [
            "classify",
            "--model",
            "res2net50_26w_4s",
            "--weights",
            files["weights"],
            "--backend",
            "cpu",
            files["wide"],
            files["tall"],
            "--topk",
            "3",
        ]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == files["wide"] and out[4] == files["tall"] and len(out) == 8
    # The printed top-1 is the model's, on timm's preprocessing.
    model = r2n.models.create("res2net50_26w_4s", files["state"])
    config = r2n.models.ARCHS["res2net50_26w_4s"].preprocess
    x = np.stack([_preprocess.preprocess(Image.open(files[k]), config) for k in ("wide", "tall")])
    logits = model(x).astype(np.float64)
    names = _preprocess.class_names()
    for i, first in ((0, out[1]), (1, out[5])):
        top = int(np.argmax(logits[i]))
        p = np.exp(logits[i] - logits[i].max())
        p /= p.sum()
        assert first.split()[:3] == ["1.", str(top), f"{p[top]:.4f}"]
        assert first.endswith(names[top])


def test_class_names_are_imagenet():
    names = _preprocess.class_names()
    assert len(names) == 1000 and names[0].startswith("tench") and names[999].startswith("toilet")


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_image", "no such image file"),
        ("not_image", "cannot decode image"),
        ("wrong_weights", "do not fit res2net50_26w_4s: 427 missing keys"),
        ("missing_weights", "cannot load weights: r2n.load_state_dict: no such file"),
        ("unknown_model", "unknown model 'resnet50'; known: res2net50_26w_4s"),
    ],
)
def test_user_errors_are_one_line(files, capsys, case, message):
    model, weights, images = "res2net50_26w_4s", files["weights"], [files["wide"]]
    if case == "missing_image":
        images = [files["wide"], str(files["dir"] / "nope.png")]
    elif case == "not_image":
        images = [files["not_image"]]
    elif case == "wrong_weights":
        weights = files["tresnet_weights"]
    elif case == "missing_weights":
        weights = str(files["dir"] / "nope.safetensors")
    else:
        model = "resnet50"
    code = main(["classify", "--model", model, "--weights", weights, *images])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("r2n classify: error: "), captured.err
    assert message in lines[0]


def test_command_line_entry_point(files):
    """The installed module runs as a program; a user error has no traceback."""
    ok = subprocess.run(
        [sys.executable, "-m", "r2n", "classify", "--model", "res2net50_26w_4s"]
        + ["--weights", files["weights"], files["wide"], "--topk", "1"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[1].strip().startswith("1.")
    bad = subprocess.run(
        [sys.executable, "-m", "r2n", "classify", "--model", "res2net50_26w_4s"]
        + ["--weights", files["weights"], files["not_image"]],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
