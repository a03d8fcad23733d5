"""Image decoding and timm's default evaluation preprocessing, with Pillow.

For a model's config (``input_size`` (3, S, S), ``crop_pct``,
``interpolation``, ``mean``, ``std``), as ``timm.data.create_transform`` in
eval mode with the default "center" crop:

1. convert to RGB;
2. resize the shorter side to ``floor(S / crop_pct)`` (the longer side keeps
   the aspect ratio, truncated as torchvision's ``Resize``), with Pillow's
   filter of that name (antialiased);
3. center-crop S x S (offsets rounded as torchvision's ``CenterCrop``);
4. scale to [0, 1], subtract mean, divide by std; HWC -> CHW, float32.
"""

from __future__ import annotations

import math
import os

import numpy as np

_FILTERS = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST"}


class ImageError(ValueError):
    """An image file that cannot be read or decoded."""


def load_image(path):
    """Open and fully decode an image file as an RGB ``PIL.Image``.

    Raises FileNotFoundError for a missing path and ImageError when Pillow
    cannot decode the file.
    """
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such image file: {path!r}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # decodes now, while the file is open
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot decode image {path!r}: {e}") from e


def preprocess(image, config) -> np.ndarray:
    """One PIL image -> (3, S, S) float32, as timm's eval transform.

    Parameters
    ----------
    image : PIL.Image (any mode; converted to RGB)
    config : dict with input_size (3, S, S), crop_pct, interpolation, mean, std
    """
    from PIL import Image

    image = image.convert("RGB")
    size = config["input_size"][1]
    scale = math.floor(size / config["crop_pct"])
    w, h = image.size
    if (
        w <= h
    ):  # torchvision: the short side becomes `scale`, the long one int(scale * long / short)
        new_w, new_h = scale, int(scale * h / w)
    else:
        new_w, new_h = int(scale * w / h), scale
    resample = getattr(Image.Resampling, _FILTERS[config["interpolation"]])
    image = image.resize((new_w, new_h), resample)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    a = np.asarray(image, dtype=np.float32) / np.float32(255)  # S, S, 3
    mean = np.asarray(config["mean"], np.float32)
    std = np.asarray(config["std"], np.float32)
    return np.ascontiguousarray(((a - mean) / std).transpose(2, 0, 1))  # 3, S, S


def class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in class-index order.

    From timm's ``timm/data/_info`` (imagenet_synsets + imagenet_synset_to_lemma),
    shipped as ``r2n/models/imagenet_classes.txt``.
    """
    path = os.path.join(os.path.dirname(__file__), "imagenet_classes.txt")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]
