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
"""

from __future__ import annotations

import csv
import glob
import json
import os
import sys
import time

import numpy as np

#: The classifier's weight key per model family (gives num_classes).
_CLASSIFIER = {"res2net": "fc.weight", "tresnet": "head.fc.weight"}
FORMATS = ("table", "csv", "jsonl")
_GLOB_CHARS = set("*?[")


class CliError(Exception):
    """A problem that ends the run: printed as one line."""


def add_arguments(parser) -> None:
    """The ``classify`` subcommand's options."""
    from .models._preprocess import DEFAULT_MAX_PIXELS

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


def _softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _load_model(model_arg, weights, backend):
    """(model, class names or None) from --model / --weights; CliError otherwise."""
    import r2n
    import r2n.models
    from r2n.models import _hub, _preprocess

    base = _hub.split_name(model_arg)[0]
    directory = None if base in r2n.models.ARCHS else _hub.hub_dir_of(model_arg)
    try:
        if directory is None:
            r2n.models.expected_keys(model_arg)  # an unknown name or tag fails first
            if weights is None:
                raise CliError(
                    f"--weights is required with a model name ({model_arg!r}); or give a "
                    f"Hub checkpoint directory as --model"
                )
            try:
                state = r2n.load_state_dict(weights)
            except (FileNotFoundError, ValueError, ImportError) as e:
                raise CliError(f"cannot load weights: {e}") from e
            fc = state.get(_CLASSIFIER[r2n.models.ARCHS[base].family])
            num_classes = int(fc.shape[0]) if getattr(fc, "ndim", 0) == 2 else None
            model = r2n.models.create(model_arg, state, num_classes=num_classes, backend=backend)
            names = None
        else:
            if weights is not None:
                raise CliError(
                    f"--weights is not used with a checkpoint directory ({model_arg!r} "
                    f"holds its weights)"
                )
            model = r2n.models.create(model_arg, backend=backend)
            names = r2n.models.hub_checkpoint(directory).label_names
    except r2n.models.StateDictError as e:
        raise CliError(f"weights do not fit {model_arg}: {e.summary()}") from e
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        raise CliError(" ".join(str(e).split())) from e
    except (NotImplementedError, RuntimeError) as e:
        raise CliError(str(e)) from e
    if names is None and model.num_classes == 1000:
        names = _preprocess.class_names()
    return model, names


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
    out=None,
    err=None,
    stdin=None,
) -> int:
    """Classify every image of ``inputs``; 0 when all succeeded, else 1.

    Raises CliError for problems that end the run (model, weights, options).
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
    net, names = _load_model(model, weights, backend)
    paths, problems = expand_inputs(inputs, stdin)
    for problem in problems:
        print(f"r2n classify: error: {problem}", file=err)
    if not paths:
        raise CliError("no images to classify")
    writer = _Writer(fmt, out, names)
    progress = _Progress(len(paths), err) if _isatty(err) else None
    k = min(topk, net.num_classes)
    failed = 0
    for start in range(0, len(paths), batch_size):
        batch, images = paths[start : start + batch_size], []
        errors = []
        for path in batch:
            try:
                image = _preprocess.load_image(path, max_pixels)
                images.append((path, _preprocess.preprocess(image, net.preprocess)))
            except (FileNotFoundError, _preprocess.ImageError, OSError) as e:
                errors.append(str(e))
        probs = _classify(net, [x for _, x in images], backend) if images else []
        if progress:
            progress.clear()
        for message in errors:
            print(f"r2n classify: error: {message}", file=err)
        for (path, _), p in zip(images, probs, strict=True):
            top = np.argsort(-p, kind="stable")[:k]
            writer.write(path, [(int(c), float(p[c])) for c in top])
        out.flush()
        failed += len(errors)
        if progress:
            progress.update(len(batch), len(errors))
    if progress:
        progress.clear()
    if failed and len(paths) > 1:
        print(f"r2n classify: {failed} of {len(paths)} images failed", file=err)
    return 1 if failed or problems else 0


def _classify(model, arrays, backend):
    """Softmax probabilities (N, num_classes) float64 of preprocessed images."""
    x = np.stack(arrays)  # N, 3, S, S
    if backend == "gpu":
        import cupy

        return _softmax(cupy.asnumpy(model(cupy.asarray(x))).astype(np.float64))
    return _softmax(model(x).astype(np.float64))


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
