"""Image decoding and timm's evaluation preprocessing, with Pillow.

For a model's config (``input_size`` (3, S, S), ``crop_pct``,
``interpolation``, ``mean``, ``std`` and ``crop_mode``), as
``timm.data.create_transform`` in eval mode:

1. convert to RGB (16-bit grayscale scaled to 8 bits, see :func:`to_rgb`);
2. "center" (the default): resize the shorter side to ``floor(S / crop_pct)``
   (the longer side keeps the aspect ratio, truncated as torchvision's
   ``Resize``); "squash": resize both sides to ``floor(S / crop_pct)``; with
   Pillow's filter of that name (antialiased);
3. center-crop S x S (offsets rounded as torchvision's ``CenterCrop``);
4. scale to [0, 1], subtract mean, divide by std; HWC -> CHW, float32.

This is exactly timm's result while the resized image of step 2 has at most
:data:`FULL_RESIZE_MAX_PIXELS` (8 Mpixel: aspect ratios up to about 128:1 at
224 px). A more elongated image is not resized whole (a 1 x 8000 image's short
side to 256 would make a 256 x 2,048,000 image, 1.5 GB): only the region of
the source that survives the crop is resampled (``Image.crop`` to whole
pixels, then ``Image.resize(box=...)``, the same filter taps), so the work is
bounded by that region and the S x S output; a few pixels may then differ
from timm's by a level or so (Pillow's float32 box and pass order).

Images are bounded before they are decoded: :func:`load_image` reads the size
from the header and refuses more than ``max_pixels`` pixels, and Pillow's
decompression-bomb error becomes an :class:`ImageError`.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings

import numpy as np

#: timm's interpolation names -> Pillow's resampling filters.
_FILTERS = {
    "nearest": "NEAREST",
    "bilinear": "BILINEAR",
    "bicubic": "BICUBIC",
    "box": "BOX",
    "hamming": "HAMMING",
    "lanczos": "LANCZOS",
}
CROP_MODES = ("center", "squash")

#: Default bound on an image's pixels: Pillow's own ``Image.MAX_IMAGE_PIXELS``
#: (about 9459 x 9459), above which Pillow only warns.
DEFAULT_MAX_PIXELS = 89_478_485

#: Resize-then-crop (timm's pixels exactly) while the resized image has at
#: most this many pixels (24 MiB of RGB; aspect ratios up to 128:1 at
#: 224 px); beyond, resample only the crop's box (see :func:`preprocess`).
FULL_RESIZE_MAX_PIXELS = 1 << 23

#: Largest accepted input_size (a config from a file must not ask for more).
_MAX_INPUT_SIZE = 4096


class ImageError(ValueError):
    """An image file that cannot be read, decoded, or is too large."""


class ConfigError(ValueError):
    """A preprocessing config (e.g. a checkpoint's pretrained_cfg) r2n cannot follow."""


def load_image(path, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Open, bound and fully decode an image file (``PIL.Image``, any mode).

    The size is read from the header first: an image of more than
    ``max_pixels`` pixels is refused before any pixel is decoded. (Pillow
    itself refuses more than twice ``Image.MAX_IMAGE_PIXELS``, whatever
    ``max_pixels`` says.)

    Raises FileNotFoundError for a missing path and ImageError when the image
    is too large or Pillow cannot decode it; messages are one line.
    """
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such image file: {path!r}")
    try:
        with warnings.catch_warnings():
            # Our own bound below replaces Pillow's warning at MAX_IMAGE_PIXELS.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                w, h = image.size
                if w * h > max_pixels:
                    raise ImageError(
                        f"image {path!r} is {w} x {h} = {w * h:,} pixels, above the limit "
                        f"of {max_pixels:,} (--max-pixels); not decoded"
                    )
                image.load()  # decodes now, while the file is open
                return image
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"image {path!r} refused: {_one_line(e)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"cannot decode image {path!r}: {_one_line(e)}") from e
    except Exception as e:  # Pillow's decoders raise more (struct.error, IndexError...)
        raise ImageError(
            f"cannot decode image {path!r}: {type(e).__name__}: {_one_line(e)}"
        ) from e


def _one_line(e) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def to_rgb(image):
    """Any PIL image as 8-bit RGB.

    16-bit grayscale (modes ``I;16``, ``I;16L``, ``I;16B``, ``I;16N``, and
    ``I``, which Pillow uses for 16-bit PNG and TIFF) is scaled to 8 bits
    (``round(v / 257)``, 65535 -> 255; ``I`` values clipped to 0..65535
    first); Pillow's own conversion would clip every value above 255 to
    white. Other modes convert as Pillow converts them (alpha dropped).
    """
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.int64)  # H, W
        values = np.clip(values, 0, 65535)
        eight_bit = ((values * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)
        return Image.fromarray(eight_bit, mode="L").convert("RGB")
    return image.convert("RGB")


def check_config(config, where: str = "config") -> dict:
    """A preprocessing config, validated and normalised.

    Parameters
    ----------
    config : mapping with ``input_size`` (3, S, S), ``crop_pct`` in [0.01, 1],
        ``interpolation`` (one of nearest, bilinear, bicubic, box, hamming,
        lanczos), ``mean`` and ``std`` (3 numbers each, std > 0) and optionally
        ``crop_mode`` ("center", the default, or "squash"); other keys ignored.
    where : what the config came from, for messages.

    Returns
    -------
    dict with exactly those six keys, as tuples / floats / str.

    Raises
    ------
    ConfigError naming the field and what came.
    """

    def bad(field, expected):
        value = config.get(field, "(missing)")
        return ConfigError(f"{where}: {field} must be {expected}, got {value!r}")

    def numbers_of(field, count):
        value = config.get(field)
        if (
            isinstance(value, (str, bytes))
            or not hasattr(value, "__len__")
            or len(value) != count
            or not all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                for v in value
            )
        ):
            raise bad(field, f"{count} finite numbers")
        return tuple(value)

    size = numbers_of("input_size", 3)
    if not all(float(v).is_integer() for v in size) or size[0] != 3:
        raise bad("input_size", "(3, S, S) with integer S")
    size = tuple(int(v) for v in size)
    if size[1] != size[2]:
        raise bad("input_size", "square, (3, S, S)")
    if not 1 <= size[1] <= _MAX_INPUT_SIZE:
        raise bad("input_size", f"(3, S, S) with 1 <= S <= {_MAX_INPUT_SIZE}")
    crop_pct = config.get("crop_pct")
    if (
        isinstance(crop_pct, bool)
        or not isinstance(crop_pct, numbers.Real)
        or not 0.01 <= crop_pct <= 1
    ):
        raise bad("crop_pct", "a number in [0.01, 1]")
    interpolation = config.get("interpolation")
    if interpolation not in _FILTERS:
        raise bad("interpolation", f"one of {', '.join(_FILTERS)}")
    crop_mode = config.get("crop_mode", "center")
    if crop_mode not in CROP_MODES:
        raise bad("crop_mode", f"one of {', '.join(CROP_MODES)} (r2n has no 'border' mode)")
    mean = tuple(float(v) for v in numbers_of("mean", 3))
    std = tuple(float(v) for v in numbers_of("std", 3))
    if not all(v > 0 for v in std):
        raise bad("std", "3 numbers > 0")
    return dict(
        input_size=size,
        crop_pct=float(crop_pct),
        interpolation=interpolation,
        crop_mode=crop_mode,
        mean=mean,
        std=std,
    )


def preprocess(image, config) -> np.ndarray:
    """One PIL image -> (3, S, S) float32, as timm's eval transform.

    Parameters
    ----------
    image : PIL.Image (any mode; converted with :func:`to_rgb`)
    config : dict with input_size (3, S, S), crop_pct, interpolation, mean,
        std, and optionally crop_mode (see :func:`check_config`)
    """
    from PIL import Image

    config = check_config(config)
    image = to_rgb(image)
    size = config["input_size"][1]
    scale = math.floor(size / config["crop_pct"])
    w, h = image.size
    if config["crop_mode"] == "squash":
        new_w = new_h = scale
    elif w <= h:
        # torchvision: the short side becomes `scale`, the long one int(scale * long / short)
        new_w, new_h = scale, int(scale * h / w)
    else:
        new_w, new_h = int(scale * w / h), scale
    # torchvision's CenterCrop offsets in the resized image
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    resample = getattr(Image.Resampling, _FILTERS[config["interpolation"]])
    if new_w * new_h <= FULL_RESIZE_MAX_PIXELS:
        # Resize, then crop: timm's pixels exactly.
        image = image.resize((new_w, new_h), resample)
        image = image.crop((left, top, left + size, top + size))
    else:
        # A degenerate aspect ratio (a 1 x 8000 image would be resized to
        # 256 x 2,048,000): resample only the part of the source the crop
        # keeps, cut to whole pixels (plus the widest filter's reach) so that
        # the box, which Pillow holds in float32, has small coordinates. The
        # taps are the full resize's; what may differ is Pillow's choice of
        # which pass runs first (it depends on the sizes), and the float32
        # box: a few pixels by a level or so.
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        reach_x = math.ceil(3 * max(sx, 1.0)) + 1
        reach_y = math.ceil(3 * max(sy, 1.0)) + 1
        x0 = max(math.floor(box[0]) - reach_x, 0)
        y0 = max(math.floor(box[1]) - reach_y, 0)
        x1 = min(math.ceil(box[2]) + reach_x, w)
        y1 = min(math.ceil(box[3]) + reach_y, h)
        region = image.crop((x0, y0, x1, y1))
        local_box = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
        image = region.resize((size, size), resample, box=local_box)
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
