"""Time the tf32 / bf16 3x3 chain convs: the multistage im2col kernel against step 5 and cuDNN.

Run on a machine with a CUDA GPU, CuPy and PyTorch, from the repo root::

    python benchmarks/gpu_tc_3x3.py [--precision tf32 bf16] [--batch 32 256] [--json PATH]

(``--dry-run`` lists the rows it would time and exits: no GPU needed.)

Cases: the 3x3 convs of res2net50_26w_4s's chains, as r2n launches them
(bias fused; groups of one conv each): a "normal" block's conv (width ->
width at the stage's size: 26 at 56x56, 52 at 28x28, 104 at 14x14, 208 at
7x7) and a "stage" block's one grouped launch of its 3 convs (3 groups of
width, stride 2 but in layer1), at each batch. Rows per case and precision,
every one first checked against float64 (PyTorch's conv2d in float64 on the
GPU) within r2n.gpu.conv_tensor_core.tolerance, then timed:

* ``5_tensor_core``: the ladder's step 5 (r2n.gpu.conv.TC_IM2COL_MULTISTAGE
  off: r2n's default);
* ``multistage``: kernels/conv_im2col_tensor_core.cu (the switch on);
* ``cudnn``: torch.nn.functional.conv2d with TF32 on (``tf32`` rows; for
  ``bf16`` rows, on bfloat16 copies of the tensors, output bfloat16).

Then whole "normal" chains (scale 4: three convs, each reading x_i + y_{i-1},
bias + ReLU, the last chunk copied) at each stage's size, as
r2n.gpu.res2net.PreparedChain runs them: ``chain step5`` (the adds on load)
against ``chain multistage`` (each later conv's sum written by an
elementwise pass, then the multistage kernel) and ``torch chain`` (split,
conv + bias, ReLU, add, cat on cuDNN: TF32 on; bf16 copies for ``bf16``),
checked against the same chain in float64 (PyTorch) within
tolerance(precision, 3).

Both r2n rows run variant 5_tensor_core with split-K as r2n's rule has it (a
split launch stays on step 5 either way: batch 1, 7x7 maps). Timing: CUDA
events around each call, 5 warm-up calls, the median of ``--reps`` (20).
Prints one line per row: ms, TFLOP/s, the ratio to ``5_tensor_core`` and
the kernel's name. Exit code 1 when a row failed its check. ~30-60 s on an
H200 with the defaults (two NVRTC compiles, run concurrently).
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

#: (label, C (= C_in = C_out), groups, H = W of the input, stride)
CASES = [
    ("layer1 normal 26", 26, 1, 56, 1),
    ("layer2 normal 52", 52, 1, 28, 1),
    ("layer3 normal 104", 104, 1, 14, 1),
    ("layer4 normal 208", 208, 1, 7, 1),
    ("layer1.0 stage 3x26", 78, 3, 56, 1),
    ("layer2.0 stage 3x52", 156, 3, 56, 2),
    ("layer3.0 stage 3x104", 312, 3, 28, 2),
    ("layer4.0 stage 3x208", 624, 3, 14, 2),
]


#: The rows of each conv case, then of each "normal" chain (CASES[:4]), per
#: batch and precision, in the order they run.
CONV_KERNELS = ("5_tensor_core", "multistage", "cudnn")
CHAIN_KERNELS = ("chain step5", "chain multistage", "torch chain")


def planned_rows(args) -> list[tuple[str, int, str, str]]:
    """(case label, batch, precision, kernel label) of every row a run with
    ``args`` prints, in order (``--dry-run`` lists them; no GPU needed)."""
    rows = []
    for n in args.batch:
        for label, *_ in CASES:
            rows += [(label, n, p, k) for p in args.precision for k in CONV_KERNELS]
        for label, *_ in CASES[:4]:
            chain = label.replace("normal", "chain")
            rows += [(chain, n, p, k) for p in args.precision for k in CHAIN_KERNELS]
    return rows


def _time_chain(args, rows, n, label, width, hw, host_rng, device_rng) -> bool:
    """Time one scale-4 "normal" chain (rows appended to ``rows``); True if a row failed."""
    import cupy
    import torch
    import torch.nn.functional as F

    from r2n.gpu import conv as gconv
    from r2n.gpu import conv_tensor_core as tc
    from r2n.gpu import res2net as gres

    scale, nums = 4, 3
    x = device_rng.standard_normal((n, scale * width, hw, hw), dtype=cupy.float32)
    weights = [
        (host_rng.standard_normal((width, width, 3, 3)) / np.sqrt(9 * width)).astype(np.float32)
        for _ in range(nums)
    ]
    biases = [host_rng.standard_normal(width).astype(np.float32) for _ in range(nums)]

    def torch_chain(tx, tws, tbs):
        chunks = torch.split(tx, width, dim=1)
        ys, y = [], None
        for i in range(nums):
            sp = chunks[i] if y is None else chunks[i] + y
            y = F.relu(F.conv2d(sp, tws[i], tbs[i], padding=1))
            ys.append(y)
        return torch.cat([*ys, chunks[nums]], dim=1)

    tx = torch.as_tensor(x, device="cuda")
    tws = [torch.as_tensor(w, device="cuda") for w in weights]
    tbs = [torch.as_tensor(b, device="cuda") for b in biases]
    with torch.no_grad():
        exact = cupy.asarray(
            torch_chain(tx.double(), [w.double() for w in tws], [b.double() for b in tbs])
        )
    flop = 2.0 * n * nums * width * width * 9 * hw * hw
    failed = False
    for precision in args.precision:
        chain = gres.PreparedChain(weights, biases, scale=scale, stype="normal", stride=1,
                                   groups=1, width=width, dtype=np.float32,
                                   precision=precision)  # fmt: skip
        ttx, ttws, ttbs = tx, tws, tbs
        if precision == "bf16":
            ttx = tx.to(torch.bfloat16)
            ttws = [w.to(torch.bfloat16) for w in tws]
            ttbs = [b.to(torch.bfloat16) for b in tbs]

        def r2n_chain(multistage, _chain=chain):
            gconv.TC_IM2COL_MULTISTAGE = multistage  # plans are keyed on it
            return _chain(x)

        def torch_run(_a=(ttx, ttws, ttbs)):
            with torch.no_grad():
                return torch_chain(*_a)

        base = None
        runs = (lambda _f=r2n_chain: _f(False), lambda _f=r2n_chain: _f(True), torch_run)
        for kernel_label, fn in zip(CHAIN_KERNELS, runs, strict=True):
            tolerance = tc.tolerance(precision, nums)
            torch_out = kernel_label == "torch chain"
            ms, err, ok, _ = check_and_time(cupy, fn, exact, tolerance, args.reps, None, torch_out)
            if base is None:
                base = ms
            rows.append(dict(case=label, batch=n, c=width, groups=1, hw=hw, stride=1,
                             precision=precision, kernel=kernel_label, ms=ms,
                             tflops=flop / ms / 1e9, rel_err=err, ok=ok, name=""))  # fmt: skip
            failed |= not ok
            print(
                f"{label:<21} N={n:<3} {precision} {kernel_label:<16} {ms:8.4f} ms "
                f"{flop / ms / 1e9:7.1f} TFLOP/s x{base / ms:5.2f} err {err:.1e}"
                f"{'' if ok else ' WRONG'}",
                flush=True,
            )
    return failed


def build_parser() -> argparse.ArgumentParser:
    """The command line (no GPU needed to parse it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", nargs="+", default=["tf32", "bf16"])
    parser.add_argument("--batch", nargs="+", type=int, default=[32, 256])
    parser.add_argument("--reps", type=int, default=20, help="timed calls per row")
    parser.add_argument("--json", default=None, help="write every row here")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the rows a run would time; exit (no GPU needed)")  # fmt: skip
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        rows = planned_rows(args)
        for label, n, precision, kernel_label in rows:
            print(f"{label:<21} N={n:<3} {precision} {kernel_label}")
        print(f"{len(rows)} rows")
        return 0

    import cupy
    import torch
    import torch.nn.functional as F

    from r2n.gpu import _runtime
    from r2n.gpu import conv as gconv
    from r2n.gpu import conv_tensor_core as tc

    t0 = time.perf_counter()
    ex = _runtime.executor()
    compile_modules(ex, (tc.IM2COL_FILE, tc.FILE), t0)
    torch.backends.cudnn.allow_tf32 = True

    launched = record_launches(ex)
    gpu = print_device(cupy, ex, args.reps)
    rows, failed = [], False
    host_rng = np.random.default_rng(0)
    device_rng = cupy.random.default_rng(0)
    saved = gconv.TC_IM2COL_MULTISTAGE
    try:
        for n in args.batch:
            for label, c, groups, hw, stride in CASES:
                x = device_rng.standard_normal((n, c, hw, hw), dtype=cupy.float32)
                fan_in = c // groups * 9
                w = cupy.asarray(
                    (host_rng.standard_normal((c, c // groups, 3, 3)) / np.sqrt(fan_in)).astype(
                        np.float32
                    )
                )
                b = cupy.asarray(host_rng.standard_normal(c).astype(np.float32))
                tx, tw, tb = (torch.as_tensor(a, device="cuda") for a in (x, w, b))
                geometry = dict(stride=stride, padding=1, groups=groups)
                exact = cupy.asarray(F.conv2d(tx.double(), tw.double(), tb.double(), **geometry))
                hw_out = exact.shape[2]
                flop = 2.0 * n * c * fan_in * hw_out * hw_out
                for precision in args.precision:
                    base = None

                    def r2n_conv(multistage, _p=precision, _x=x, _w=w, _b=b, _s=stride,
                                 _g=groups, _hw=hw_out):  # fmt: skip
                        # plans are keyed on the switch (r2n.gpu.conv._tunables)
                        gconv.TC_IM2COL_MULTISTAGE = multistage
                        return gconv.VARIANTS["5_tensor_core"](
                            _x, _w, _b, stride=(_s, _s), padding=(1, 1), dilation=(1, 1),
                            groups=_g, out_shape=(_x.shape[0], _w.shape[0], _hw, _hw),
                            precision=_p,
                        )  # fmt: skip

                    ttx, ttw, ttb = tx, tw, tb
                    if precision == "bf16":
                        ttx, ttw, ttb = (t.to(torch.bfloat16) for t in (tx, tw, tb))
                    runs = (
                        lambda _f=r2n_conv: _f(False),
                        lambda _f=r2n_conv: _f(True),
                        lambda _a=(ttx, ttw, ttb), _k=geometry: F.conv2d(*_a, **_k),
                    )
                    for kernel_label, fn in zip(CONV_KERNELS, runs, strict=True):
                        ms, err, ok, kernel = check_and_time(
                            cupy, fn, exact, tc.tolerance(precision), args.reps, launched,
                            torch_out=kernel_label == "cudnn",
                        )  # fmt: skip
                        if kernel_label == "5_tensor_core":
                            base = ms
                        row = dict(
                            case=label, batch=n, c=c, groups=groups, hw=hw, stride=stride,
                            precision=precision, kernel=kernel_label, ms=ms,
                            tflops=flop / ms / 1e9, rel_err=err, ok=ok, name=kernel,
                        )  # fmt: skip
                        rows.append(row)
                        failed |= not ok
                        print(
                            f"{label:<21} N={n:<3} {precision} {kernel_label:<13} "
                            f"{ms:8.4f} ms {row['tflops']:7.1f} TFLOP/s x{base / ms:5.2f} "
                            f"err {err:.1e}{'' if ok else ' WRONG'} {kernel}",
                            flush=True,
                        )
                del x, tx, exact
            for label, c, _, hw, _ in CASES[:4]:  # the "normal" chains
                failed |= _time_chain(
                    args, rows, n, label.replace("normal", "chain"), c, hw, host_rng, device_rng
                )
    finally:
        gconv.TC_IM2COL_MULTISTAGE = saved
    print(f"total {time.perf_counter() - t0:.1f} s")
    write_json(args.json, gpu, rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
