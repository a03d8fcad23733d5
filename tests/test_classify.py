"""``r2n classify``: preprocessing as timm's, many images, formats, one-line errors.

The tests write their own images (Pillow, or a PNG assembled by hand for the
decompression bombs) and weights (a random r2n state_dict saved to
.safetensors, and small timm models exported as Hub directories); nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.numpy import save_file
from timm.models._hub import save_for_hf

import r2n
import r2n.models
from r2n.cli import classify as classify_cli
from r2n.cli import main
from r2n.models import _preprocess


def _write_image(path, h, w, seed, mode="RGB"):
    pixels = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return str(path)


def _png_bomb(path, width, height):
    """A 1-bit PNG of width x height zeros: a few hundred KB on disk, the
    zlib stream written row by row so that the test never holds the image."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header))
        f.write(chunk(b"IDAT", idat) + chunk(b"IEND", b""))
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


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A small res2net (one block per stage) saved as a Hub directory, with
    its own preprocessing and class names, and timm's model of it."""
    d = tmp_path_factory.mktemp("hub")
    torch.manual_seed(3)
    model = timm.create_model("res2net50_26w_4s", pretrained=False, layers=[1, 1, 1, 1]).eval()
    data_config = {
        "input_size": (3, 96, 96),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": (0.5, 0.45, 0.4),
        "std": (0.25, 0.2, 0.3),
    }
    labels = {"label_names": [f"class{i}" for i in range(1000)]}
    save_for_hf(model, str(d / "ckpt"), data_config=data_config, model_config=labels)
    config = timm.data.resolve_data_config(
        model=timm.create_model(f"local-dir:{d / 'ckpt'}", pretrained=True)
    )
    return {
        "dir": str(d / "ckpt"),
        "timm": model,
        "transform": timm.data.create_transform(**config),
    }


def _classify(argv, stdin=None):
    """Run ``r2n classify ARGV`` in-process, parsed by the command's own
    parser, with captured streams: (exit code, stdout, stderr)."""
    parser = argparse.ArgumentParser()
    classify_cli.add_arguments(parser)
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    try:
        code = classify_cli.run(
            args.model,
            args.inputs,
            weights=args.weights,
            backend=args.backend,
            topk=args.topk,
            batch_size=args.batch_size,
            fmt=args.format,
            max_pixels=args.max_pixels,
            dask=args.dask,
            out=out,
            err=err,
            stdin=stdin,
        )
    except classify_cli.CliError as e:  # what main() prints
        code = 1
        err.write(f"r2n classify: error: {e}\n")
    return code, out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------- #
# Preprocessing
# --------------------------------------------------------------------------- #


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


@pytest.mark.parametrize(
    "config",
    [
        dict(crop_pct=0.95, interpolation="bicubic", crop_mode="squash"),
        dict(crop_pct=1.0, interpolation="lanczos", input_size=(3, 160, 160)),
        dict(crop_pct=0.8, interpolation="nearest", mean=(0.2, 0.3, 0.4), std=(0.5, 0.6, 0.7)),
    ],
    ids=["squash-bicubic", "lanczos-160", "nearest-meanstd"],
)
def test_preprocessing_follows_the_config_as_timm(files, config):
    full = {**r2n.models.ARCHS["res2net50_26w_4s"].preprocess, "crop_mode": "center", **config}
    transform = timm.data.create_transform(**full)
    pil = Image.open(files["wide"])
    theirs = transform(pil.convert("RGB")).numpy()
    np.testing.assert_allclose(_preprocess.preprocess(pil, full), theirs, rtol=0, atol=2e-6)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("h, w", [(2, 300), (300, 2), (1, 200), (300, 2000), (2000, 300)])
def test_elongated_images_stay_within_one_level_of_timm(h, w, interpolation):
    """Up to 8 Mpixel after the resize (300 x 2000: 256 x 1706) timm's pixels
    exactly; beyond (2 x 300 -> 256 x 38400), only the crop's box is
    resampled: a pixel may move by one 8-bit level, never more, and rarely."""
    rng = np.random.default_rng(h * w)
    pil = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
    config = {**r2n.models.ARCHS["res2net50_26w_4s"].preprocess, "interpolation": interpolation}
    theirs = timm.data.create_transform(**config)(pil).numpy()
    ours = _preprocess.preprocess(pil, config)
    level = (1 / 255) / np.asarray(config["std"], np.float32)[:, None, None]
    diff = np.abs(ours - theirs)
    if min(h, w) >= 300:
        assert diff.max() <= 2e-6
    assert (diff <= level * 1.0001 + 2e-6).all()
    assert (diff > 2e-6).mean() < 0.001


def test_a_1xN_image_is_never_resized_whole(monkeypatch):
    """The short side to 256 would make a 1 x 8000 image 256 x 2,048,000."""
    sizes = []
    resize = Image.Image.resize

    def recording(self, size, *args, **kwargs):
        sizes.append(size)
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording)
    config = r2n.models.ARCHS["res2net50_26w_4s"].preprocess
    for shape in [(1, 8000), (8000, 1), (3, 5000)]:
        pixels = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
        out = _preprocess.preprocess(Image.fromarray(pixels), config)
        assert out.shape == (3, 224, 224) and np.isfinite(out).all()
    assert sizes and max(w * h for w, h in sizes) <= _preprocess.FULL_RESIZE_MAX_PIXELS, sizes


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's VmHWM")
def test_a_1xN_png_costs_megabytes_not_gigabytes(tmp_path):
    """Peak memory of preprocessing a decoded 1 x 8000 PNG, in a fresh process
    (today's main: about 2 GB more). VmHWM is the process's own high-water
    mark; getrusage's ru_maxrss would carry pytest's over the exec."""
    path = _write_image(tmp_path / "line.png", 1, 8000, 4)
    code = (
        "import sys\n"
        "from r2n.models import _preprocess, ARCHS\n"
        "def peak_mib():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1]) // 1024\n"
        "image = _preprocess.load_image(sys.argv[1])\n"
        "before = peak_mib()\n"
        "_preprocess.preprocess(image, ARCHS['res2net50_26w_4s'].preprocess)\n"
        "print(peak_mib() - before)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        [sys.executable, "-c", code, path], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) < 64, (
        f"preprocessing a 1 x 8000 PNG raised peak RSS by {run.stdout} MiB"
    )


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_images_are_scaled_not_clipped(tmp_path, mode):
    rng = np.random.default_rng(5)
    values = rng.integers(0, 65536, (60, 80))
    values[0, :4] = [0, 128, 129, 65535]  # rounding edges: 128/257 -> 0, 129/257 -> 1
    if mode == "I;16":
        path = tmp_path / "deep.png"
        Image.fromarray(values.astype(np.uint16)).save(path)
    else:
        path = tmp_path / "deep.tif"
        Image.fromarray(values.astype(np.int32)).save(path)
    image = _preprocess.load_image(path)
    assert image.mode == mode
    expected = np.round(values / 257).astype(np.uint8)
    rgb = np.asarray(_preprocess.to_rgb(image))
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    assert list(rgb[0, :4, 0]) == [0, 0, 1, 255]
    config = r2n.models.ARCHS["res2net50_26w_4s"].preprocess
    eight_bit = Image.fromarray(expected, mode="L")
    assert np.array_equal(
        _preprocess.preprocess(image, config), _preprocess.preprocess(eight_bit, config)
    )


def test_class_names_are_imagenet():
    names = _preprocess.class_names()
    assert len(names) == 1000 and names[0].startswith("tench") and names[999].startswith("toilet")


# --------------------------------------------------------------------------- #
# One image, as before
# --------------------------------------------------------------------------- #


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


def test_tagged_name_classifies_as_its_architecture(files):
    argv = ["--weights", files["weights"], "--topk", "2", files["wide"]]
    bare = _classify(["--model", "res2net50_26w_4s", *argv])
    tagged = _classify(["--model", "res2net50_26w_4s.in1k", *argv])
    assert bare[0] == tagged[0] == 0 and bare[1] == tagged[1]


@pytest.mark.parametrize(
    "case, message",
    [
        ("not_image", "cannot decode image"),
        ("wrong_weights", "do not fit res2net50_26w_4s: 427 missing keys"),
        ("missing_weights", "cannot load weights: r2n.load_state_dict: no such file"),
        ("unknown_model", "unknown model 'resnet50'; known models: res2net50_26w_4s"),
        ("unknown_tag", "unknown tag 'in21k' of res2net50_26w_4s; timm's tags: in1k"),
        ("no_weights", "--weights is required with a model name"),
        ("no_images", "no image files in directory"),
        ("bad_topk", "--topk must be >= 1, got 0"),
    ],
)
def test_user_errors_are_one_line(files, tmp_path, capsys, case, message):
    model, images = "res2net50_26w_4s", [files["wide"]]
    weights = ["--weights", files["weights"]]
    extra = []
    if case == "not_image":
        images = [files["not_image"]]
    elif case == "wrong_weights":
        weights = ["--weights", files["tresnet_weights"]]
    elif case == "missing_weights":
        weights = ["--weights", str(files["dir"] / "nope.safetensors")]
    elif case == "unknown_model":
        model = "resnet50"
    elif case == "unknown_tag":
        model = "res2net50_26w_4s.in21k"
    elif case == "no_weights":
        weights = []
    elif case == "no_images":
        images = [str(tmp_path)]  # an empty directory
    elif case == "bad_topk":
        extra = ["--topk", "0"]
    code = main(["classify", "--model", model, *weights, *extra, *images])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    lines = captured.err.splitlines()
    assert lines and all(line.startswith("r2n classify: error: ") for line in lines), captured.err
    assert message in lines[0] and len(lines) <= 2  # no_images: the directory, then "no images"


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
    assert ok.stderr == ""  # piped: no progress bar
    bad = subprocess.run(
        [sys.executable, "-m", "r2n", "classify", "--model", "res2net50_26w_4s"]
        + ["--weights", files["weights"], files["not_image"]],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- #
# Bounds: decompression bombs, pixel limits
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "width, height, max_pixels, message",
    [
        (30000, 30000, None, r"refused: Image size \(900000000 pixels\) exceeds limit"),
        (
            10000,
            10000,
            None,
            r"is 10000 x 10000 = 100,000,000 pixels, above the limit of 89,478,485",
        ),
        (257, 301, 77_000, r"is 257 x 301 = 77,357 pixels, above the limit of 77,000"),
    ],
    ids=["pillow-bomb", "above-default-bound", "above-max-pixels"],
)
def test_bombs_and_large_images_are_one_line_and_skipped(
    files, tmp_path, width, height, max_pixels, message
):
    if width == 257:
        big = files["tall"]
    else:
        big = _png_bomb(tmp_path / "bomb.png", width, height)
        assert os.path.getsize(big) < 2_000_000
    argv = ["--model", "res2net50_26w_4s", "--weights", files["weights"], "--topk", "1"]
    if max_pixels:
        argv += ["--max-pixels", str(max_pixels)]
    code, out, err = _classify([*argv, big, files["wide"]])
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 2 and lines[1] == "r2n classify: 1 of 2 images failed", err
    assert lines[0].startswith("r2n classify: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert out.splitlines()[0] == files["wide"]  # the other image still ran


# --------------------------------------------------------------------------- #
# Many images: directories, globs, lists, batches, formats, progress
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def album(tmp_path_factory):
    """Seven images in a directory (one of them broken), plus files to skip."""
    d = tmp_path_factory.mktemp("album")
    paths = [
        _write_image(d / f"img{i}.{'png' if i % 2 else 'jpg'}", 50 + i, 70, i) for i in range(6)
    ]
    broken = d / "img9.png"
    broken.write_bytes(b"\x89PNG broken")
    (d / "readme.txt").write_text("not an image")
    _write_image(d / ".hidden.png", 30, 30, 9)
    (d / "sub.png").mkdir()  # a directory with an image's name
    return {"dir": str(d), "images": paths, "broken": str(broken)}


def _ours(hub, paths, topk=3):
    """Top-k (class, probability) per image from the model and transform timm
    builds from the same directory."""
    with torch.no_grad():
        x = torch.stack([hub["transform"](Image.open(p).convert("RGB")) for p in paths])
        p = torch.softmax(hub["timm"](x).double(), dim=1).numpy()
    return [[(int(c), float(row[c])) for c in np.argsort(-row, kind="stable")[:topk]] for row in p]


def test_directory_in_batches_skips_the_broken_image(hub, album):
    code, out, err = _classify(
        [
            "--model",
            hub["dir"],
            "--batch-size",
            "4",
            "--format",
            "jsonl",
            "--topk",
            "3",
            album["dir"],
        ]
    )
    assert code == 1
    records = [json.loads(line) for line in out.splitlines()]
    # sorted by name; readme.txt, .hidden.png and the directory sub.png skipped
    assert [r["image"] for r in records] == album["images"]
    for record, expected in zip(records, _ours(hub, album["images"]), strict=True):
        assert [t["rank"] for t in record["top"]] == [1, 2, 3]
        assert [t["class"] for t in record["top"]] == [c for c, _ in expected]
        np.testing.assert_allclose(
            [t["probability"] for t in record["top"]], [p for _, p in expected], rtol=1e-4
        )
        assert record["top"][0]["label"] == f"class{expected[0][0]}"  # config's label_names
    lines = err.splitlines()
    assert len(lines) == 2 and "cannot decode image" in lines[0] and album["broken"] in lines[0]
    assert lines[1] == "r2n classify: 1 of 7 images failed"


def test_glob_list_and_stdin_inputs_in_order(hub, album, tmp_path):
    images = album["images"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two images\n{images[4]}\n\n  {images[1]}  \n")
    pattern = os.path.join(album["dir"], "img[0-2].*")
    stdin = io.StringIO(f"{images[5]}\n")
    code, out, err = _classify(
        ["--model", hub["dir"], "--format", "csv", "--topk", "1", pattern, f"@{listing}", "@-"],
        stdin=stdin,
    )
    assert code == 0 and err == ""
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["image", "rank", "class", "probability", "label"]
    order = [images[0], images[1], images[2], images[4], images[1], images[5]]
    assert [r[0] for r in rows[1:]] == order
    expected = _ours(hub, order, topk=1)
    for row, [(c, p)] in zip(rows[1:], expected, strict=True):
        assert row[1] == "1" and int(row[2]) == c and row[4] == f"class{c}"
        assert abs(float(row[3]) - p) <= 1e-4 * p + 1e-6


def test_batch_size_does_not_change_results(hub, album):
    argv = ["--model", hub["dir"], "--format", "jsonl", *album["images"]]
    runs = [_classify([*argv, "--batch-size", b]) for b in ("1", "3", "64")]
    parsed = [[json.loads(line) for line in out.splitlines()] for _, out, _ in runs]
    for other in parsed[1:]:
        for a, b in zip(parsed[0], other, strict=True):
            assert a["image"] == b["image"]
            assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
            np.testing.assert_allclose(
                [t["probability"] for t in a["top"]],
                [t["probability"] for t in b["top"]],
                rtol=1e-5,
            )


def test_missing_inputs_are_reported_and_the_rest_runs(hub, album, tmp_path):
    images = album["images"][:2]
    code, out, err = _classify(
        [
            "--model",
            hub["dir"],
            "--topk",
            "1",
            images[0],
            str(tmp_path / "nope.png"),
            os.path.join(album["dir"], "*.gif"),
            f"@{tmp_path / 'nolist.txt'}",
            images[1],
        ]
    )
    assert code == 1
    assert [line for line in out.splitlines() if not line.startswith(" ")] == images
    lines = err.splitlines()
    assert "no files match" in lines[0] and "cannot read list file" in lines[1]
    assert "no such image file" in lines[2] and lines[3] == "r2n classify: 1 of 3 images failed"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_only(hub, album):
    args = dict(weights=None, topk=1, batch_size=2, fmt="csv")
    for stream, drawn in ((_Terminal(), True), (io.StringIO(), False)):
        out = io.StringIO()
        code = classify_cli.run(hub["dir"], album["images"], out=out, err=stream, **args)
        assert code == 0
        text = stream.getvalue()
        if drawn:
            assert "\r[" in text and "6/6 images" in text and text.endswith("\r\033[K")
            assert "\r[" not in out.getvalue()  # the bar never goes to stdout
        else:
            assert text == ""


def test_exit_codes_as_a_program(hub, album):
    """A bad image: the others are printed, exit code 1; all good: 0."""
    base = [sys.executable, "-m", "r2n", "classify", "--model", hub["dir"], "--topk", "1"]
    base += ["--backend", "reference"]  # no Numba compile in each new process
    bad = subprocess.run(
        [*base, album["images"][0], album["broken"]], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stdout.splitlines()[0] == album["images"][0]
    good = subprocess.run([*base, album["images"][0]], capture_output=True, text=True)
    assert good.returncode == 0 and good.stderr == ""
    # A reader that went away (`| head`): status 1, no traceback.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        gone = subprocess.run([*base, *album["images"]], stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert gone.returncode == 1 and gone.stderr == b"", gone.stderr


def test_hub_directory_and_weights_do_not_mix(hub, files):
    code, out, err = _classify(
        ["--model", hub["dir"], "--weights", files["weights"], files["wide"]]
    )
    assert code == 1 and "--weights is not used with a checkpoint directory" in err
