"""Decode any image file into an upright 8-bit RGB picture, the same way everywhere.

Training, validation, prediction and the data checks all call :func:`load_rgb`, so a photo is seen
identically in each: EXIF orientation applied, first frame of animations and multi-page files,
16-bit and float images scaled to 8 bits, transparency composited onto a fixed background.

Every failure to decode a file surfaces here as an exception, never as stray output: the pixel limit
raises :class:`PIL.Image.DecompressionBombError`, libtiff's complaints (which it writes to the
process's stderr, not to Python) are captured and raised as an ``OSError`` naming them, and so is what
Pillow logs about a file it then refuses (a file that carries a known format's signature but cannot be
opened raises :class:`DamagedImageError` with that reason, not a bare "cannot identify image file").
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

from lit_convnext.private_api import pillow_accepts

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


#: Formats the app reads, whose signature (first bytes, tested by Pillow's own plugin) names a file that Pillow
#: failed to open as damaged or unsupported rather than "not an image".
SIGNATURE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")


class DamagedImageError(UnidentifiedImageError):
    """A file that starts like an image format the app reads but that Pillow cannot open (damaged or unsupported
    header); the message names the format and, when Pillow said why, the reason."""


class _PillowLog(logging.Handler):
    """Keeps what Pillow logs (warnings and errors, on its ``PIL`` logger) while this thread opens an image.

    A few plugins log why they refuse a file and then raise ("More samples per pixel than can be decoded:
    303169682"); with no handler configured Python would print that line bare on stderr, with no file named.
    Having this handler also stops that print; the message goes into the file's error instead.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        messages = getattr(self.local, "messages", None)
        if messages is not None:
            messages.append(record.getMessage())


_PILLOW_LOG = _PillowLog()
logging.getLogger("PIL").addHandler(_PILLOW_LOG)


def open_image(source: str | Path | IO[bytes]) -> Image.Image:
    """``Image.open`` whose refusals say what was wrong: the pixel limit and what to do about it, or why a file with
    a known format's signature cannot be opened (:class:`DamagedImageError`). Use it as ``with open_image(...)``,
    as ``Image.open``: a plain function, not a generator, since every training sample goes through it."""
    messages = _PILLOW_LOG.local.messages = []
    try:
        return Image.open(source)
    except Image.DecompressionBombError as err:
        raise Image.DecompressionBombError(
            f"{str(err).split(', could be')[0]}: a decompression bomb, or too large to train on "
            "(downscale the image or remove it)"
        ) from None
    except UnidentifiedImageError as err:
        claimed = signature_format(_prefix(source))
        if claimed is None:
            raise
        reason = "; ".join(messages) or "damaged or unsupported header"
        raise DamagedImageError(f"a {claimed} file that Pillow cannot open: {reason}") from err
    finally:
        _PILLOW_LOG.local.messages = None


def failure_reason(err: Exception) -> str:
    """Why a file could not be decoded, in words: an ``OSError``'s message as it is (Pillow's and the app's say what
    happened), any other exception type named (Pillow raises many: ``SyntaxError``, ``NotImplementedError``, ...)."""
    return str(err) if isinstance(err, OSError) else f"{type(err).__name__}: {err}"


def signature_format(prefix: bytes) -> str | None:
    """The first of :data:`SIGNATURE_FORMATS` whose Pillow plugin accepts ``prefix`` (a file's first 16 bytes)."""
    return next((name for name in SIGNATURE_FORMATS if pillow_accepts(name, prefix)), None)


def _prefix(source: str | Path | IO[bytes]) -> bytes:
    """The first 16 bytes of a file, by path or from a seekable file object."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as handle:
                return handle.read(16)
        source.seek(0)
        return source.read(16)
    except Exception:  # unreadable, or a stream that cannot seek back: no format is claimed, Pillow's error stands
        return b""


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
