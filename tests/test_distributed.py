"""r2n.models.Predictor, classify_on_dask and ``r2n classify --dask``: one
model per process, results in input order, identical to a single-process
run, bad images reported, not fatal.

The cluster tests start one real dask.distributed LocalCluster of 2 worker
processes x 1 thread for the module, on generated images and a scaled-down
Res2Net (one block per stage, 10 classes) whose weights are written to
tmp_path (an .npz, and a Hub checkpoint directory for the command line).
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import sys

import numpy as np
import pytest

import r2n
import r2n.models
from r2n.cli import classify as classify_cli
from r2n.cli import main
from r2n.models import Prediction, Predictor, _dask, _predictor
from r2n.models._model import Arch
from r2n.models._preprocess import load_image, preprocess

NAME = "res2net50_26w_4s"
SMALL = {"layers": (1, 1, 1, 1)}
NUM_CLASSES = 10


def _small_state(seed):
    arch = r2n.models.ARCHS[NAME]
    small = Arch(arch.name, arch.family, {**arch.params, **SMALL}, arch.preprocess)
    return r2n.models.random_state_dict(r2n.models.res2net.expected_keys(small, NUM_CLASSES), seed)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "small.npz"
    np.savez(path, **_small_state(seed=1))
    return str(path)


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    """The scaled-down Res2Net as a Hub checkpoint directory: config.json (one
    block per stage as timm's model_args, 10 classes with names, 96 px bicubic
    preprocessing with its own mean and std) and model.safetensors."""
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("hub") / "small.in1k"
    folder.mkdir()
    save_file(_small_state(seed=3), str(folder / "model.safetensors"))
    config = {
        "architecture": NAME,
        "num_classes": NUM_CLASSES,
        "model_args": {"layers": list(SMALL["layers"])},
        "label_names": [f"class{i}" for i in range(NUM_CLASSES)],
        "pretrained_cfg": {
            "tag": "in1k",
            "input_size": [3, 96, 96],
            "crop_pct": 0.9,
            "interpolation": "bicubic",
            "mean": [0.5, 0.45, 0.4],
            "std": [0.25, 0.2, 0.3],
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """8 random images of different sizes and formats, then a file that is not an
    image and a path that does not exist."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    paths = []
    for i, (w, h) in enumerate([(300, 260), (240, 320), (256, 256), (500, 300)] * 2):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = folder / f"image{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    bad = folder / "not_an_image.jpg"
    bad.write_text("this is text")
    return paths, str(bad), str(folder / "missing.png")


def _make(weights, **options):
    return Predictor(NAME, weights, _params=SMALL, **options)


def _same(a: list[Prediction], b: list[Prediction]) -> None:
    assert [p.path for p in a] == [p.path for p in b]
    for p, q in zip(a, b, strict=True):
        assert p.error == q.error
        if p.error is None:
            np.testing.assert_array_equal(p.classes, q.classes)
            np.testing.assert_array_equal(p.probabilities, q.probabilities)


# --------------------------------------------------------------------------- #
# Predictor, in one process
# --------------------------------------------------------------------------- #


def test_predictor_gives_the_models_softmax_top_k(weights, images):
    paths = images[0][:5]
    predictor = _make(weights, batch_size=2, topk=3)
    classes, probabilities = predictor(paths)

    model = r2n.models.create(NAME, r2n.load_state_dict(weights), num_classes=10, _params=SMALL)
    config = r2n.models.ARCHS[NAME].preprocess
    logits = model(np.stack([preprocess(load_image(p), config) for p in paths])).astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert classes.shape == probabilities.shape == (5, 3)
    for row in range(5):
        order = sorted(range(NUM_CLASSES), key=lambda c: (-p[row, c], c))[:3]
        assert classes[row].tolist() == order
        np.testing.assert_allclose(probabilities[row], p[row, order], rtol=1e-12)


def test_predictor_pickles_small_and_shares_the_process_model(weights):
    predictor = _make(weights)
    blob = pickle.dumps(predictor)
    assert len(blob) < 1000  # name, path and options: no arrays travel
    copy = pickle.loads(blob)
    assert copy == predictor
    assert copy.model() is predictor.model()  # built once per process


def test_a_rewritten_weights_file_is_read_again(tmp_path, images):
    path = tmp_path / "w.npz"
    np.savez(path, **_small_state(seed=1))
    predictor = _make(str(path))
    first = predictor.model()
    before = predictor(images[0][:2])
    np.savez(path, **_small_state(seed=2))
    os.utime(path, ns=(1, 1))  # a different stamp even within one clock tick
    assert predictor.model() is not first
    after = predictor(images[0][:2])
    assert not np.array_equal(before[1], after[1])
    predictor.release()
    assert predictor._identity() not in _predictor._MODELS


def test_bad_images_are_reported_and_the_others_still_run(weights, images):
    good, bad, missing = images
    predictor = _make(weights, batch_size=3)
    mixed = [good[0], bad, good[1], missing, good[2]]
    results = predictor.predict_paths(mixed)
    assert [p.path for p in results] == mixed
    assert "cannot decode image" in results[1].error and results[1].classes is None
    assert "no such image file" in results[3].error
    _same([results[i] for i in (0, 2, 4)], predictor.predict_paths([good[0], good[1], good[2]]))


def test_predictor_sets_kernel_threads_for_its_calls_only(weights, images, monkeypatch):
    pytest.importorskip("numba")
    predictor = _make(weights, threads=1)
    model = predictor.model()
    seen = []
    original = model._prepared

    def spy(kind):
        seen.append(r2n.get_num_threads())
        return original(kind)

    monkeypatch.setattr(model, "_prepared", spy)
    before = r2n.get_num_threads()
    predictor(images[0][:1])
    assert seen == [1] and r2n.get_num_threads() == before


def test_predict_batch_is_table_shaped(weights, images):
    good, bad, _ = images
    predictor = _make(weights, topk=2)
    out = predictor.predict_batch({"path": np.array([good[0], bad], dtype=object)})
    assert out["classes"].shape == out["probabilities"].shape == (2, 2)
    expected = predictor.predict_paths([good[0]])[0]
    np.testing.assert_array_equal(out["classes"][0], expected.classes)
    assert out["error"][0] == "" and "cannot decode" in out["error"][1]
    assert (out["classes"][1] == -1).all() and np.isnan(out["probabilities"][1]).all()


def test_a_hub_directory_predicts_with_its_config_and_names(hub_dir, images, tmp_path):
    predictor = Predictor(hub_dir, None, batch_size=3, topk=4)
    assert predictor.name == "local-dir:" + os.path.abspath(hub_dir)
    assert pickle.loads(pickle.dumps(predictor)) == predictor
    assert predictor.labels() == [f"class{i}" for i in range(NUM_CLASSES)]
    model = r2n.models.create(hub_dir)
    assert model.preprocess["input_size"] == (3, 96, 96)
    paths = images[0][:4]
    x = np.stack([preprocess(load_image(p), model.preprocess) for p in paths])
    expected = _predictor.top_k(np.asarray(model(x), np.float64), 4)
    classes, probabilities = predictor(paths)
    np.testing.assert_array_equal(classes, expected[0])
    np.testing.assert_array_equal(probabilities, expected[1])
    assert predictor.load(paths[0]).shape == (3, 96, 96)
    with pytest.raises(ValueError, match="is a checkpoint directory, which holds its own"):
        Predictor(hub_dir, "w.safetensors")
    # A directory that is not here may be one on the workers: refused when built.
    elsewhere = Predictor(f"local-dir:{tmp_path / 'absent'}", None)
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        elsewhere.model()


def test_a_tagged_name_uses_its_tags_preprocessing_and_classes(weights):
    tresnet = Predictor("tresnet_m.miil_in1k_448", None, _params={"layers": (1, 1, 1, 1)})
    assert tresnet.model().preprocess["input_size"] == (3, 448, 448)
    assert len(tresnet.labels()) == 1000  # ImageNet's names
    res2net = _make(weights)  # 10 classes from the checkpoint: no names
    assert res2net.model().num_classes == NUM_CLASSES and res2net.labels() is None
    with pytest.raises(ValueError, match="unknown tag 'in21k' of res2net50_26w_4s"):
        Predictor("res2net50_26w_4s.in21k", None)


def test_max_pixels_refuses_larger_images(weights, images):
    path = images[0][0]  # 300 x 260
    results = _make(weights, max_pixels=300 * 260 - 1).predict_paths([path, images[0][1]])
    assert "above the limit of 77,999" in results[0].error and results[1].error is None
    assert _make(weights, max_pixels=300 * 260).predict_paths([path])[0].error is None


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(batch_size=0), "batch_size must be an int >= 1"),
        (dict(topk=1.5), "topk must be an int >= 1"),
        (dict(threads=0), "threads must be an int >= 1"),
        (dict(backend="tpu"), "backend must be None or one of"),
        (dict(max_pixels=0), "max_pixels must be an int >= 1"),
    ],
)
def test_bad_predictor_options_are_value_errors(options, message):
    with pytest.raises(ValueError, match=message):
        Predictor(NAME, None, **options)
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        Predictor("resnet50", None)


# --------------------------------------------------------------------------- #
# Dask
# --------------------------------------------------------------------------- #


class FakeClient:
    def __init__(self, facts):
        self.facts = facts

    def run(self, fn):
        return dict(self.facts)


def test_kernel_threads_share_each_machines_cores_between_its_workers():
    client = FakeClient(
        {
            "tcp://a:1": ("node-a", 16),
            "tcp://a:2": ("node-a", 16),
            "tcp://a:3": ("node-a", 16),
            "tcp://b:1": ("node-b", 32),
            "tcp://c:1": ("node-c", 2),
            "tcp://c:2": ("node-c", 2),
            "tcp://c:3": ("node-c", 2),
        }
    )
    threads = _dask.kernel_threads_per_worker(client)
    assert threads == {
        "tcp://a:1": 5,
        "tcp://a:2": 5,
        "tcp://a:3": 5,
        "tcp://b:1": 32,
        "tcp://c:1": 1,  # 3 workers on 2 cores: at least 1 each
        "tcp://c:2": 1,
        "tcp://c:3": 1,
    }


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with distributed.Client(cluster) as client:
        yield client
    cluster.close()


def test_dask_results_are_those_of_one_process_in_input_order(weights, images, client):
    good, bad, missing = images
    paths = good[:3] + [bad] + good[3:] + [missing]
    predictor = _make(weights, batch_size=2)
    expected = predictor.predict_paths(paths)  # one process, the same batches

    streamed = r2n.models.classify_on_dask(paths, predictor, client, max_in_flight=2)
    _same(list(streamed), expected)

    # One model per worker process, and the kernel threads split the cores.
    models = client.run(lambda: len(_predictor._MODELS))
    assert set(models.values()) <= {0, 1} and sum(models.values()) >= 1
    cores = client.run(_dask._usable_cores)
    threads = _dask.kernel_threads_per_worker(client)
    assert threads == {addr: max(1, n // 2) for addr, n in cores.items()}


def test_dask_stops_cleanly_when_the_consumer_stops(weights, images, client):
    predictor = _make(weights, batch_size=1)
    stream = r2n.models.classify_on_dask(images[0], predictor, client, max_in_flight=3)
    first = next(stream)
    assert first.path == images[0][0] and first.error is None
    stream.close()  # the submitted batches are cancelled, nothing hangs


# --------------------------------------------------------------------------- #
# Ray Data (only where ray is installed; not in CI)
# --------------------------------------------------------------------------- #


def test_ray_data_map_batches_gives_the_same_results(weights, images):
    ray = pytest.importorskip("ray")
    good, bad, _ = images
    paths = good + [bad]
    predictor = _make(weights, batch_size=4)
    expected = predictor.predict_paths(paths)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        ds = ray.data.from_items([{"path": p} for p in paths])
        rows = ds.map_batches(predictor.predict_batch, batch_size=4).take_all()
    finally:
        ray.shutdown()
    by_path = {row["path"]: row for row in rows}
    counts = collections.Counter(row["path"] for row in rows)
    assert set(counts.values()) == {1} and set(by_path) == set(paths)
    for p in expected:
        row = by_path[p.path]
        if p.error is None:
            np.testing.assert_array_equal(row["classes"], p.classes)
            np.testing.assert_array_equal(row["probabilities"], p.probabilities)
        else:
            assert row["error"] == p.error


# --------------------------------------------------------------------------- #
# r2n classify --dask
# --------------------------------------------------------------------------- #


def _command(argv, capsys):
    """``r2n classify ARGV`` in this process: (exit status, stdout, stderr)."""
    code = main(["classify", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("fmt", ["table", "csv", "jsonl"])
def test_classify_dask_prints_what_a_local_run_prints(
    hub_dir, images, client, capsys, monkeypatch, fmt
):
    """A folder (8 images and one that is not) given relative to the current
    directory, as a Hub directory's scaled-down model: the same bytes on
    stdout and stderr, bad image skipped, exit status 1, with and without
    --dask."""
    folder = os.path.dirname(images[1])  # not_an_image.jpg is in it
    monkeypatch.chdir(os.path.dirname(folder))
    argv = ["--model", hub_dir, "--format", fmt, "--batch-size", "3", "--topk", "3"]
    argv.append(os.path.basename(folder))
    local = _command(argv, capsys)
    on_dask = _command([*argv, "--dask", client.scheduler.address], capsys)
    assert on_dask == local
    # It ran on the workers: their per-process caches hold the directory's model.
    cached = client.run(lambda: [key[0] for key in _predictor._MODELS])
    assert "local-dir:" + os.path.abspath(hub_dir) in sum(cached.values(), [])
    code, out, err = on_dask
    assert code == 1
    bad = os.path.join(os.path.basename(folder), "not_an_image.jpg")
    assert err.splitlines() == [
        f"r2n classify: error: cannot decode image {bad!r}: cannot identify image file {bad!r}",
        "r2n classify: 1 of 9 images failed",
    ]
    if fmt == "jsonl":  # the label names are the directory's
        records = [json.loads(line) for line in out.splitlines()]
        assert len(records) == 8 and bad not in [r["image"] for r in records]
        assert all(t["label"] == f"class{t['class']}" for r in records for t in r["top"])


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_classify_dask_draws_the_progress_bar_on_a_terminal(hub_dir, images, client):
    err, out = _Terminal(), io.StringIO()
    paths = images[0][:4]
    address = client.scheduler.address
    code = classify_cli.run(hub_dir, paths, batch_size=2, dask=address, out=out, err=err)
    assert code == 0 and out.getvalue().count("\n  1.") == 4
    bar = err.getvalue()
    assert "\r[" + "#" * 15 + "-" * 15 + "] 2/4 images" in bar and "4/4 images" in bar
    assert bar.endswith("\r\033[K")


@pytest.mark.parametrize("case", ["wrong_weights", "missing_weights"])
def test_classify_dask_model_problems_are_the_local_one_line(
    case, weights, images, client, capsys, tmp_path
):
    """Raised on a worker, reported as here: one line, status 1, nothing printed."""
    if case == "wrong_weights":  # the one-block-per-stage checkpoint, for the full model
        argv = ["--model", NAME, "--weights", weights]
        message = "weights do not fit res2net50_26w_4s: 300 missing keys"
    else:
        argv = ["--model", NAME, "--weights", str(tmp_path / "nope.safetensors")]
        message = "cannot load weights: r2n.load_state_dict: no such file"
    argv.append(images[0][0])
    local = _command(argv, capsys)
    on_dask = _command([*argv, "--dask", client.scheduler.address], capsys)
    assert on_dask == local
    code, out, err = on_dask
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"r2n classify: error: {message}"), err


def test_classify_dask_without_distributed_names_the_extra(hub_dir, images, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    code, out, err = _command(
        ["--model", hub_dir, images[0][0], "--dask", "tcp://127.0.0.1:8786"], capsys
    )
    assert code == 1 and out == ""
    assert err.splitlines() == [
        'r2n classify: error: --dask needs dask.distributed: pip install "r2n[dask]" '
        '(in a checkout: pip install -e ".[dask]")'
    ]


def test_classify_dask_bad_address_is_one_line(hub_dir, images, capsys):
    pytest.importorskip("distributed")
    code, out, err = _command(["--model", hub_dir, images[0][0], "--dask", "udp://x:1"], capsys)
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("r2n classify: error: cannot reach the Dask scheduler 'udp://x:1'")
