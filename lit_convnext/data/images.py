"""Decode any image file into an upright 8-bit RGB picture, the same way everywhere.

Training, validation, prediction and the data checks all call :func:`load_rgb`, so a photo is seen
identically in each: EXIF orientation applied, first frame of animations and multi-page files,
16-bit and float images scaled to 8 bits, transparency composited onto a fixed background.

Every failure to decode a file surfaces here as an exception, never as stray output: an image over the app's
pixel limit raises :class:`PIL.Image.DecompressionBombError`, libtiff's complaints about a TIFF's data are
raised as an ``OSError`` naming them, and so is what Pillow logs about a file it then refuses (a file that carries
a known format's signature but cannot be opened raises :class:`DamagedImageError` with that reason, not a bare
"cannot identify image file").

Nothing here changes the process it runs in (a user's program, a server): Pillow's own pixel limit and warning
filters are left as the host set them, and what Pillow and libtiff report only through process-wide hooks (a log
record, libtiff's error handler) is taken for the thread that reads an image, while it reads it
(:class:`_ThreadMessages`); every other thread's messages go where they would have gone without the app.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import stat
import threading
import warnings
from collections.abc import Callable
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
#: are bad files with this reason in every command. Checked by :func:`open_image` against the header's size,
#: before any pixel is decoded; Pillow's own limit (``Image.MAX_IMAGE_PIXELS``: it warns above it and raises above
#: twice it) belongs to the process the app runs in and is left as it is (the commands hide its warning).
MAX_PIXELS = 150_000_000
_BOMB_ADVICE = "a decompression bomb, or too large to train on (downscale the image or remove it)"

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


class _ThreadMessages:
    """What a library reports only through a process-wide hook, kept for the threads of the app that ask for it.

    The hook (``install``) is in place only while at least one thread reads an image through this module, and is
    taken out (``uninstall``) when the last one is done; while it is in place, the hook hands every other thread's
    messages on as if it were not there (:meth:`caught` is ``None`` for them). So a host process (a user's program,
    a server that logs to stderr) sees nothing of it, and two threads of the app never read each other's messages.
    """

    def __init__(self, install: Callable[[], None], uninstall: Callable[[], None]) -> None:
        self._install, self._uninstall = install, uninstall
        self._lock = threading.Lock()
        self._users = 0
        self._local = threading.local()

    def start(self) -> list[str]:
        """Keep this thread's messages, until :meth:`stop`, in the list returned."""
        messages: list[str] = []
        self._local.messages = messages
        with self._lock:
            if self._users == 0:
                self._install()
            self._users += 1
        return messages

    def stop(self) -> None:
        self._local.messages = None
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._uninstall()

    def caught(self) -> list[str] | None:
        """The calling thread's list while it reads an image; ``None`` when the message is someone else's."""
        return getattr(self._local, "messages", None)


class _PillowLog(logging.Handler):
    """Keeps what Pillow logs (warnings and errors, on its ``PIL`` loggers) while this thread opens an image.

    A few plugins log why they refuse a file and then raise ("More samples per pixel than can be decoded:
    303169682"); with no handler configured Python would print that line bare on stderr, with no file named.
    The message goes into the file's error instead. Another thread's record meanwhile reaches the handlers it
    would reach anyway, and Python's last-resort print when it has none.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        logger = logging.getLogger("PIL")
        self.messages = _ThreadMessages(lambda: logger.addHandler(self), lambda: logger.removeHandler(self))

    def emit(self, record: logging.LogRecord) -> None:
        caught = self.messages.caught()
        if caught is not None:
            caught.append(record.getMessage())
        elif not self._handled_elsewhere(record) and logging.lastResort is not None \
                and record.levelno >= logging.lastResort.level:
            logging.lastResort.handle(record)

    def _handled_elsewhere(self, record: logging.LogRecord) -> bool:
        """Whether the record's logger or one it propagates to has a handler besides this one."""
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(handler is not self for handler in logger.handlers):
                return True
            logger = logger.parent if logger.propagate else None
        return False


_PILLOW_LOG = _PillowLog()


#: What a path that is not a regular file is, by ``stat.S_IFMT``.
_SPECIAL_FILES = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket",
                  stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}


def refuse_special_file(mode: int) -> None:
    """Raise ``OSError`` for anything but a regular file (``mode`` from ``stat``): a named pipe would keep its reader
    waiting for a writer, and a device such as ``/dev/zero`` would be read without end."""
    if not stat.S_ISREG(mode):
        kind = _SPECIAL_FILES.get(stat.S_IFMT(mode), "a special file")
        raise OSError(f"{kind}, not a regular file")


def open_image(source: str | Path | IO[bytes]) -> Image.Image:
    """``Image.open`` whose refusals say what was wrong: the pixel limit and what to do about it, or why a file with
    a known format's signature cannot be opened (:class:`DamagedImageError`); a path that is not a regular file is
    refused before it is opened (:func:`refuse_special_file`). Use it as ``with open_image(...)``, as ``Image.open``:
    a plain function, not a generator, since every training sample goes through it."""
    if isinstance(source, (str, os.PathLike)):
        refuse_special_file(os.stat(source).st_mode)
    messages = _PILLOW_LOG.messages.start()
    try:
        img = Image.open(source)
    except Image.DecompressionBombError as err:  # over Pillow's own limit (twice Image.MAX_IMAGE_PIXELS)
        raise Image.DecompressionBombError(f"{str(err).split(', could be')[0]}: {_BOMB_ADVICE}") from None
    except UnidentifiedImageError as err:
        claimed = signature_format(_prefix(source))
        if claimed is None:
            raise
        reason = "; ".join(messages) or "damaged or unsupported header"
        raise DamagedImageError(f"a {claimed} file that Pillow cannot open: {reason}") from err
    finally:
        _PILLOW_LOG.messages.stop()
    width, height = img.size
    if width * height > MAX_PIXELS:
        img.close()  # closes the file only if Image.open opened it
        raise Image.DecompressionBombError(
            f"Image size ({width * height} pixels) exceeds limit of {MAX_PIXELS} pixels: {_BOMB_ADVICE}")
    return img


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
        _load_tiff(img)
    else:
        img.load()


def needs_conversion(img: Image.Image, orientation: int | None) -> bool:
    """Whether :func:`to_rgb` does more than copy this decoded image: a mode other than RGB, transparency, or
    an EXIF orientation that rotates or mirrors it (``orientation`` as read by ``img.getexif()``)."""
    return img.mode != "RGB" or _has_transparency(img) or orientation in ROTATING_ORIENTATIONS


def _load_tiff(img: Image.Image) -> None:
    """Decode a TIFF; what libtiff reports as an error while it does makes the file a bad file.

    libtiff reports corrupt fax or LZW streams through its error handler and may still return garbage pixels,
    which Pillow accepts: a user would see unexplained lines on stderr ("Fax4Decode: Bad code word") and train on
    noise. Pillow installs no error handler of its own, so this thread's errors are taken from libtiff's (see
    :func:`_libtiff_errors`). Where libtiff's handler cannot be reached, the file decodes as Pillow decodes it.
    """
    hook = _libtiff_errors()
    if hook is None:
        img.load()
        return
    errors = hook.messages.start()
    try:
        img.load()
    finally:
        hook.messages.stop()
    if errors:
        raise OSError(f"corrupt TIFF data (libtiff: {'; '.join(errors[:3])})")


#: libtiff's ``TIFFErrorHandler``: ``void (*)(const char *module, const char *fmt, va_list ap)``. Every argument is
#: passed as a pointer (``va_list`` too, on the ABIs Pillow ships wheels for with a shared libtiff), and forwarded
#: as it came.
_TIFF_ERROR_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


class _LibtiffErrors:
    """libtiff's process-wide error handler, replaced only while the app decodes a TIFF (:class:`_ThreadMessages`):
    the decoding thread's errors are kept, formatted as libtiff's default handler prints them; any other thread's
    go to the handler that was in place (libtiff's default prints them on stderr, as before)."""

    def __init__(self, set_handler: Callable[[int | None], int | None], vsnprintf: Callable[..., int]) -> None:
        self._set_handler, self._vsnprintf = set_handler, vsnprintf
        self._previous: int | None = None
        self._handler = _TIFF_ERROR_HANDLER(self._handle)
        self._address = ctypes.cast(self._handler, ctypes.c_void_p).value
        self.messages = _ThreadMessages(self._install, self._uninstall)

    def _install(self) -> None:
        self._previous = self._set_handler(self._address)

    def _uninstall(self) -> None:
        replaced = self._set_handler(self._previous)
        if replaced != self._address:  # someone else set a handler meanwhile: theirs stays
            self._set_handler(replaced)

    def _handle(self, module: int | None, fmt: int | None, args: int | None) -> None:
        caught = self.messages.caught()
        if caught is None:
            if self._previous:  # NULL: the host silenced libtiff's errors
                _TIFF_ERROR_HANDLER(self._previous)(module, fmt, args)
            return
        text = ctypes.create_string_buffer(512)
        if fmt:
            self._vsnprintf(text, len(text), fmt, args)
        message = text.value.decode("utf-8", "replace")
        caught.append(f"{ctypes.string_at(module).decode('utf-8', 'replace')}: {message}" if module else message)


@functools.cache
def _libtiff_errors() -> _LibtiffErrors | None:
    """The hook on the libtiff Pillow decodes with, or ``None`` where it cannot be reached (a Pillow built without
    libtiff, or linking it statically, as its Windows wheels do)."""
    try:
        # Pillow's C extension: looking a symbol up through it finds the libtiff it is linked with, not another one.
        imaging = ctypes.CDLL(Image.core.__file__)
        set_handler = imaging.TIFFSetErrorHandler
        vsnprintf = ctypes.CDLL(None).vsnprintf  # the C library's, to format libtiff's message
    except (AttributeError, OSError, TypeError):  # no such symbol; no shared library; no C library by that name
        return None
    set_handler.restype, set_handler.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    vsnprintf.restype = ctypes.c_int
    vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
    return _LibtiffErrors(set_handler, vsnprintf)


def hide_pillow_file_warnings() -> None:
    """Leave Pillow's warnings about a file that still decodes out of the terminal: a damaged one ("Corrupt EXIF
    data", "Invalid APNG, will use default PNG image if possible", "Tag data larger than file"), and one larger than
    Pillow's pixel limit but within the app's (:data:`MAX_PIXELS` decides). Raised in the loader they print as bare
    lines that name no file, once per file and epoch; the file checks record them per file instead (``doctor``
    lists each, ``fit`` says which before the first step).

    It changes the process's warning filters: call it only inside ``warnings.catch_warnings`` (the commands and the
    server do), or in a process the app owns (a loader worker, see :mod:`lit_convnext.data.datasets`)."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


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
