"""Command line: ``r2n check``, ``bench``, ``ladder``, ``profile``, ``classify``
(also ``python -m r2n ...``).

One module per command, each with ``add_arguments(parser)`` and the function
that runs it on the parsed options:

=============  ==============================================================
module         command
=============  ==============================================================
``check``      every backend against the float64 reference on Res2Net-50
               shapes: a table of errors and median times (PyTorch too, when
               installed); exit code 0 when every implemented backend agrees
``bench``      every backend checked and timed side by side, with this
               machine's peaks, the Res2Net speedup model, JSON and PNG
``ladder``     every numbered variant (step) of one op checked and timed side
               by side against the roofline, the library last (``r2n._ladder``)
``profile``    a whole model layer by layer against this machine's FMA peak,
               optionally beside ONNX Runtime's per-node profile
``classify``   the top-k classes of images (files, directories, globs,
               @lists) with a whole model and its weights
=============  ==============================================================

Nothing here is imported by ``import r2n``.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = "r2n's command line: check, time and profile the kernels; classify images."


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return its exit code.

    No command runs ``r2n check``."""
    from . import bench, check, classify, ladder, profile

    parser = argparse.ArgumentParser(prog="r2n", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command")
    check.add_arguments(
        sub.add_parser(
            "check", help="check every backend against the reference and time it (default)"
        )
    )
    classify.add_arguments(
        sub.add_parser(
            "classify",
            help="top-k classes of images, directories, globs or @lists with a whole model",
        )
    )
    bench.add_arguments(
        sub.add_parser(
            "bench", help="check and time every backend side by side; the speedup model; plots"
        )
    )
    ladder_parser = sub.add_parser(
        "ladder",
        help="every numbered variant of an op, checked and timed against the roofline",
        description=ladder.DESCRIPTION,
    )
    ladder.add_arguments(ladder_parser)
    profile_parser = sub.add_parser(
        "profile", help="a whole model layer by layer: ms, GFLOP/s, %% of the FMA peak"
    )
    profile.add_arguments(profile_parser)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.run(args)
    if args.command == "ladder":
        return ladder.run(args, ladder_parser)
    if args.command == "profile":
        return profile.run(args, profile_parser)
    if args.command == "classify":
        return classify.main(args)
    if args.command in (None, "check"):
        try:
            return check.check(
                quick=getattr(args, "quick", False),
                ops=getattr(args, "op", None),
                seed=getattr(args, "seed", 0),
            )
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
    parser.print_help()
    return 2
