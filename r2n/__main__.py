"""Command line: ``r2n check``, ``bench``, ``profile``, ``classify`` (also ``python -m r2n ...``).

``check`` runs every available backend against the float64 reference on
Res2Net-50 shapes and prints a table of errors and median times (PyTorch too,
when installed). Exit code 0 when every implemented backend agrees.

``classify`` prints the top-k classes of images (files, directories, globs,
@lists) with a whole model and its weights (see r2n/_classify_cli.py).

``bench`` checks and times every backend side by side, with this machine's
peaks, the Res2Net speedup model and optional JSON and PNG output (see
``r2n._bench_cli``).

``profile`` times a whole model layer by layer against this machine's FMA
peak, optionally beside ONNX Runtime's per-node profile (see
``r2n._profile_cli``).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="r2n", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser(
        "check", help="check every backend against the reference and time it (default)"
    )
    check.add_argument("--quick", action="store_true", help="smaller images (28x28)")
    check.add_argument("--op", nargs="+", metavar="OP", help="only these ops")
    check.add_argument("--seed", type=int, default=0, help="random seed of the inputs")
    classify = sub.add_parser(
        "classify",
        help="top-k classes of images, directories, globs or @lists with a whole model",
    )
    from . import _classify_cli

    _classify_cli.add_arguments(classify)
    from . import _bench_cli

    bench = sub.add_parser(
        "bench", help="check and time every backend side by side; the speedup model; plots"
    )
    _bench_cli.add_arguments(bench)
    from . import _profile_cli

    profile = sub.add_parser(
        "profile", help="a whole model layer by layer: ms, GFLOP/s, %% of the FMA peak"
    )
    _profile_cli.add_arguments(profile)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench_cli.run(args)
    if args.command == "profile":
        return _profile_cli.run(args, profile)
    if args.command == "classify":
        return _classify_cli.main(args)
    from . import _check_cli

    if args.command in (None, "check"):
        try:
            return _check_cli.main(
                quick=getattr(args, "quick", False),
                ops=getattr(args, "op", None),
                seed=getattr(args, "seed", 0),
            )
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
