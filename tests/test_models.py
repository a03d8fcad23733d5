"""Whole networks (r2n.models) against timm's models of the same names.

Each timm model gets random conv/fc weights (its own init, seeded) and random
BatchNorm affine parameters and running statistics, runs in eval mode in
float64, and exports its state_dict to .safetensors and .npz; r2n loads the
files with r2n.load_state_dict and must give float32 logits within 1e-4
(relative) and the same top-1 class, on every backend present.

The small models run at full size; res2net101*, tresnet_l and tresnet_xl have
their key layout checked at full size and their numerics on variants with
fewer blocks per stage (same widths and block types). Images are 64x64
(TResNet's space_to_depth and four strided stages leave 2x2 maps), batch 2.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import timm
import torch
from helpers import gpu_count, rel_err
from safetensors.numpy import save_file

import r2n
import r2n.models

SMALL = [
    "res2net50_26w_4s",
    "res2net50_26w_6s",
    "res2net50_26w_8s",
    "res2net50_48w_2s",
    "res2net50_14w_8s",
    "res2next50",
    "res2net50d",
    "tresnet_m",
]
# name -> fewer blocks per stage for the numerical test
REDUCED = {
    "res2net101_26w_4s": (1, 1, 2, 1),
    "res2net101d": (1, 2, 2, 1),
    "tresnet_l": (1, 2, 2, 1),
    "tresnet_xl": (2, 1, 2, 1),
}
WHOLE_NET_TOL = 1e-4  # float32 logits vs float64 timm


BACKENDS = [
    "reference",
    "cpu",
    pytest.param("gpu", marks=pytest.mark.skipif(gpu_count() == 0, reason="no GPU")),
]


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random BN affine parameters and running statistics (and biases), seeded.

    Conv and fc weights keep timm's (seeded) init, except the BN weights timm
    zero-initialises at each residual branch's end, which become U(0.5, 1.5)
    like every other BN weight.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, v in model.state_dict().items():
            if key.endswith("running_var") or (key.endswith("weight") and v.ndim == 1):
                v.copy_(torch.rand(v.shape, generator=g, dtype=v.dtype) + 0.5)
            elif key.endswith(("running_mean", "bias")):
                v.copy_(0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype))
    return model.eval()


@functools.lru_cache(maxsize=4)
def timm_case(name: str, layers: tuple | None = None):
    """(state_dict as NumPy float32, images (2, 3, 64, 64) float32, float64 logits)."""
    torch.manual_seed(0)
    kwargs = {} if layers is None else {"layers": list(layers)}
    model = randomize_(timm.create_model(name, pretrained=False, **kwargs), seed=1)
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ref = model.double()(torch.from_numpy(x).double()).numpy()
    return state, x, ref


def _exported(tmp_path, state):
    """The state_dict through .safetensors and .npz and r2n.load_state_dict."""
    st, npz = tmp_path / "w.safetensors", tmp_path / "w.npz"
    # safetensors cannot hold the int64 scalar num_batches_tracked as 0-d? It can;
    # keep everything, r2n must ignore those keys itself.
    save_file(state, str(st))
    np.savez(npz, **state)
    from_st, from_npz = r2n.load_state_dict(st), r2n.load_state_dict(npz)
    assert from_st.keys() == from_npz.keys() == state.keys()
    for k in state:
        assert np.array_equal(from_st[k], state[k]) and np.array_equal(from_npz[k], state[k])
    return from_st


def _run(model, x, backend):
    if backend == "gpu":
        import cupy

        return cupy.asnumpy(model(cupy.asarray(x)))
    return model(x)


def _check_logits(out, ref):
    assert out.dtype == np.float32 and out.shape == ref.shape
    err = rel_err(out, ref)
    assert err <= WHOLE_NET_TOL, f"logits relative error {err:.2e} > {WHOLE_NET_TOL:.0e}"
    assert (out.argmax(1) == ref.argmax(1)).all(), "top-1 differs"


# --------------------------------------------------------------------------- #
# Architecture: the same keys and shapes as timm, at full size
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", r2n.models.list_models())
def test_expected_keys_are_timms_full_size(name):
    meta = timm.create_model(name, pretrained=False, device="meta")
    timm_keys = {
        k: tuple(v.shape)
        for k, v in meta.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    ours = r2n.models.expected_keys(name)
    assert ours == timm_keys


def test_list_models_is_the_issue_list():
    assert sorted(r2n.models.list_models()) == sorted(SMALL + list(REDUCED))


# --------------------------------------------------------------------------- #
# Numerics against timm
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", SMALL)
def test_logits_match_timm(name, backend, tmp_path):
    state, x, ref = timm_case(name)
    model = r2n.models.create(name, _exported(tmp_path, state), backend=backend)
    _check_logits(_run(model, x, backend), ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(REDUCED))
def test_logits_match_timm_reduced_depth(name, backend, tmp_path):
    layers = REDUCED[name]
    state, x, ref = timm_case(name, layers)
    model = r2n.models.create(
        name, _exported(tmp_path, state), backend=backend, _params={"layers": layers}
    )
    _check_logits(_run(model, x, backend), ref)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name", ["res2net50_26w_4s", "res2next50", "tresnet_m"])
def test_float64_logits_match_timm_closely(name, backend):
    state, x, ref = timm_case(name)
    model = r2n.models.create(name, state, backend=backend, dtype="float64")
    out = model(x.astype(np.float64))
    assert out.dtype == np.float64
    assert rel_err(out, ref) <= 1e-10


def test_torch_tensors_and_pth_load(tmp_path):
    """A state_dict of torch tensors works as is, and .pth loads (weights_only)."""
    state, x, ref = timm_case("res2net50_26w_4s")
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    _check_logits(r2n.models.create("res2net50_26w_4s", tensors)(x), ref)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": tensors}, path)
    loaded = r2n.load_state_dict(path)
    assert all(np.array_equal(loaded[k], state[k]) for k in state)


def test_num_classes(tmp_path):
    torch.manual_seed(0)
    model = randomize_(timm.create_model("tresnet_m", num_classes=10, layers=[1, 1, 1, 1]), 3)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model.double()(torch.from_numpy(x).double()).numpy()
    ours = r2n.models.create("tresnet_m", state, num_classes=10, _params={"layers": (1, 1, 1, 1)})
    _check_logits(ours(x), ref)


# --------------------------------------------------------------------------- #
# Random weights, calls, buffers
# --------------------------------------------------------------------------- #


def _small(name="res2net50_26w_4s", **kw):
    return r2n.models.create(name, _params={"layers": (1, 1, 1, 1)}, **kw)


def test_random_weights_are_deterministic_and_seeded(rng):
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    a, b = _small()(x), _small()(x)
    assert np.array_equal(a, b)
    assert not np.allclose(a, _small(seed=123)(x))
    state = r2n.models.random_state_dict(r2n.models.expected_keys("tresnet_m"), seed=0)
    assert any(k.endswith("running_var") and not np.all(v == 1) for k, v in state.items())


@pytest.mark.parametrize("name", ["res2net50d", "tresnet_m"])
def test_outputs_are_fresh_and_inputs_untouched(name, rng):
    model = _small(name)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    x_copy = x.copy()
    y1 = model(x)
    y1_copy = y1.copy()
    y2 = model(x)
    assert y1 is not y2 and not np.shares_memory(y1, y2)
    assert np.array_equal(y1, y1_copy) and np.array_equal(y1, y2)
    assert np.array_equal(x, x_copy)
    # Another shape, then the first again: buffers per shape, same results.
    model(rng.standard_normal((1, 3, 64, 32)).astype(np.float32))
    assert np.array_equal(model(x), y1)


def test_cpu_forward_reuses_its_buffers(rng):
    """After the first call on a shape, a forward pass allocates a fraction of
    what the first one did (what remains: the max pool's output, the logits,
    and the Numba kernels' per-job row buffers, which tracemalloc also sees)."""
    model = _small(backend="cpu")
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    peaks = []
    for _ in range(2):
        tracemalloc.start()
        model(x)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 0.5 * peaks[0], peaks


def test_bad_inputs_raise_clear_errors(rng):
    model = _small()
    x = rng.standard_normal((1, 3, 32, 32))
    with pytest.raises(TypeError, match="dtype float64"):
        model(x)  # float64 into a float32 model
    with pytest.raises(TypeError, match="numpy.ndarray"):
        model(x.tolist())
    with pytest.raises(ValueError, match="3 channels"):
        model(np.zeros((1, 4, 32, 32), np.float32))
    with pytest.raises(ValueError, match="multiples of 4"):
        _small("tresnet_m")(np.ones((1, 3, 30, 32), np.float32))


@pytest.mark.parametrize("name", ["res2net50_26w_4s", "tresnet_m"])
@pytest.mark.parametrize("container", ["numpy", "torch"])
def test_a_model_never_aliases_the_callers_arrays(name, container, rng):
    """Editing the state_dict after create() changes nothing: not the fc (or
    TResNet's SE) weights, which used to be shared, nor any other array."""
    params = {"layers": (1, 1, 1, 1)}
    state = r2n.models.random_state_dict(_reduced_keys(params, name), seed=5)
    if container == "torch":
        state = {k: torch.from_numpy(v) for k, v in state.items()}  # .numpy() is a view
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    model = r2n.models.create(name, state, _params=params, backend="cpu")
    before = model(x)
    for v in state.values():
        v += 0.01  # in place, NumPy or torch
    assert np.array_equal(model(x), before)
    # A model prepared for another backend later reads its own copy too.
    other = r2n.models.create(name, state, _params=params, backend="reference")
    assert not np.allclose(other(x), before)  # the edit is seen by a new model...
    model._forward.clear()  # ...but never by one created before it
    assert rel_err(model(x), before) <= 1e-6


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="res2net50_26w_4s.*tresnet_xl"):
        r2n.models.create("resnet50")


def test_state_dict_errors_list_every_problem():
    state = r2n.models.random_state_dict(r2n.models.expected_keys("res2net50_26w_4s"))
    state["extra.weight"] = np.zeros(3, np.float32)
    del state["layer2.0.bn1.running_var"]
    del state["fc.bias"]
    state["layer1.0.conv1.weight"] = np.zeros((104, 64, 3, 3), np.float32)
    state["bn1.num_batches_tracked"] = np.array(5)  # ignored, never an error
    with pytest.raises(r2n.models.StateDictError) as info:
        r2n.models.create("res2net50_26w_4s", state)
    msg = str(info.value)
    assert "2 missing keys: layer2.0.bn1.running_var, fc.bias" in msg
    assert "1 unexpected keys: extra.weight" in msg
    assert "layer1.0.conv1.weight: checkpoint (104, 64, 3, 3), model (104, 64, 1, 1)" in msg
    assert "num_batches_tracked" not in msg
    assert isinstance(info.value, ValueError)
    # It pickles whole (a Dask worker's error travels to the client this way).
    import pickle

    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is r2n.models.StateDictError and str(copy) == msg
    assert (copy.missing, copy.unexpected, copy.mismatched) == (
        info.value.missing,
        info.value.unexpected,
        info.value.mismatched,
    )
    assert copy.summary() == info.value.summary()


def test_wrong_num_classes_is_a_shape_mismatch():
    state = r2n.models.random_state_dict(r2n.models.expected_keys("tresnet_m", 10))
    with pytest.raises(r2n.models.StateDictError, match=r"head.fc.weight: checkpoint \(10,"):
        r2n.models.create("tresnet_m", state)


# --------------------------------------------------------------------------- #
# load_state_dict: formats, and never unpickling
# --------------------------------------------------------------------------- #


def test_load_state_dict_refuses_pickles_and_unknown_files(tmp_path):
    import pickle

    bad = tmp_path / "w.pkl"
    bad.write_bytes(pickle.dumps({"a": np.zeros(2)}))
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        r2n.load_state_dict(bad)
    obj = tmp_path / "obj.npz"
    np.savez(obj, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="member 'a' is not a numeric array"):
        r2n.load_state_dict(obj)
    with pytest.raises(FileNotFoundError):
        r2n.load_state_dict(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read"):
        r2n.load_state_dict(junk)


def test_bfloat16_safetensors_load_as_float32(tmp_path):
    from safetensors.torch import save_file as save_torch

    w = torch.randn(3, 4).bfloat16()
    save_torch({"w": w, "b": torch.ones(2)}, str(tmp_path / "bf16.safetensors"))
    loaded = r2n.load_state_dict(tmp_path / "bf16.safetensors")
    assert loaded["w"].dtype == np.float32
    np.testing.assert_array_equal(loaded["w"], w.float().numpy())


def test_pth_is_loaded_with_weights_only(tmp_path):
    """A .pth holding an arbitrary object is refused (torch's weights_only)."""

    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "obj": _Unpicklable()}, path)
    with pytest.raises(ValueError, match="needs pickled code"):
        r2n.load_state_dict(path)


class _Unpicklable:
    """Any custom class: weights_only loading must refuse to rebuild it."""


def test_pth_needing_code_fails_in_one_line_naming_the_file(tmp_path):
    """Not torch's multi-line advice to set weights_only=False (which would
    run the file's code), and no chained exception that repeats it."""
    path = tmp_path / "needs_code.pth"
    torch.save({"w": torch.zeros(2), "obj": _Unpicklable()}, path)
    with pytest.raises(ValueError) as info:
        r2n.load_state_dict(path)
    msg = str(info.value)
    assert "\n" not in msg and repr(str(path)) in msg, msg
    assert "pickled code" in msg and "_Unpicklable" in msg
    assert "weights_only" not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    "member, why",
    [
        (np.array([{"x": 1}], dtype=object), r"member 'bad' is not a numeric array"),
        (np.array(["abc"]), r"member 'bad' has dtype <U3, not a number type"),
        (np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]), r"member 'bad' has dtype .*not a number"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), r"member 'bad' has dtype datetime64"),
    ],
    ids=["object", "str", "structured", "datetime"],
)
def test_npz_members_that_are_not_numeric_arrays_are_refused_by_key(tmp_path, member, why):
    path = tmp_path / "w.npz"
    np.savez(path, good=np.zeros(3, np.float32), bad=member)
    with pytest.raises(ValueError, match=why) as info:
        r2n.load_state_dict(path)
    assert "\n" not in str(info.value) and repr(str(path)) in str(info.value)


def test_pytorch_model_bin_loads_as_a_torch_file(tmp_path):
    state = {"a.weight": torch.randn(3, 2), "a.bias": torch.randn(3)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = r2n.load_state_dict(tmp_path / "pytorch_model.bin")
    assert loaded.keys() == state.keys()
    assert all(np.array_equal(loaded[k], state[k].numpy()) for k in state)


# --------------------------------------------------------------------------- #
# TResNet's official InplaceABN checkpoints
# --------------------------------------------------------------------------- #


def _as_inplace_abn(timm_state):
    """timm's layout back to the official one, with InplaceABN's raw weights
    (random signs: InplaceABN applies |w| + eps)."""
    import re

    rng = np.random.default_rng(5)
    out = {}
    for k, v in timm_state.items():
        v = np.array(v)
        if k.endswith("bn.weight"):
            v = (v - 1e-5) * rng.choice([-1.0, 1.0], v.shape).astype(v.dtype)
        k = re.sub(r"downsample\.(\d+)\.conv", r"downsample.\1.0", k)
        k = re.sub(r"downsample\.(\d+)\.bn", r"downsample.\1.1", k)
        k = re.sub(r"conv(\d+)\.conv", r"conv\1.0", k)
        k = re.sub(r"conv(\d+)\.bn", r"conv\1.1", k)
        out[k] = v
    return out


def test_convert_inplace_abn_matches_timms_filter():
    from timm.models.tresnet import checkpoint_filter_fn

    state, x, ref = timm_case("tresnet_m")
    official = _as_inplace_abn(state)
    assert "body.conv1.0.weight" in official and "body.conv1.conv.weight" not in official
    before = {k: v.copy() for k, v in official.items()}
    converted = r2n.models.convert_inplace_abn({"model": official})
    assert all(np.array_equal(official[k], before[k]) for k in official)  # input untouched
    theirs = checkpoint_filter_fn({k: torch.from_numpy(v) for k, v in official.items()}, None)
    assert converted.keys() == theirs.keys()
    for k in converted:
        np.testing.assert_allclose(converted[k], theirs[k].numpy(), rtol=1e-6, atol=1e-7)
    _check_logits(r2n.models.create("tresnet_m", converted)(x), ref)


def test_convert_inplace_abn_synthetic():
    official = {
        "body.conv1.0.weight": np.ones((2, 48, 3, 3), np.float32),
        "body.conv1.1.weight": np.array([-2.0, 0.0], np.float32),
        "body.conv1.1.bias": np.array([-2.0, 3.0], np.float32),
        "body.layer2.0.downsample.1.0.weight": np.ones((4, 2, 1, 1), np.float32),
        "body.layer2.0.downsample.1.1.weight": np.array([-1.0, 1, 2, -3], np.float32),
    }
    out = r2n.models.convert_inplace_abn(official)
    assert sorted(out) == [
        "body.conv1.bn.bias",
        "body.conv1.bn.weight",
        "body.conv1.conv.weight",
        "body.layer2.0.downsample.1.bn.weight",
        "body.layer2.0.downsample.1.conv.weight",
    ]
    np.testing.assert_array_equal(out["body.conv1.bn.weight"], np.float32([2 + 1e-5, 1e-5]))
    np.testing.assert_array_equal(out["body.conv1.bn.bias"], official["body.conv1.1.bias"])
    np.testing.assert_array_equal(
        out["body.layer2.0.downsample.1.bn.weight"], np.float32([1, 1, 2, 3]) + np.float32(1e-5)
    )
    assert r2n.models.convert_inplace_abn(out) == out  # timm's layout passes through
    assert r2n.models.convert_inplace_abn({"model": out}) == out  # also when wrapped


# --------------------------------------------------------------------------- #
# The prepare hook's fallback (a backend without PREPARE factories)
# --------------------------------------------------------------------------- #


def test_reference_backend_runs_through_the_fallback(rng):
    from r2n import _backends

    assert not hasattr(__import__("r2n.reference").reference, "PREPARE")
    w = rng.standard_normal((6, 4, 3, 3))
    b = rng.standard_normal(6)
    x = rng.standard_normal((2, 4, 7, 9))
    r = rng.standard_normal((2, 6, 4, 5))
    for backend in ("reference", "cpu"):
        layer = _backends.prepare(
            "conv2d",
            backend,
            "numpy",
            w,
            b,
            stride=(2, 2),
            padding=(1, 1),
            dilation=(1, 1),
            groups=1,
            activation="leaky_relu",
            negative_slope=0.1,
        )
        out = layer(x, residual=r)
        ref = r2n.conv2d(x, w, b, stride=2, padding=1, backend="reference") + r
        ref = np.where(ref > 0, ref, 0.1 * ref)
        assert rel_err(out, ref) <= 1e-12
        # A residual the conv would have to cast or broadcast is refused, on every backend.
        with pytest.raises(TypeError, match="residual"):
            layer(x, residual=r.astype(np.float32))
        with pytest.raises(ValueError, match="residual must have shape"):
            layer(x, residual=r[:, :, :, :1])
    with pytest.raises(ValueError, match="cannot prepare"):
        _backends.prepare("relu", "cpu", "numpy")


def test_models_never_import_a_backend_package():
    """Models reach backends only through r2n._backends (GPU/CPU plug in there)."""
    code = (
        "import sys, r2n.models; "
        "bad = [m for m in sys.modules if m.startswith(('r2n.cpu.', 'r2n.gpu.'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    # Nor later: no module of the package names a backend package in an import.
    import ast
    import pathlib

    for path in pathlib.Path(r2n.models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            parts = {part for n in names for part in n.split(".")}
            assert not parts & {"cpu", "gpu"}, (path, names)


class _ArrayOnly:
    """Exposes only __array__."""

    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


class _DLPackOnly:
    """Exposes only the DLPack protocol."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


@pytest.mark.parametrize("wrap", [_ArrayOnly, _DLPackOnly])
def test_state_dict_of_array_likes(wrap, rng):
    keys = r2n.models.expected_keys("res2net50_26w_4s")
    plain = r2n.models.random_state_dict(keys, seed=3)
    params = {"layers": (1, 1, 1, 1)}
    small = {k: v for k, v in plain.items() if k in _reduced_keys(params)}
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    ref = r2n.models.create("res2net50_26w_4s", small, _params=params)(x)
    wrapped = {k: wrap(v) for k, v in small.items()}
    out = r2n.models.create("res2net50_26w_4s", wrapped, _params=params)(x)
    assert np.array_equal(out, ref)


def _reduced_keys(params, name="res2net50_26w_4s"):
    from r2n.models import ARCHS, res2net, tresnet
    from r2n.models._model import Arch

    arch = ARCHS[name]
    family = {"res2net": res2net, "tresnet": tresnet}[arch.family]
    return family.expected_keys(Arch(arch.name, arch.family, {**arch.params, **params}, {}), 1000)


# kernel, stride, padding, groups, (H, W)
PREPARED_CONVS = [
    (1, 1, 0, 1, (7, 9)),
    (1, 2, 0, 1, (7, 9)),
    (3, 1, 1, 1, (7, 9)),
    (3, 2, 1, 5, (9, 7)),
    (3, 1, 1, 1, (2, 3)),  # rows narrower than a register tile
    (7, 2, 3, 1, (11, 13)),
    (1, 1, 0, 1, (2, 2)),  # a 1x1 conv on fewer pixels than a tile
]


@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu"])
@pytest.mark.parametrize("kernel, stride, padding, groups, hw", PREPARED_CONVS)
def test_prepared_cpu_conv_matches_reference(kernel, stride, padding, groups, hw, activation, rng):
    from r2n import _backends

    w = rng.standard_normal((10, 5 // groups, kernel, kernel))
    b = rng.standard_normal(10)
    x = rng.standard_normal((2, 5, *hw))
    options = dict(
        stride=(stride, stride),
        padding=(padding, padding),
        dilation=(1, 1),
        groups=groups,
        activation=activation,
        negative_slope=0.1,
    )
    cpu = _backends.prepare("conv2d", "cpu", "numpy", w, b, reuse_output=True, **options)
    ref = _backends.prepare("conv2d", "reference", "numpy", w, b, **options)
    expected = ref(x)
    residual = rng.standard_normal(expected.shape)
    for _ in range(2):  # the second call reuses the padded and output buffers
        assert rel_err(cpu(x), expected) <= 1e-12
        assert rel_err(cpu(x, residual=residual), ref(x, residual=residual)) <= 1e-12


def test_a_backends_prepare_factories_plug_in(monkeypatch, rng):
    """A backend that adds PREPARE factories gets them used by every model,
    with no change to r2n.models (here: counting wrappers on the reference)."""
    import r2n.reference
    from r2n import _backends

    calls = {"conv2d": 0, "bottle2neck": 0}

    def counting(op):
        def factory(*arrays, **options):
            calls[op] += 1
            return _backends._FALLBACKS[op]("reference", "numpy", *arrays, **options)

        return factory

    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    expected = _small(backend="reference")(x)
    monkeypatch.setattr(
        r2n.reference, "PREPARE", {op: counting(op) for op in calls}, raising=False
    )
    out = _small(backend="reference")(x)
    assert calls == {"conv2d": 1, "bottle2neck": 4}  # the stem conv, one block per stage
    assert np.array_equal(out, expected)
