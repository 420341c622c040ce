"""Decode any image file into an upright 8-bit RGB picture, the same way everywhere.

Training, validation, prediction and the data checks all call :func:`load_rgb`, so a photo is seen
identically in each: EXIF orientation applied, first frame of animations and multi-page files,
16-bit and float images scaled to 8 bits, transparency composited onto a fixed background.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

#: Background that transparent pixels are composited onto. Fixed (not random) so a transparent
#: PNG looks the same in training and prediction; white matches how such images are displayed.
ALPHA_BACKGROUND = (255, 255, 255)


def load_rgb(path: str | Path, min_size: int | None = None) -> Image.Image:
    """Open ``path`` and return an upright RGB ``PIL.Image`` (fully decoded, file closed).

    With ``min_size``, a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, several
    times faster on large photos) as long as its short side stays at least ``min_size`` pixels, so the
    resize or crop that follows never works from fewer pixels than it outputs. The short side is the
    same before and after EXIF rotation, so orientation is applied afterwards as usual.
    """
    with Image.open(path) as img:
        if min_size is not None and img.format == "JPEG":
            draft_to_short_side(img, min_size)
        img.load()
        return to_rgb(img)


def draft_to_short_side(img: Image.Image, min_size: int) -> None:
    """Ask the JPEG decoder for the smallest DCT scale whose short side is still ``>= min_size``."""
    width, height = img.size
    factor = min_size / min(width, height)
    if factor > 0.5:
        return  # no DCT scale fits
    # draft() picks the strongest reduction that keeps both sides >= the requested size.
    img.draft("RGB", (math.ceil(width * factor), math.ceil(height * factor)))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert an opened image of any mode to upright 8-bit RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _high_depth_to_l(img)
    if _has_transparency(img):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def _has_transparency(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float single-channel image to 8-bit grayscale."""
    array = np.asarray(img)
    if array.dtype.kind == "f":
        lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
    else:
        # 16-bit files (PNG, TIFF) use the full 0..65535 range; Pillow may hand them over as int32.
        scaled = array.astype(np.float64) / 257.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
