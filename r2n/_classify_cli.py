"""``r2n classify``: top-k ImageNet classes of images with a whole r2n model.

    r2n classify --model res2net50_26w_4s --weights W.safetensors [--backend cpu] \\
        IMAGE... [--topk 5]

Images are decoded with Pillow and preprocessed as timm's default eval config
of the model (r2n.models._preprocess); the logits' softmax gives the
probabilities. Problems a user can cause (a bad path, an image Pillow cannot
decode, weights that do not fit the model) end with one line on stderr and
exit code 1, never a traceback.
"""

from __future__ import annotations

import sys

import numpy as np

#: The classifier's weight key per model family (gives num_classes).
_CLASSIFIER = {"res2net": "fc.weight", "tresnet": "head.fc.weight"}


class CliError(Exception):
    """A user-facing problem: printed as one line."""


def _softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def run(model_name, weights, images, *, backend=None, topk=5, out=sys.stdout) -> int:
    """Classify ``images`` and print the top-k classes of each; 0 on success."""
    import r2n
    import r2n.models
    from r2n.models import _preprocess

    if model_name not in r2n.models.list_models():
        raise CliError(
            f"unknown model {model_name!r}; known: {', '.join(r2n.models.list_models())}"
        )
    if topk < 1:
        raise CliError(f"--topk must be >= 1, got {topk}")
    # Decode every image first: a bad file fails before any weights load.
    batch = []
    arch = r2n.models.ARCHS[model_name]
    for path in images:
        try:
            batch.append(_preprocess.preprocess(_preprocess.load_image(path), arch.preprocess))
        except (FileNotFoundError, _preprocess.ImageError) as e:
            raise CliError(str(e)) from e
    try:
        state = r2n.load_state_dict(weights)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise CliError(f"cannot load weights: {e}") from e
    fc = state.get(_CLASSIFIER[arch.family])
    num_classes = int(fc.shape[0]) if getattr(fc, "ndim", 0) == 2 else 1000
    try:
        model = r2n.models.create(model_name, state, num_classes=num_classes, backend=backend)
    except r2n.models.StateDictError as e:
        raise CliError(f"weights {weights!r} do not fit {model_name}: {e.summary()}") from e
    except (ValueError, TypeError, NotImplementedError, RuntimeError) as e:
        raise CliError(str(e)) from e
    x = np.stack(batch)  # N, 3, S, S
    if backend == "gpu":
        import cupy

        probs = _softmax(cupy.asnumpy(model(cupy.asarray(x))).astype(np.float64))
    else:
        probs = _softmax(model(x).astype(np.float64))
    names = _preprocess.class_names() if num_classes == 1000 else None
    k = min(topk, num_classes)
    for path, p in zip(images, probs, strict=True):
        print(path, file=out)
        for rank, c in enumerate(np.argsort(-p, kind="stable")[:k], 1):
            label = f"  {names[c]}" if names else ""
            print(f"  {rank}. {c:4d}  {p[c]:.4f}{label}", file=out)
    return 0


def main(model, weights, images, backend=None, topk=5) -> int:
    """The command: one line on stderr and exit code 1 for user errors."""
    try:
        return run(model, weights, images, backend=backend, topk=topk)
    except CliError as e:
        print(f"r2n classify: error: {e}", file=sys.stderr)
        return 1
