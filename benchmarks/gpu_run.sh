#!/usr/bin/env bash
# The GPU check in one device call: environment, the GPU test files, compute-sanitizer
# memcheck/racecheck over the GPU kernels, `r2n bench` on the GPU rows and `r2n ladder`
# on the GPU's ladders (every numbered step, checked and timed; its JSON is what the
# README's GPU ladder tables are generated from).
#
# Usage, on a machine with a CUDA GPU, CuPy, numba and PyTorch (run from the repo root):
#     bash benchmarks/gpu_run.sh [STEP ...]      # steps: env tests memcheck racecheck bench ladder
#                                                 # not by default: gpubench (benchmarks/gpu_bench.py),
#                                                 # kernels (benchmarks/gpu_kernels.py),
#                                                 # tc3x3 (gpu_tc_3x3.py + gpu_kernels.py: the
#                                                 # multistage im2col kernel beside step 5)
# Each step's full log goes to $OUT/<step>.log (OUT defaults to ./gpu-run-out); the
# last lines of each are printed. A step that runs past its limit is stopped (rc 124)
# and the next one starts, so one hang cannot cost the others.
set -u
OUT=${OUT:-gpu-run-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OUT PY
PY=${PY:-python3}
# Every test that needs a GPU: the device test files, the GPU step of the ladder test,
# and the gpu / cupy / cuda cases of the mixed files (the emulator's and NVRTC's files
# run in CI; they are left out here to spend the lease on what only a GPU can check).
GPU_TESTS="tests/test_gpu_device.py tests/test_gpu_conv_device.py tests/test_gpu_tensor_core_device.py
  tests/test_gpu_tc_gemm_1x1_device.py tests/test_gpu_tc_im2col_device.py
  tests/test_gpu_graph.py tests/test_gpu_graph_cache.py tests/test_dlpack.py
  tests/test_gpu_ladder.py::test_every_step_on_the_gpu_matches_the_reference
  tests/test_models.py tests/test_api.py tests/test_bad_inputs.py tests/test_stateful.py
  tests/test_threads.py"
GPU_K="gpu or cupy or Gpu or device or cuda or dlpack or graph"
PYTEST="$PY -m pytest -p no:cacheprovider -q -rfEs --benchmark-disable"
# pytest-xdist workers when it is installed: NVRTC compiles are CPU-bound, and a
# device machine has the cores (XDIST=0 runs in one process).
XDIST=${XDIST:-8}
if [ "$XDIST" != 0 ] && $PY -c "import xdist" 2>/dev/null; then PAR="-n $XDIST"; else PAR=; fi

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "== $name: rc=$rc in $(($(date +%s) - start)) s (log $OUT/$name.log)"
    tail -n "${TAIL:-12}" "$OUT/$name.log"
}

env_report() {
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem \
        --format=csv
    $PY - <<'PY'
import platform, numpy, numba, cupy, torch
print("python", platform.python_version(), "numpy", numpy.__version__, "numba",
      numba.__version__, "cupy", cupy.__version__, "torch", torch.__version__,
      "cuda runtime", cupy.cuda.runtime.runtimeGetVersion())
print(cupy.cuda.Device().attributes["MultiProcessorCount"], "SMs,",
      torch.cuda.get_device_name())
PY
    nproc
}

run_step() {
    case $1 in
    env) export -f env_report; export PY; step env 60 bash -c env_report ;;
    tests) step tests "${TESTS_LIMIT:-200}" $PYTEST $PAR $GPU_TESTS -k "$GPU_K" ;;
    memcheck)
        step memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 99 \
            --print-limit 20 $PYTEST -x tests/test_gpu_device.py tests/test_gpu_conv_device.py ;;
    racecheck)
        step racecheck 120 compute-sanitizer --tool racecheck --error-exitcode 99 \
            --print-limit 20 $PYTEST -x tests/test_gpu_conv_device.py -k "chain or bottle" ;;
    bench) step bench 200 $PY -m r2n bench --backend gpu torch --json "$OUT/bench.json" ;;
    ladder) step ladder "${LADDER_LIMIT:-200}" $PY -m r2n ladder --backend gpu \
        --batch "${LADDER_BATCH:-1}" --json "$OUT/ladder-gpu-n${LADDER_BATCH:-1}.json" ;;
    # per-kernel device time of the network (this checkout; AB_OLD=DIR: also the r2n
    # package under DIR, e.g. an older commit's `git archive`, for a side-by-side A/B)
    kernels) step kernels "${KERNELS_LIMIT:-150}" bash -c '
        $PY benchmarks/gpu_kernels.py --batch ${KERNELS_BATCH:-1 32} --precision fp32 tf32 \
            --label new --torch --json "$OUT/kernels.jsonl"
        if [ -n "${AB_OLD:-}" ]; then
            PYTHONPATH=$AB_OLD $PY benchmarks/gpu_kernels.py --batch ${KERNELS_OLD_BATCH:-32} \
                --label old --json "$OUT/kernels.jsonl"
        fi' ;;
    # the tf32 / bf16 3x3 convs and chains on the multistage im2col kernel beside step 5
    # and cuDNN, then the network with the switch off and on (r2n.gpu.conv.TC_IM2COL_MULTISTAGE)
    tc3x3) step tc3x3 "${TC3X3_LIMIT:-300}" bash -c '
        $PY benchmarks/gpu_tc_3x3.py --json "$OUT/gpu-tc-3x3.json"
        $PY benchmarks/gpu_kernels.py --batch ${TC3X3_BATCH:-32 256} --precision tf32 bf16 \
            --tc-im2col step5 multistage --label tc3x3 --json "$OUT/kernels-tc3x3.jsonl"' ;;
    # issue 14 (~9 min with the defaults; BENCH_ARGS="--budget-s 200 ..." for less)
    gpubench) step gpubench "${BENCH_LIMIT:-600}" $PY benchmarks/gpu_bench.py --out "$OUT" \
        ${BENCH_ARGS:-} ;;
    *) echo "unknown step $1" ;;
    esac
}

for s in "${@:-env tests memcheck bench ladder racecheck}"; do
    for t in $s; do run_step "$t"; done
done
