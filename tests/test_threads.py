"""Several Python threads calling one model, one prepared layer and the one-call
ops at once, as one would share an ONNX Runtime session.

Each test runs THREADS threads x CALLS calls on different inputs and shapes
at the same time (a barrier starts them together; the threads alternate
between 1 and all kernel threads, which r2n.set_num_threads sets per calling
thread), and checks every result against the float64 reference computed
beforehand. A buffer shared between threads shows as a wrong answer: one
thread's call overwriting another's intermediates or output.

The GPU launchers run the same way under the emulator (which serialises
launches, so this checks the host side: plans, prepared objects, outputs);
``r2n.gpu.capture`` is checked with a stand-in for CuPy's streams.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import TOL, random_block, rel_err

import r2n
import r2n.models
from r2n import _backends

THREADS = 4
CALLS = 50
NETWORK_TOL = 1e-4

needs_cpu = pytest.mark.skipif(not r2n.implements("cpu", "conv2d"), reason="needs numba")


@pytest.fixture(scope="module", autouse=True)
def _concurrent_launches_are_supported():
    """Numba's workqueue layer (no OpenMP or TBB) aborts the process on
    concurrent launches; r2n/cpu/_jit.py decides which layer runs."""
    if not r2n.implements("cpu", "conv2d"):
        return
    import numba

    r2n.relu(np.ones(4, np.float32), backend="cpu")  # starts the layer
    if numba.threading_layer() == "workqueue":
        pytest.skip("Numba's workqueue threading layer cannot launch from several threads")


def _in_threads(work):
    """Run work(thread_index) in THREADS threads started together; re-raise
    the first failure."""
    barrier = threading.Barrier(THREADS)
    errors = []

    def target(i):
        try:
            barrier.wait(timeout=60)
            work(i)
        except BaseException as e:  # noqa: BLE001 (re-raised in the main thread)
            errors.append(e)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _cases(rng, shapes, make_input, reference):
    """cases[s][v] = (x, expected): two inputs of fresh random values per shape."""
    cases = []
    for shape in shapes:
        inputs = [make_input(rng, shape) for _ in range(2)]
        cases.append([(x, reference(x)) for x in inputs])
    return cases


def _calls(cases, call, tol, calls=CALLS):
    """work(i) for _in_threads: ``calls`` calls of ``call`` over the cases.
    At call k threads 0 and 1 run shape k, threads 2 and 3 shape k + 1, each
    pair on different inputs: the same shapes at once (where shared buffers
    would collide) and different ones. Thread i switches its kernel thread
    count every few calls."""
    all_threads = r2n.get_num_threads()

    def work(i):
        for k in range(calls):
            if r2n.implements("cpu", "conv2d") and k % 5 == 0:
                r2n.set_num_threads(1 if (i + k // 5) % 2 else all_threads)
            x, expected = cases[(k + i // 2) % len(cases)][i % 2]
            out = call(x)
            err = rel_err(out, expected)
            shape = x[1].shape if isinstance(x, tuple) else x.shape
            assert err <= tol, f"thread {i}, call {k}, input {shape}: error {err:.2e}"

    return work


def _randn(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@needs_cpu
def test_one_model_in_four_threads(rng):
    params = {"layers": (2, 1, 1, 1), "base_width": 4}
    model = r2n.models.create("res2net50_26w_4s", backend="cpu", num_classes=10, _params=params)
    reference = r2n.models.create(
        "res2net50_26w_4s", backend="reference", dtype="float64", num_classes=10, _params=params
    )
    shapes = [(1, 3, 32, 32), (2, 3, 24, 40), (1, 3, 40, 16), (1, 3, 16, 24), (2, 3, 32, 28)]
    cases = _cases(rng, shapes, _randn, lambda x: reference(x.astype(np.float64)))
    _in_threads(_calls(cases, model, NETWORK_TOL))


@needs_cpu
def test_one_tresnet_in_four_threads(rng):
    """TResNet's prepared steps (space-to-depth, blur, SE with the fused add +
    ReLU, shortcut pools, global pool) reuse their outputs per thread."""
    params = {"layers": (1, 2, 1, 1), "width_factor": 0.25}
    model = r2n.models.create("tresnet_m", backend="cpu", num_classes=10, _params=params)
    reference = r2n.models.create(
        "tresnet_m", backend="reference", dtype="float64", num_classes=10, _params=params
    )
    shapes = [(1, 3, 32, 32), (2, 3, 32, 40), (1, 3, 48, 32), (2, 3, 36, 28)]
    cases = _cases(rng, shapes, _randn, lambda x: reference(x.astype(np.float64)))
    _in_threads(_calls(cases, model, NETWORK_TOL, calls=20))


@needs_cpu
@pytest.mark.parametrize("width", [4, 16], ids=["direct", "winograd"])
def test_one_prepared_block_in_four_threads(rng, width):
    """The block reuses its output buffer (reuse_output=True, as in a model):
    each thread's own, not overwritten by another thread's call."""
    params = random_block(rng, 4 * width, 4 * width, width, 4, dtype=np.float32)
    kw = dict(scale=4, stype="normal", stride=1, groups=1)
    block = _backends.prepare("bottle2neck", "cpu", "numpy", params, reuse_output=True, **kw)
    p64 = params.map(lambda a: a.astype(np.float64))
    shapes = [(1, 4 * width, h, w) for h, w in ((9, 7), (6, 4), (11, 12), (6, 7), (3, 2))]

    def reference(x):
        return r2n.bottle2neck(x.astype(np.float64), p64, backend="reference", **kw)

    cases = _cases(rng, shapes, _randn, reference)
    _in_threads(_calls(cases, block, TOL[np.dtype(np.float32)]))


@needs_cpu
def test_one_prepared_conv_in_four_threads(rng):
    w = _randn(rng, (8, 3, 7, 7)) / 12
    b = _randn(rng, (8,))
    options = dict(stride=(2, 2), padding=(3, 3), dilation=(1, 1), groups=1, activation="relu")
    conv = _backends.prepare("conv2d", "cpu", "numpy", w, b, reuse_output=True, **options)
    ref = _backends.prepare("conv2d", "reference", "numpy", w.astype(np.float64),
                            b.astype(np.float64), **options)  # fmt: skip
    shapes = [(1, 3, 9, 7), (2, 3, 16, 5), (1, 3, 4, 4), (1, 3, 13, 21)]
    cases = _cases(rng, shapes, _randn, lambda x: ref(x.astype(np.float64)))
    _in_threads(_calls(cases, conv, TOL[np.dtype(np.float32)]))


@needs_cpu
def test_the_one_call_ops_in_four_threads(rng):
    """conv2d, res2net_chain and bottle2neck, each thread on its own shapes."""
    weights = [_randn(rng, (4, 4, 3, 3)) for _ in range(3)]
    params = random_block(rng, 8, 16, 4, 4, shortcut="conv", dtype=np.float32)
    w64 = [a.astype(np.float64) for a in weights]
    p64 = params.map(lambda a: a.astype(np.float64))
    ops = [
        (lambda x: r2n.conv2d(x, weights[0], padding=1, backend="cpu"),
         lambda x: r2n.conv2d(x, w64[0], padding=1, backend="reference"), 4),
        (lambda x: r2n.res2net_chain(x, weights, scale=4, backend="cpu"),
         lambda x: r2n.res2net_chain(x, w64, scale=4, backend="reference"), 16),
        (lambda x: r2n.bottle2neck(x, params, scale=4, stype="stage", stride=2, backend="cpu"),
         lambda x: r2n.bottle2neck(x, p64, scale=4, stype="stage", stride=2,
                                   backend="reference"), 8),
    ]  # fmt: skip
    cases = []
    for k, (h, w) in enumerate([(6, 7), (6, 4), (9, 9), (5, 3), (7, 12), (2, 2)]):
        for i, (_, reference, channels) in enumerate(ops):
            shape = (1 + (k + i) % 2, channels, h, w)
            xs = [_randn(rng, shape) for _ in range(2)]
            cases.append([((i, x), reference(x.astype(np.float64))) for x in xs])

    def call(case):
        i, x = case
        return ops[i][0](x)

    _in_threads(_calls(cases, call, TOL[np.dtype(np.float32)]))


# --------------------------------------------------------------------------- #
# GPU launchers under the emulator
# --------------------------------------------------------------------------- #


def test_gpu_prepared_block_and_chain_in_four_threads(rng):
    from cuda_emu import EmuExecutor

    from r2n.gpu import res2net

    ex = EmuExecutor(check_order=False)
    params = random_block(rng, 16, 16, 4, 4, dtype=np.float32)
    kw = dict(scale=4, stype="normal", stride=1, groups=1)
    block = res2net.PreparedBottle2neck(params, executor=ex, **kw)
    p64 = params.map(lambda a: a.astype(np.float64))
    shapes = [(1, 16, 9, 7), (2, 16, 6, 4), (1, 16, 5, 11), (1, 16, 3, 2)]

    def reference(x):
        return r2n.bottle2neck(x.astype(np.float64), p64, backend="reference", **kw)

    cases = _cases(rng, shapes, _randn, reference)
    # 10 calls a thread: the emulator runs one launch at a time
    _in_threads(_calls(cases, block, TOL[np.dtype(np.float32)], calls=10))
