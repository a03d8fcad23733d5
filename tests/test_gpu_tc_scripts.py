"""benchmarks/gpu_tc_1x1.py, gpu_tc_3x3.py, their shared gpu_tc_common.py and
gpu_kernels.py without a GPU: they import with CuPy unimportable, their
command lines parse, gpu_tc_3x3's ``--dry-run`` lists the rows a run times
(res2net50_26w_4s's chain convs), gpu_kernels plans its runs per checkout,
and the shared check-then-time step runs on a stand-in CuPy (NumPy arrays,
fixed event times) as on a GPU."""

from __future__ import annotations

import types

import numpy as np
import pytest
from bench_scripts import benchmark_script, run_script

SCRIPTS = ("gpu_tc_1x1", "gpu_tc_3x3", "gpu_kernels", "gpu_tc_common")


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_import_without_cupy(name):
    with benchmark_script(name, block_cupy=True) as module:
        assert module.__doc__


@pytest.fixture(scope="module")
def tc_3x3():
    with benchmark_script("gpu_tc_3x3") as module:
        yield module


def test_3x3_dry_run_lists_every_row_and_exits_0():
    proc = run_script("gpu_tc_3x3", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # 2 batches x 2 precisions x (8 convs + 4 chains) x 3 kernels
    assert lines[-1] == "144 rows" and len(lines) == 145
    assert lines[0] == "layer1 normal 26      N=32  tf32 5_tensor_core"
    assert "layer4 chain 208      N=256 bf16 torch chain" in lines


def test_3x3_rows_are_the_networks_chain_convs(tc_3x3):
    args = tc_3x3.build_parser().parse_args(["--batch", "1", "--precision", "bf16"])
    assert (args.batch, args.precision, args.reps, args.json) == ([1], ["bf16"], 20, None)
    rows = tc_3x3.planned_rows(args)
    assert len(rows) == (8 + 4) * 3 and {r[1:3] for r in rows} == {(1, "bf16")}
    assert [r[3] for r in rows[:3]] == list(tc_3x3.CONV_KERNELS)
    assert [r[3] for r in rows[-3:]] == list(tc_3x3.CHAIN_KERNELS)
    normal, stage = tc_3x3.CASES[:4], tc_3x3.CASES[4:]
    for i, ((_, c, groups, hw, stride), (_, c_s, groups_s, hw_s, stride_s)) in enumerate(
        zip(normal, stage, strict=True)
    ):
        width = 26 << i  # res2net50_26w_4s: 26, 52, 104, 208 channels a chunk
        assert (c, groups, stride, hw) == (width, 1, 1, 56 >> i)
        # a stage block's 3 convs at once, from the previous stage's size
        assert (c_s, groups_s, stride_s) == (3 * width, 3, 1 if i == 0 else 2)
        assert (hw_s + 2 - 3) // stride_s + 1 == hw  # its output: the stage's size


def test_1x1_command_line_and_cases():
    with benchmark_script("gpu_tc_1x1") as tc_1x1:
        args = tc_1x1.build_parser().parse_args([])
        assert (args.precision, args.batch, args.size, args.reps) == (
            ["tf32", "bf16"], [32, 256], 56, 20,
        )  # fmt: skip
        assert tc_1x1.CONVS == ((256, 104), (104, 256))  # layer1's conv1 and conv3


def test_gpu_kernels_plans_runs_per_checkout():
    with benchmark_script("gpu_kernels") as kernels:
        opts = kernels.build_parser().parse_args(["--precision", "fp32", "tf32", "--tc-im2col",
                                                  "step5", "multistage"])  # fmt: skip
        assert opts.batch == [1, 32] and opts.model == "res2net50_26w_4s"
        with pytest.raises(SystemExit):
            kernels.build_parser().parse_args(["--tc-im2col", "fast"])
        plan = kernels.plan_runs
        # fp32 once (the switch changes no fp32 launch), tf32 once per setting
        assert plan(opts.precision, opts.tc_im2col, True, True) == (
            [("fp32", None), ("tf32", "step5"), ("tf32", "multistage")], [],
        )  # fmt: skip
        runs, notes = plan(["fp32", "tf32"], ["multistage"], True, False)  # an older checkout
        assert runs == [("fp32", None), ("tf32", None)] and "--tc-im2col ignored" in notes[0]
        runs, notes = plan(["fp32", "bf16"], None, False, False)  # older still: no precision=
        assert runs == [("fp32", None)] and notes == [
            "bf16: this checkout has no precision=; skipped"
        ]
        name = ("void conv2d_gemm_1x1_tensor_core<float, r2n_tf32, 128, 64, 32, 2, 2, 3>"
                "(float const*, long long, int)")  # fmt: skip
        assert (
            kernels._short(name)
            == "conv2d_gemm_1x1_tensor_core<float, tf32, 128, 64, 32, 2, 2, 3>"
        )


class _Event:
    def record(self):
        pass

    def synchronize(self):
        pass


def _fake_cupy(times_ms):
    """NumPy as cupy, with CUDA events whose elapsed times are ``times_ms`` in turn."""
    times = iter(times_ms)
    cuda = types.SimpleNamespace(Event=_Event, get_elapsed_time=lambda start, end: next(times))
    return types.SimpleNamespace(asarray=np.asarray, linalg=np.linalg, cuda=cuda)


def test_check_and_time_checks_first_and_times_only_right_rows():
    with benchmark_script("gpu_tc_common") as common:
        exact = np.arange(1.0, 7.0)
        launches, calls = [], []
        ex = types.SimpleNamespace(launch=lambda file, name, *a, **k: launches.append(name))
        launched = common.record_launches(ex)

        def fn():
            calls.append(1)
            ex.launch("f.cu", f"kernel<{len(calls)}>")
            return exact

        launched["name"] = "a stale name"  # cleared before the checked call
        ms, err, ok, kernel = common.check_and_time(_fake_cupy([3.0, 1.0, 2.0]), fn, exact,
                                                    1e-5, 3, launched)  # fmt: skip
        assert (ms, err, ok, kernel) == (2.0, 0.0, True, "kernel<1>")  # the median of 3
        assert len(calls) == len(launches) == 1 + 5 + 3  # the check, warm-up, timed
        cupy = _fake_cupy([])  # a wrong row is not timed
        wrong = common.check_and_time(cupy, lambda: exact * 1.1, exact, 1e-5, 3)
        assert np.isnan(wrong[0]) and wrong[1] == pytest.approx(0.1) and not wrong[2]

        class Tensor:  # a torch output: read back through .float()
            def float(self):
                return exact + 1e-7

        ms, err, ok, _ = common.check_and_time(_fake_cupy([4.0]), Tensor, exact, 1e-5, 1,
                                               torch_out=True)  # fmt: skip
        assert ok and ms == 4.0 and 0 < err < 1e-7
