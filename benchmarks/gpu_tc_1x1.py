"""Time the tf32 / bf16 1x1 convs: the multistage GEMM against the kernels before it.

Run on a machine with a CUDA GPU, CuPy and PyTorch, from the repo root::

    python benchmarks/gpu_tc_1x1.py [--precision tf32 bf16] [--batch 32 256] [--json PATH]

Cases: Res2Net-50 layer1's 1x1 convs at 56x56, 256 -> 104 (conv1) and
104 -> 256 (conv3), at each batch. Rows per case and precision, every one
first checked against the float64 product (CuPy matmul per image) within
r2n.gpu.conv_tensor_core.tolerance, then timed:

* ``multistage``: r2n.conv2d's choice now, kernels/gemm_1x1_tensor_core.cu
  (its tile by r2n.gpu.conv_tensor_core.gemm_1x1_tile: 128 x 64 here);
* ``ms 128x128``: the same kernel on its 128 x 128 tile (forced through
  GEMM_1X1_LARGE_MIN_K), the alternative that rule weighs;
* ``plane 64x64``: the tensor-core plane GEMM it replaces at these sizes
  (conv_gemm_tensor_core.cu, forced by r2n.gpu.conv.TC_GEMM_1X1_MIN_WAVES);
* ``5_tensor_core``: the ladder's step 5 on the same conv (its im2col loads);
* ``cudnn``: torch.nn.functional.conv2d with TF32 on (``tf32`` rows; for
  ``bf16`` rows, on bfloat16 copies of the tensors, output bfloat16).

Timing: CUDA events around each call on the current stream, 5 warm-up
calls, the median of 20 (kernel-bound at these sizes: 0.05-3 ms per call).
The three r2n modules are compiled first, concurrently (NVRTC releases the
GIL): the whole run takes ~20-40 s, compiles included. Prints one line per
row: ms, TFLOP/s, GB/s of input + weights + output moved once, and the
ratio to ``plane 64x64``. Exit code 1 when a row failed its check.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from gpu_tc_common import (
    check_and_time,
    compile_modules,
    print_device,
    record_launches,
    write_json,
)

#: (C_in, C_out) of the timed convs: layer1's conv1 and conv3
CONVS = ((256, 104), (104, 256))


def build_parser() -> argparse.ArgumentParser:
    """The command line (no GPU needed to parse it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", nargs="+", default=["tf32", "bf16"])
    parser.add_argument("--batch", nargs="+", type=int, default=[32, 256])
    parser.add_argument("--size", type=int, default=56, help="H = W of the maps")
    parser.add_argument("--reps", type=int, default=20, help="timed calls per row")
    parser.add_argument("--json", default=None, help="write every row here")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    import cupy

    import r2n
    from r2n.gpu import _runtime
    from r2n.gpu import conv as gconv
    from r2n.gpu import conv_tensor_core as tc

    t0 = time.perf_counter()
    ex = _runtime.executor()
    compile_modules(ex, (tc.GEMM_1X1_FILE, gconv.TC_GEMM_FILE, tc.FILE), t0)
    try:
        import torch
        import torch.nn.functional as F

        torch.backends.cudnn.allow_tf32 = True
    except ImportError:
        torch = None

    launched = record_launches(ex)
    gpu = print_device(cupy, ex, args.reps)
    rows, failed, hw = [], False, args.size
    host_rng = np.random.default_rng(0)
    device_rng = cupy.random.default_rng(0)  # N=256's 200 M inputs: made on the device
    for n in args.batch:
        for c_in, c_out in CONVS:
            x = device_rng.standard_normal((n, c_in, hw, hw), dtype=cupy.float32)
            w = cupy.asarray(
                (host_rng.standard_normal((c_out, c_in, 1, 1)) / np.sqrt(c_in)).astype(np.float32)
            )
            b = cupy.asarray(host_rng.standard_normal(c_out).astype(np.float32))
            exact = (
                cupy.matmul(
                    w.reshape(c_out, c_in).astype(cupy.float64),
                    x.reshape(n, c_in, -1).astype(cupy.float64),
                )
                + b.astype(cupy.float64)[:, None]
            )
            exact = exact.reshape(n, c_out, hw, hw)
            flop = 2.0 * n * c_out * c_in * hw * hw
            nbytes = 4.0 * (n * (c_in + c_out) * hw * hw + c_out * c_in)
            for precision in args.precision:
                base = None

                def r2n_conv(variant=None, _p=precision, _x=x, _w=w, _b=b):
                    if variant is None:
                        return r2n.conv2d(_x, _w, _b, precision=_p)
                    return gconv.VARIANTS[variant](
                        _x, _w, _b, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                        out_shape=(_x.shape[0], _w.shape[0], hw, hw), precision=_p,
                    )  # fmt: skip

                def forced(module, constant, value, _f=r2n_conv):
                    # plans are keyed on these constants (r2n.gpu.conv._tunables)
                    saved = getattr(module, constant)
                    setattr(module, constant, value)
                    try:
                        return _f()
                    finally:
                        setattr(module, constant, saved)

                candidates = [
                    ("plane 64x64", lambda: forced(gconv, "TC_GEMM_1X1_MIN_WAVES", float("inf"))),
                    ("multistage", r2n_conv),
                    ("ms 128x128", lambda: forced(tc, "GEMM_1X1_LARGE_MIN_K", 0)),
                    ("5_tensor_core", lambda _f=r2n_conv: _f("5_tensor_core")),
                ]
                if torch is not None:
                    tx, tw, tb = (torch.as_tensor(a, device="cuda") for a in (x, w, b))
                    if precision == "bf16":
                        tx, tw, tb = (t.to(torch.bfloat16) for t in (tx, tw, tb))
                    candidates.append(
                        ("cudnn", lambda _a=(tx, tw, tb): F.conv2d(*_a))  # noqa: B023
                    )
                for label, fn in candidates:
                    ms, err, ok, kernel = check_and_time(
                        cupy, fn, exact, tc.tolerance(precision), args.reps, launched,
                        torch_out=label == "cudnn",
                    )  # fmt: skip
                    if label == "plane 64x64":
                        base = ms
                    row = dict(
                        batch=n, c_in=c_in, c_out=c_out, precision=precision, kernel=label,
                        ms=ms, tflops=flop / ms / 1e9, gbs=nbytes / ms / 1e6, rel_err=err,
                        ok=ok, name=kernel,
                    )  # fmt: skip
                    rows.append(row)
                    failed |= not ok
                    print(
                        f"1x1 {c_in:>3}->{c_out:<3} N={n:<3} {precision} {label:<14} "
                        f"{ms:8.4f} ms {row['tflops']:7.1f} TFLOP/s {row['gbs']:7.0f} GB/s "
                        f"x{base / ms:5.2f} err {err:.1e}{'' if ok else ' WRONG'} {kernel}",
                        flush=True,
                    )
    print(f"total {time.perf_counter() - t0:.1f} s")
    write_json(args.json, gpu, rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
