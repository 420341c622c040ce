"""Decode any image file into an upright 8-bit RGB picture, the same way everywhere.

Training, validation, prediction and the data checks all call :func:`load_rgb`, so a photo is seen
identically in each: EXIF orientation applied, first frame of animations and multi-page files,
16-bit and float images scaled to 8 bits, transparency composited onto a fixed background.

Every failure to decode a file surfaces here as an exception, never as stray output: the pixel limit
raises :class:`PIL.Image.DecompressionBombError` and libtiff's complaints (which it writes to the
process's stderr, not to Python) are captured and raised as an ``OSError`` naming them.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from PIL import Image, ImageOps

#: Background that transparent pixels are composited onto. Fixed (not random) so a transparent
#: PNG looks the same in training and prediction; white matches how such images are displayed.
ALPHA_BACKGROUND = (255, 255, 255)

#: Largest image accepted, in pixels (width x height): 150 megapixels, above every camera sensor in common
#: use (medium format reaches ~100 MP) yet small enough that one decoded RGB copy (450 MB) cannot exhaust a
#: loader worker. Larger files, and files whose header merely claims a larger size (decompression bombs),
#: are bad files with this reason in every command. Set once here for the whole app.
MAX_PIXELS = 150_000_000

# Pillow raises DecompressionBombError above twice MAX_IMAGE_PIXELS (checked in Image.open, before any pixel
# is decoded) and only warns between once and twice: so its limit is half ours, and its warning, which
# would announce files that are fine by our limit, is silenced.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

#: Modes :func:`to_rgb` scales to 8 bits, and modes with an alpha channel (composited onto the background).
HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})

#: EXIF orientation tag, and the values that ``ImageOps.exif_transpose`` acts on (1 and unknown values leave the
#: image as is).
ORIENTATION_TAG = 0x0112
ROTATING_ORIENTATIONS = frozenset(range(2, 9))


@contextlib.contextmanager
def open_image(source: str | Path | IO[bytes]) -> Iterator[Image.Image]:
    """``Image.open`` whose refusal of too large images says what the limit is and what to do."""
    try:
        opened = Image.open(source)
    except Image.DecompressionBombError as err:
        raise Image.DecompressionBombError(
            f"{str(err).split(', could be')[0]}: a decompression bomb, or too large to train on "
            "(downscale the image or remove it)"
        ) from None
    with opened as img:
        yield img


def load_rgb(path: str | Path, min_size: int | None = None) -> Image.Image:
    """Open ``path`` and return an upright RGB ``PIL.Image`` (fully decoded, file closed).

    With ``min_size``, a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, several
    times faster on large photos) as long as its short side stays at least ``min_size`` pixels, so the
    resize or crop that follows never works from fewer pixels than it outputs. The short side is the
    same before and after EXIF rotation, so orientation is applied afterwards as usual.
    """
    with open_image(path) as img:
        return decode(img, min_size)


def decode(img: Image.Image, min_size: int | None = None) -> Image.Image:
    """Decode an opened image (see :func:`load_rgb`) into upright RGB."""
    load_pixels(img, min_size)
    return to_rgb(img)


def load_pixels(img: Image.Image, min_size: int | None = None) -> None:
    """Decode the pixels of an opened image in its own mode (the step of :func:`decode` that reads the file)."""
    if min_size is not None and img.format == "JPEG":
        draft_to_short_side(img, min_size)
    if img.format == "TIFF":
        with libtiff_errors_raised():
            img.load()
    else:
        img.load()


def needs_conversion(img: Image.Image, orientation: int | None) -> bool:
    """Whether :func:`to_rgb` does more than copy this decoded image: a mode other than RGB, transparency, or
    an EXIF orientation that rotates or mirrors it (``orientation`` as read by ``img.getexif()``)."""
    return img.mode != "RGB" or _has_transparency(img) or orientation in ROTATING_ORIENTATIONS


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def libtiff_errors_raised() -> Iterator[None]:
    """Capture what libtiff writes to stderr while decoding; raise its errors, drop its warnings.

    libtiff reports corrupt fax or LZW streams on file descriptor 2 and may still return garbage pixels,
    so a user would see unexplained lines ("Fax4Decode: Bad code word") and train on noise. Its default
    handler marks warnings with "Warning,"; any other line is an error and makes the file a bad file.
    The descriptor is process-wide, so captures are serialised (only TIFF decoding takes this path).
    """
    with _STDERR_LOCK, tempfile.TemporaryFile(mode="w+b") as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines()
    errors = [line.strip() for line in lines if line.strip() and "Warning," not in line]
    if errors:
        raise OSError(f"corrupt TIFF data (libtiff: {'; '.join(errors[:3])})")


def draft_to_short_side(img: Image.Image, min_size: int) -> None:
    """Ask the JPEG decoder for the smallest DCT scale whose short side is still ``>= min_size``."""
    width, height = img.size
    factor = min_size / min(width, height)
    if factor > 0.5:
        return  # no DCT scale fits
    # draft() picks the strongest reduction that keeps both sides >= the requested size.
    img.draft("RGB", (math.ceil(width * factor), math.ceil(height * factor)))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert an opened image of any mode to upright 8-bit RGB (always a new image: the opened one may be closed)."""
    if img.getexif().get(ORIENTATION_TAG, 1) in ROTATING_ORIENTATIONS:
        img = ImageOps.exif_transpose(img)  # a new, upright image (for other orientations it would only copy)
    if img.mode in HIGH_DEPTH_MODES:
        img = _high_depth_to_l(img)
    if _has_transparency(img):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        # Pasting through the alpha channel gives exactly the pixels of Image.alpha_composite over an opaque
        # background (checked for every value and alpha) at a fifth of its cost: 0.2 ms instead of 1 ms at 224 px.
        background.paste(rgba, None, rgba)
        return background
    return img.convert("RGB")  # a copy for RGB images


def _has_transparency(img: Image.Image) -> bool:
    return img.mode in ALPHA_MODES or "transparency" in img.info


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float single-channel image to 8-bit grayscale."""
    import numpy as np  # here, not at the top: the file checks (doctor) start faster without it

    array = np.asarray(img)
    if array.dtype.kind == "f":
        lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
    else:
        # 16-bit files (PNG, TIFF) use the full 0..65535 range; Pillow may hand them over as int32.
        scaled = array.astype(np.float64) / 257.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
