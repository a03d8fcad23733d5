"""``r2n profile``: every layer timed once per forward, shares summing to 1, the
profiled forward computing the model's function, FLOPs agreeing with timm's
modules, ONNX Runtime's per-node profile mapped onto r2n's layers.

Small models (one block per stage, ``create(..., _params=...)``) on small
images; timings are not asserted (the machine is shared), only their
presence and consistency.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import r2n
import r2n.models
from r2n._bench import engines, profile
from r2n.cli import profile as profile_cli
from r2n.models._model import Layers

pytest.importorskip("numba")

SMALL = {"layers": (1, 1, 1, 1)}


def _small(name, **kw):
    return r2n.models.create(name, _params=SMALL, **kw)


def _images(rng, n, hw):
    return rng.standard_normal((n, 3, hw, hw)).astype(np.float32)


def _expected_res2net(deep_stem=False, fused=False):
    names = ["conv1.0", "conv1.3", "conv1.6"] if deep_stem else ["conv1"]
    names.append("maxpool")
    for stage in range(1, 5):
        block = f"layer{stage}.0"
        if fused:
            names.append(block)
            continue
        names += [f"{block}.conv1", f"{block}.chain"]
        if deep_stem and stage > 1:
            names.append(f"{block}.shortcut.pool")
        names += [f"{block}.shortcut", f"{block}.conv3"]
    return names + ["global_pool", "fc"]


def test_plain_layers_ignore_names_and_return_steps_unchanged():
    layers = Layers("cpu", "numpy")

    def fn(x):
        return x

    assert layers.step("maxpool", "max_pool2d", fn) is fn  # no wrapper when not profiling


@pytest.mark.parametrize("fused", [False, True])
def test_res2net_profile_has_every_layer_once_and_shares_sum_to_one(rng, fused):
    model = _small("res2net50_26w_4s")
    x = _images(rng, 2, 32)
    clock = "cpu" if fused else "wall"  # both clocks
    out = profile.profile(
        model,
        x,
        threads=1,
        peak_gflops=100.0,
        fused_blocks=fused,
        min_time=0,
        min_reps=3,
        clock=clock,
    )
    assert out["clock"] == clock
    names = [r["name"] for r in out["layers"]]
    assert names == _expected_res2net(fused=fused)  # forward order, each once
    assert out["check_rel_err"] <= profile.CHECK_TOL and out["reps"] == 3
    assert sum(r["share"] for r in out["layers"]) == pytest.approx(1.0)
    assert out["total_ms"] == pytest.approx(sum(r["ms"] for r in out["layers"]))
    assert out["overhead"] == pytest.approx(out["total_ms"] / out["forward_ms"] - 1)
    for r in out["layers"]:
        assert len(r["times_ms"]) == 3 and r["ms"] == pytest.approx(np.median(r["times_ms"]))
        assert r["out_shape"][0] == 2
        assert r["gflops"] == pytest.approx(r["flops"] / r["ms"] / 1e6)
        assert r["pct_peak"] == pytest.approx(r["gflops"])  # peak 100 x 1 thread
        assert (r["flops"] > 0) == (
            r["op"] in ("conv2d", "res2net_chain", "bottle2neck", "linear")
        )
    assert sum(g["ms"] for g in out["roles"]) == pytest.approx(out["total_ms"])
    assert sum(g["layers"] for g in out["roles"]) == len(names)


def test_parts_and_fused_blocks_count_the_same_flops_as_timms_modules(rng):
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    model = _small("res2net50d")
    x = _images(rng, 1, 32)
    parts = profile.profile(model, x, threads=1, peak_gflops=None, min_time=0, min_reps=1)
    fused = profile.profile(
        model, x, threads=1, peak_gflops=None, fused_blocks=True, min_time=0, min_reps=1
    )
    assert [r["name"] for r in parts["layers"]] == _expected_res2net(deep_stem=True)
    state = engines.random_weights("res2net50d", params=SMALL, seed=0)
    net = engines.timm_model("res2net50d", state, params=SMALL)
    flops = []
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            k = m.weight.shape
            m.register_forward_hook(
                lambda mod, i, o, k=k: flops.append(2 * o.numel() * k[1] * k[2] * k[3])
            )
        elif isinstance(m, torch.nn.Linear):
            m.register_forward_hook(
                lambda mod, i, o: flops.append(2 * o.numel() * mod.in_features)
            )
    with torch.no_grad():
        net(torch.from_numpy(x))
    assert parts["flops"] == fused["flops"] == sum(flops)
    assert parts["layers"][0]["pct_peak"] is None  # no peak given: no % of it


def test_multiply_flops_counts_each_algorithms_products():
    # The definition: 2 x outputs x the kernel's taps x input channels per group.
    assert profile.multiply_flops("direct", 2, 5, 15, (3, 3), 7, 9) == 2 * 2 * 15 * 7 * 9 * 5 * 9
    assert profile.multiply_flops("direct", 1, 8, 4, (1, 1), 6, 6) == 2 * 4 * 36 * 8
    # Winograd on whole tiles: 16 instead of 36 (F(2x2)), 36 instead of 144 (F(4x4)).
    direct = profile.multiply_flops("direct", 1, 32, 32, (3, 3), 8, 8)
    assert profile.multiply_flops("winograd_2x2", 1, 32, 32, (3, 3), 8, 8) * 36 == direct * 16
    assert profile.multiply_flops("winograd_4x4", 1, 32, 32, (3, 3), 8, 8) * 144 == direct * 36
    # Partial edge tiles count whole: 7x9 outputs are 4x5 tiles of 2x2, 2x3 of 4x4.
    assert profile.multiply_flops("winograd_2x2", 3, 5, 6, (3, 3), 7, 9) == 2 * 3 * 20 * 16 * 30
    assert profile.multiply_flops("winograd_4x4", 3, 5, 6, (3, 3), 7, 9) == 2 * 3 * 6 * 36 * 30
    with pytest.raises(ValueError, match="algorithm must be one of"):
        profile.multiply_flops("fft", 1, 1, 1, (3, 3), 4, 4)


def test_each_conv_and_chain_reports_the_algorithm_its_prepared_layer_ran(rng):
    from r2n.cpu.res2net import PreparedChain

    model = _small("res2net50_26w_4s")
    x = _images(rng, 1, 64)
    report = profile.profile(model, x, threads=1, peak_gflops=100.0, min_time=0, min_reps=1)
    rows = {r["name"]: r for r in report["layers"]}
    seen = set()
    for name, r in rows.items():
        if r["op"] != "res2net_chain":
            # 1x1s, the stem and the fc run the definition.
            assert r["algorithm_flops"] == r["flops"], name
            continue
        n, c, h, w = r["in_shape"]
        width = c // 4
        stride = 1 if r["out_shape"][2] == h else 2
        stype = "normal" if stride == 1 else "stage"
        weights = [np.ones((width, width, 3, 3), np.float32)] * 3
        chain = PreparedChain(
            weights, None, scale=4, stype=stype, stride=stride, groups=1, width=width,
            dtype=np.float32,
        )  # fmt: skip
        assert r["algorithm"] == chain.algorithm(n, h, w), name
        seen.add(r["algorithm"])
        ho, wo = r["out_shape"][2:]
        want = 3 * profile.multiply_flops(r["algorithm"], n, width, width, (3, 3), ho, wo)
        assert r["algorithm_flops"] == want, name
        assert r["algorithm_floor_ms"] == pytest.approx(want / 100.0 / 1e6)
    # Stage chains and the small planes' chains direct, the 16x16 chains of 26
    # channels on F(4x4) (F(2x2)'s report: the prepared-conv test below).
    assert {"direct", "winograd_4x4"} <= seen
    assert report["algorithm_flops"] == sum(r["algorithm_flops"] for r in rows.values())
    assert report["algorithm_flops"] < report["flops"]
    assert profile.count_flops(model, x) == {
        "flops": report["flops"],
        "algorithm_flops": report["algorithm_flops"],
    }
    # One row per block: its chain's algorithm counted the same way.
    fused = profile.profile(
        model, x, threads=1, peak_gflops=100.0, fused_blocks=True, min_time=0, min_reps=1
    )
    assert fused["algorithm_flops"] == report["algorithm_flops"]
    assert {r["algorithm"] for r in fused["layers"] if r["op"] == "bottle2neck"} == seen
    text = profile_cli.format_report({**report, **_report_header()})
    assert "GFLOP in r2n's algorithms" in text and " F4 " in text


@pytest.mark.parametrize(
    "c, hw, n, algorithm",
    [(64, 16, 1, "winograd_4x4"), (16, 10, 2, "winograd_2x2"), (256, 7, 1, "direct")],
)
def test_a_prepared_3x3_conv_reports_the_algorithm_it_ran(rng, c, hw, n, algorithm):
    # TResNet's convs: the layer's own rule (F(4x4) on a 16x16 plane of 64
    # channels, F(2x2) on 10x10 of 16, direct for 256 wide channels at 7x7)
    # decides, and the count follows it; the output equals the plain layer's.
    from r2n.params import FoldedConv

    recorder = profile.Recorder()
    layers = profile.ProfilingLayers("cpu", "numpy", recorder)
    w = (rng.standard_normal((c, c, 3, 3)) / (3 * np.sqrt(c))).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    conv = layers.conv(FoldedConv(w, b), padding=1, act="leaky_relu", slope=1e-3,
                       name="body.layer1.0.conv1")  # fmt: skip
    plain = Layers("cpu", "numpy").conv(FoldedConv(w, b), padding=1, act="leaky_relu", slope=1e-3)
    x = _images(rng, n, hw)[:, :1].repeat(c, axis=1) + rng.standard_normal((n, c, hw, hw)).astype(
        np.float32
    )
    recorder.recording = True
    np.testing.assert_array_equal(conv(x), plain(x))
    (record,) = recorder.records.values()
    assert record.algorithm == algorithm
    assert record.algorithm_flops == profile.multiply_flops(algorithm, n, c, c, (3, 3), hw, hw)
    if algorithm != "direct":
        assert record.algorithm_flops < record.flops


def _report_header():
    return dict(
        model="res2net50_26w_4s", batch=1, size=64, backend="cpu", threads=1,
        fma_peak_gflops=100.0,
    )  # fmt: skip


def test_tresnet_profile_times_blur_se_pools_and_adds(rng):
    model = _small("tresnet_m", num_classes=10)
    out = profile.profile(model, _images(rng, 1, 64), threads=1, peak_gflops=50.0, min_time=0)
    names = [r["name"] for r in out["layers"]]
    assert names[:2] == ["body.s2d", "body.conv1"] and names[-2:] == [
        "head.global_pool",
        "head.fc",
    ]
    ops = {r["name"]: r["op"] for r in out["layers"]}
    # layer1.0: BasicBlock with SE, stride 1, same channels: the add + ReLU
    # fused into the SE, which the ONNX export's ".act" maps to.
    assert [n for n in names if n.startswith("body.layer1.0.")] == [
        "body.layer1.0.conv1",
        "body.layer1.0.conv2",
        "body.layer1.0.se",
    ]
    se1 = next(r for r in out["layers"] if r["name"] == "body.layer1.0.se")
    assert se1["residual"] and tuple(se1["aliases"]) == ("body.layer1.0.act",)
    # layer2.0: stride 2: pooled shortcut, blur after conv1.
    assert ops["body.layer2.0.downsample.0"] == "avg_pool2d"
    assert ops["body.layer2.0.downsample.1"] == "conv2d"
    assert ops["body.layer2.0.conv1.aa"] == "blur_pool2d"
    # layer3.0 / layer4.0: Bottlenecks, blur after conv2; SE only in layer3.
    assert ops["body.layer3.0.conv2.aa"] == "blur_pool2d" and ops["body.layer3.0.se"]
    assert "body.layer4.0.se" not in ops and ops["body.layer4.0.conv3"] == "conv2d"
    se = next(r for r in out["layers"] if r["name"] == "body.layer1.0.se")
    assert se["flops"] == 2 * 2 * 64 * 64  # two 64 x 64 matrices, one image
    assert sum(r["share"] for r in out["layers"]) == pytest.approx(1.0)
    roles = {g["role"] for g in out["roles"]}
    assert {"stem", "blur", "SE", "pool", "fc", "shortcut"} <= roles


def test_a_profiled_forward_that_computes_something_else_is_refused(rng, monkeypatch):
    real = profile.ProfilingLayers._chain

    def off(self, *args, **kwargs):
        chain = real(self, *args, **kwargs)
        return lambda x: chain(x) * np.float32(1.01)

    monkeypatch.setattr(profile.ProfilingLayers, "_chain", off)
    with pytest.raises(RuntimeError, match="differ from the model"):
        profile.profile(_small("res2net50_26w_4s"), _images(rng, 1, 32), threads=1, peak_gflops=1)


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "p.json"
    argv = ["res2net50_26w_4s", "--size", "32", "--threads", "1", "--min-time", "0"]
    assert profile_cli.main([*argv, "--json", str(path)]) == 0
    text = capsys.readouterr().out
    assert "layer4.2.chain" in text and "By role" in text and "% peak" in text
    report = json.loads(path.read_text())
    assert report["tool"] == "r2n profile" and report["threads"] == 1
    assert report["fma_peak_gflops"] > 0
    assert len(report["layers"]) == 2 + 16 * 3 + 4 + 2  # stem, pool; 16 blocks; 4 shortcuts
    assert report["flops"] == sum(r["flops"] for r in report["layers"])
    text = profile_cli.markdown(report, top=3)  # what benchmarks/report.py prints
    assert "| chain | 16 |" in text
    top = text.split("The 3 layers with the most time above their floor:")[1]
    assert len([line for line in top.splitlines() if line.startswith("| ")]) == 1 + 3  # header + 3


def test_r2n_help_lists_profile(capsys):
    from r2n.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])  # argparse formats every sub-command's help ("%" must be "%%")
    assert info.value.code == 0 and "profile" in capsys.readouterr().out


def test_cli_usage_errors_exit_2():
    with pytest.raises(SystemExit) as info:
        profile_cli.main(["not_a_model"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        profile_cli.main(["tresnet_m", "--threads", "0"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:  # the thread CPU clock needs one thread
        profile_cli.main(["tresnet_m", "--threads", "2", "--clock", "cpu"])
    assert info.value.code == 2


def test_onnx_node_names_become_module_paths():
    key = profile.module_key
    assert key("/layer1/layer1.0/convs.0/Conv") == "layer1.0.convs.0.Conv"
    assert key("/body/layer1/layer1.0/conv1/conv/Conv") == "body.layer1.0.conv1.conv.Conv"
    assert key("/body/layer2/layer2.0/downsample/downsample.0/AveragePool") == (
        "body.layer2.0.downsample.0.AveragePool"
    )
    assert key("/conv1/conv1.0/Conv") == "conv1.0.Conv"
    assert key("/layer1/layer1.0/Split") == "layer1.0.Split"


def test_onnx_layer_map_assigns_activations_split_and_the_residual_add():
    layers = [
        {"name": "conv1", "aliases": []},
        {"name": "layer1.0.conv1", "aliases": ["layer1.0.bn1"]},
        {"name": "layer1.0.chain", "aliases": ["layer1.0.convs", "layer1.0.Split"]},
        {"name": "layer1.0.shortcut", "aliases": ["layer1.0.downsample"]},
        {"name": "layer1.0.conv3", "aliases": [], "residual": True},
    ]
    nodes = [
        "/conv1/Conv",
        "/act1/Relu",  # after conv1: its fused activation
        "/layer1/layer1.0/conv1/Conv",
        "/layer1/layer1.0/relu/Relu",
        "/layer1/layer1.0/Split",
        "/layer1/layer1.0/convs.0/Conv",
        "/layer1/layer1.0/relu_1/Relu",
        "/layer1/layer1.0/Add",  # a chain add
        "/layer1/layer1.0/convs.1/Conv",
        "/layer1/layer1.0/Concat",
        "/layer1/layer1.0/conv3/Conv",
        "/layer1/layer1.0/downsample/downsample.0/Conv",
        "/layer1/layer1.0/Add_1",  # the residual add: the block's last Add
        "/layer1/layer1.0/relu_3/Relu",
    ]
    got = profile.onnx_layer_map(nodes, layers)
    assert [got[n] for n in nodes] == [
        "conv1",
        "conv1",
        "layer1.0.conv1",
        "layer1.0.conv1",
        "layer1.0.chain",
        "layer1.0.chain",
        "layer1.0.chain",
        "layer1.0.chain",
        "layer1.0.chain",
        "layer1.0.chain",
        "layer1.0.conv3",
        "layer1.0.shortcut",
        "layer1.0.conv3",
        "layer1.0.conv3",
    ]


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnxruntime", "onnx", "timm")),
    reason="needs onnxruntime, onnx and timm (pip install 'r2n[bench]')",
)
@pytest.mark.parametrize("name", ["res2net50d", "tresnet_m"])
def test_onnxruntime_profile_maps_every_node_to_an_r2n_layer(rng, tmp_path, name):
    state = engines.random_weights(name, params=SMALL, seed=0)
    model = r2n.models.create(name, state, _params=SMALL)
    x = _images(rng, 1, 64)
    out = profile.profile(model, x, threads=1, peak_gflops=None, min_time=0, min_reps=1)
    path, _ = engines.cached_onnx(name, state, 1, 64, params=SMALL, directory=str(tmp_path))
    ort = profile.onnxruntime_profile(path, x, 1, out["layers"], runs=2)
    assert ort["other_ms"] == 0 and ort["total_ms"] > 0
    assert ort["total_ms"] == pytest.approx(sum(ort["layers"].values()))
    names = {r["name"] for r in out["layers"]}
    assert set(ort["layers"]) <= names
    # Every layer that computes (a conv, a chain, the fc) has ONNX Runtime time.
    computing = {r["name"] for r in out["layers"] if r["flops"] > 0}
    assert computing <= set(ort["layers"])
