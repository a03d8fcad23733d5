"""``r2n classify``: top-k classes of many images with a whole r2n model.

    r2n classify --model res2net50_26w_4s --weights W.safetensors IMAGE...
    r2n classify --model ./res2net50_26w_4s.in1k photos/ 'more/*.png' @list.txt \\
        --batch-size 16 --format csv > results.csv

``--model`` is a name from ``r2n.models.list_models()``, timm's tagged name of
one (``tresnet_m.miil_in1k_448``; with ``--weights``), or a Hugging Face Hub
checkpoint directory (config.json + weights; no ``--weights``), whose
config.json also gives the preprocessing and class names.

Each INPUT is an image file, a directory (its image files, sorted by name;
not recursive, hidden files skipped), a glob pattern (quoted, so that r2n
expands it: sorted, ``**`` recursive, every matching file), or ``@LIST``: a
text file with one image path per line (blank lines and ``#`` comments
skipped; ``@-`` reads standard input). Images run in batches of
``--batch-size``; each batch's results are printed as soon as it is done, in
input order, as a table (default), CSV or JSON lines (``--format``).

Images are decoded with Pillow, bounded before decoding (``--max-pixels``),
and preprocessed as timm's eval transform (r2n.models._preprocess). Problems
with one image or input (missing, undecodable, too large, a pattern that
matches nothing) print one line on stderr and the run goes on; the exit code
is then 1. Problems with the model or weights end the run at once with one
line and exit code 1, never a traceback. A progress bar is drawn on stderr
only when stderr is a terminal.

The model is an :class:`r2n.models.Predictor`: it runs here, or with
``--dask ADDRESS`` on a dask.distributed cluster through
:func:`r2n.models.classify_on_dask` (one model per worker process, the
batches spread over the workers, results in input order), printed the same
way. The images and weights must then be readable by the workers at the same
paths.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import itertools
import json
import os
import sys
import time

FORMATS = ("table", "csv", "jsonl")
_GLOB_CHARS = set("*?[")


class CliError(Exception):
    """A problem that ends the run: printed as one line."""


def add_arguments(parser) -> None:
    """The ``classify`` subcommand's options."""
    from ..models._preprocess import DEFAULT_MAX_PIXELS

    parser.add_argument(
        "--model",
        required=True,
        help="a name from r2n.models.list_models(), timm's tagged name of one "
        "(list_models(pretrained=True)), or a Hub checkpoint directory "
        "(config.json + model.safetensors or pytorch_model.bin)",
    )
    parser.add_argument(
        "--weights",
        help="checkpoint file (.safetensors, .npz, or with torch .pth/.pt/.bin); "
        "required with a model name, not with a directory",
    )
    parser.add_argument(
        "--backend", choices=("reference", "cpu", "gpu"), default=None, help="force a backend"
    )
    parser.add_argument("--topk", type=int, default=5, help="classes shown per image (5)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (8)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (table)")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images with more pixels, before decoding ({DEFAULT_MAX_PIXELS:,})",
    )
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="classify on a dask.distributed cluster: its scheduler's address "
        "(tcp://host:8786); images and weights at the same paths on the workers",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image file, directory, quoted glob pattern, or @LIST (one path per line; @- stdin)",
    )


# --------------------------------------------------------------------------- #
# Inputs
# --------------------------------------------------------------------------- #


def _image_extensions() -> set[str]:
    """Extensions of the formats Pillow can open (".jpg", ".png", ...)."""
    from PIL import Image

    Image.init()
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def expand_inputs(inputs, stdin=None) -> tuple[list[str], list[str]]:
    """INPUT arguments -> (image paths in order, one-line problems).

    A problem (a missing path, a pattern or directory without images, an
    unreadable list) does not stop the others.
    """
    paths, problems = [], []
    extensions = None
    for item in inputs:
        if item.startswith("@"):
            listed, problem = _read_list(item[1:], stdin)
            paths.extend(listed)
            if problem:
                problems.append(problem)
        elif os.path.isdir(item):
            if extensions is None:
                extensions = _image_extensions()
            try:
                names = os.listdir(item)
            except OSError as e:
                problems.append(f"cannot list directory {item!r}: {e.strerror or e}")
                continue
            found = sorted(
                os.path.join(item, name)
                for name in names
                if not name.startswith(".")
                and os.path.splitext(name)[1].lower() in extensions
                and os.path.isfile(os.path.join(item, name))
            )
            if not found:
                problems.append(f"no image files in directory {item!r}")
            paths.extend(found)
        elif not os.path.exists(item) and _GLOB_CHARS & set(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                problems.append(f"no files match {item!r}")
            paths.extend(found)
        else:
            paths.append(item)  # a file; a missing one is reported when it is read
    return paths, problems


def _read_list(name, stdin) -> tuple[list[str], str | None]:
    try:
        if name == "-":
            lines = (stdin or sys.stdin).read().splitlines()
        else:
            with open(name, encoding="utf-8") as f:
                lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return [], f"cannot read list file {name!r}: {e.strerror or e}"
    paths = [line.strip() for line in lines]
    return [p for p in paths if p and not p.startswith("#")], None


# --------------------------------------------------------------------------- #
# Output
# --------------------------------------------------------------------------- #


class _Writer:
    """Prints each image's top-k as a table block, CSV rows or a JSON line."""

    def __init__(self, fmt, out, names):
        self.fmt, self.out, self.names = fmt, out, names
        self.csv = None
        if fmt == "csv":
            self.csv = csv.writer(out, lineterminator="\n")
            self.csv.writerow(["image", "rank", "class", "probability", "label"])

    def write(self, path, top):
        """top: [(class index, probability)] in rank order."""
        label = (lambda c: self.names[c]) if self.names else (lambda c: None)
        if self.fmt == "table":
            print(path, file=self.out)
            for rank, (c, p) in enumerate(top, 1):
                name = f"  {label(c)}" if self.names else ""
                print(f"  {rank}. {c:4d}  {p:.4f}{name}", file=self.out)
        elif self.fmt == "csv":
            for rank, (c, p) in enumerate(top, 1):
                self.csv.writerow([path, rank, c, f"{p:.6f}", label(c) or ""])
        else:
            rows = [
                {"rank": rank, "class": int(c), "probability": float(p), "label": label(c)}
                for rank, (c, p) in enumerate(top, 1)
            ]
            print(json.dumps({"image": path, "top": rows}), file=self.out)


class _Progress:
    """``[#####-----] 50/100 images, 3 failed, 12.5 images/s`` on a terminal."""

    WIDTH = 30

    def __init__(self, total, stream):
        self.total, self.stream = total, stream
        self.done = self.failed = 0
        self.start = time.perf_counter()

    def update(self, done, failed):
        self.done += done
        self.failed += failed
        filled = self.WIDTH * self.done // max(self.total, 1)
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        failed = f", {self.failed} failed" if self.failed else ""
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.stream.write(
            f"\r[{bar}] {self.done}/{self.total} images{failed}, {rate:.1f} images/s"
        )
        self.stream.flush()

    def clear(self):
        self.stream.write("\r\033[K")
        self.stream.flush()


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #


@contextlib.contextmanager
def _model_problems(model_arg):
    """A problem with the model or its weights (here or on a Dask worker,
    whose errors come back as they were raised) -> CliError, one line."""
    from r2n.models import StateDictError

    try:
        yield
    except StateDictError as e:
        raise CliError(f"weights do not fit {model_arg}: {e.summary()}") from e
    except (
        ValueError,
        TypeError,
        FileNotFoundError,
        ImportError,
        NotImplementedError,
        RuntimeError,
    ) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        if message.startswith("r2n.load_state_dict:"):
            message = f"cannot load weights: {message}"
        raise CliError(message) from e


def _predictor(model_arg, weights, backend, topk, batch_size, max_pixels):
    """The Predictor of --model / --weights and the options; CliError otherwise."""
    import r2n.models

    from ..models._zoo import directory_of

    directory = directory_of(model_arg)
    if directory is not None and weights is not None:
        raise CliError(
            f"--weights is not used with a checkpoint directory ({model_arg!r} holds its weights)"
        )
    with _model_problems(model_arg):  # an unknown name or tag fails first
        predictor = r2n.models.Predictor(
            model_arg,
            weights,
            backend=backend,
            batch_size=batch_size,
            topk=topk,
            max_pixels=max_pixels,
        )
    if directory is None and weights is None:
        raise CliError(
            f"--weights is required with a model name ({model_arg!r}); or give a "
            f"Hub checkpoint directory as --model"
        )
    return predictor


def run(
    model,
    inputs,
    *,
    weights=None,
    backend=None,
    topk=5,
    batch_size=8,
    fmt="table",
    max_pixels=None,
    dask=None,
    out=None,
    err=None,
    stdin=None,
) -> int:
    """Classify every image of ``inputs``; 0 when all succeeded, else 1.

    ``dask``: a scheduler address; the images then run on that cluster (same
    output). Raises CliError for problems that end the run (model, weights,
    options, the cluster).
    """
    from r2n.models import _preprocess

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    max_pixels = _preprocess.DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    for option, value in (("--topk", topk), ("--batch-size", batch_size)):
        if value < 1:
            raise CliError(f"{option} must be >= 1, got {value}")
    if max_pixels < 1:
        raise CliError(f"--max-pixels must be >= 1, got {max_pixels}")
    if fmt not in FORMATS:
        raise CliError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    predictor = _predictor(model, weights, backend, topk, batch_size, max_pixels)
    if dask is None:
        with _model_problems(model):
            names = predictor.labels()  # builds the model: its problems end the run now
            return _classify_all(inputs, stdin, names, predictor, None, fmt, out, err)
    try:
        import distributed
    except ImportError:
        raise CliError(
            '--dask needs dask.distributed: pip install "r2n[dask]" '
            '(in a checkout: pip install -e ".[dask]")'
        ) from None
    try:
        client = distributed.Client(dask)
    except (OSError, ValueError, TypeError) as e:
        raise CliError(f"cannot reach the Dask scheduler {dask!r}: {_one_line(e)}") from e
    with client, _model_problems(model):
        try:
            # One worker builds the model first: a model or weights problem ends
            # the run before any image is sent, as it does here.
            names = client.submit(predictor.labels, pure=False).result()
            return _classify_all(inputs, stdin, names, predictor, client, fmt, out, err)
        except distributed.KilledWorker as e:
            raise CliError(f"a Dask worker died: {_one_line(e)}") from e


def _classify_all(inputs, stdin, names, predictor, client, fmt, out, err) -> int:
    """Expand ``inputs``, classify them (here, or on ``client``'s cluster),
    print each batch as it comes; 0 when every input and image succeeded."""
    from r2n.models import classify_on_dask

    paths, problems = expand_inputs(inputs, stdin)
    for problem in problems:
        print(f"r2n classify: error: {problem}", file=err)
    if not paths:
        raise CliError("no images to classify")
    if client is None:
        predictions = _predict_here(predictor, paths)
    else:
        predictions = classify_on_dask(paths, predictor, client)
    with contextlib.closing(predictions):  # stopped early: cancel what is in flight
        failed = _print_all(paths, predictions, names, fmt, predictor.batch_size, out, err)
    return 1 if failed or problems else 0


def _predict_here(predictor, paths):
    """One Prediction per path, in order, a batch at a time in this process."""
    size = predictor.batch_size
    for start in range(0, len(paths), size):
        yield from predictor.predict_paths(paths[start : start + size])


def _print_all(paths, predictions, names, fmt, batch_size, out, err) -> int:
    """Print the Predictions of ``paths`` (as given: a Dask run's are made
    absolute) a batch at a time, errors on ``err``; the number that failed."""
    writer = _Writer(fmt, out, names)
    progress = _Progress(len(paths), err) if _isatty(err) else None
    results = zip(paths, predictions, strict=True)
    failed = 0
    while batch := list(itertools.islice(results, batch_size)):
        if progress:
            progress.clear()
        errors = 0
        for path, p in batch:
            if p.error is None:
                writer.write(
                    path, list(zip(p.classes.tolist(), p.probabilities.tolist(), strict=True))
                )
            else:
                # A Dask worker saw the path made absolute: name it as given.
                message = p.error.replace(repr(p.path), repr(path))
                print(f"r2n classify: error: {message}", file=err)
                errors += 1
        out.flush()
        failed += errors
        if progress:
            progress.update(len(batch), errors)
    if progress:
        progress.clear()
    if failed and len(paths) > 1:
        print(f"r2n classify: {failed} of {len(paths)} images failed", file=err)
    return failed


def _one_line(e) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def main(args) -> int:
    """The command (parsed arguments): one line on stderr and exit code 1 for user errors."""
    try:
        return run(
            args.model,
            args.inputs,
            weights=args.weights,
            backend=args.backend,
            topk=args.topk,
            batch_size=args.batch_size,
            fmt=args.format,
            max_pixels=args.max_pixels,
            dask=args.dask,
        )
    except CliError as e:
        print(f"r2n classify: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as Python's docs advise:
        # point stdout at devnull so that the interpreter's final flush cannot fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
