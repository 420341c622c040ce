"""Check image files one by one, the way training reads them: in parallel, and only once per file version.

Each file is read once: its bytes are hashed (duplicate and leakage detection by :mod:`lit_convnext.data.scan`),
the header is parsed by ``PIL.Image.open``, and the pixels are decoded as training decodes them
(:func:`lit_convnext.data.images.load_pixels`; JPEGs at 1/8 scale through libjpeg's ``draft``, which still
reads every coded block), then converted to RGB where training would convert them, so every file that would
fail in training fails here. ``header_only=True`` replaces the decode by ``verify()``, a check of the container
(chunk CRCs for PNG, the end-of-image marker for JPEG): faster, but it misses files whose headers are fine and
whose pixel data is corrupt (bad palettes, broken compressed streams).

:func:`inspect_files` spreads the files over worker processes (the start method is the platform's, as for
PyTorch's loader workers: the workers only run Pillow) and skips files whose size and modification time are
those of an earlier check (:mod:`lit_convnext.data.check_cache`); the workers do the ``stat`` calls too, so
the main process only lists the files and collects the results.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from lit_convnext.data.check_cache import CheckCache
from lit_convnext.data.images import load_pixels, needs_conversion, open_image, to_rgb

#: Which extensions are normal for each Pillow format (a mismatch is reported, it still loads).
FORMAT_SUFFIXES = {
    "JPEG": (".jpg", ".jpeg", ".jpe"),
    "MPO": (".jpg", ".jpeg", ".jpe"),  # multi-picture JPEGs from phones
    "PNG": (".png",),
    "GIF": (".gif",),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
    "WEBP": (".webp",),
    "PPM": (".ppm", ".pgm", ".pbm"),
}
HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
#: EXIF orientation tag; values 5-8 swap width and height.
ORIENTATION_TAG = 0x0112
#: ``Image.info`` keys that Pillow's ``getexif`` reads an orientation from (besides a TIFF's own tags).
ORIENTATION_SOURCES = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")
#: Files per task sent to a worker: large enough that inter-process traffic stays small, small enough that
#: the workers finish together and the progress bar moves.
CHUNK = 64


@dataclass(slots=True)
class FileCheck:
    """What the per-file pass found out about one image file.

    ``error`` is set when the file cannot be used for training (it would crash or be skipped);
    the other fields describe usable files.
    """

    path: str
    error: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int = 0  # upright size (after EXIF orientation)
    height: int = 0
    frames: int = 1
    exif_rotated: bool = False
    wrong_extension: bool = False
    conversions: list[str] = field(default_factory=list)
    digest: str | None = None


#: FileCheck's fields after ``path``, in order: how a result is stored in the cache (a JSON list).
STORED_FIELDS = tuple(f.name for f in fields(FileCheck))[1:]


def check_file(path: str | Path, header_only: bool = False) -> FileCheck:
    """Inspect one file (never raises for a bad file: the problem goes into ``error``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. palette transparency notes: not problems of the file
        return _check(os.fspath(path), header_only)


def _check(path: str, header_only: bool) -> FileCheck:
    """:func:`check_file` without its warning filter (the workers set it once for all their files)."""
    result = FileCheck(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        result.error = f"cannot read file: {err.strerror or err}"
        return result
    if not data:
        result.error = "empty file (0 bytes)"
        return result
    result.digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        _inspect(data, result, header_only)
    except UnidentifiedImageError:
        result.error = _not_an_image(data)
    except Exception as err:  # Pillow raises many types (OSError, SyntaxError, struct.error, ...)
        result.error = f"cannot decode ({type(err).__name__}: {err})"
    if result.error is None and result.format in FORMAT_SUFFIXES:
        result.wrong_extension = not path.lower().endswith(FORMAT_SUFFIXES[result.format])
    return result


def _inspect(data: bytes, result: FileCheck, header_only: bool) -> None:
    """Fill ``result`` from one open of the file: header fields, then the decode (or ``verify``)."""
    with open_image(io.BytesIO(data)) as img:
        result.format, result.mode = img.format, img.mode
        result.conversions = _conversions(img)
        width, height = img.size
        result.frames = getattr(img, "n_frames", 1)
        if result.frames > 1:
            img.seek(0)  # counting frames moved to the last one; training uses the first
        if not header_only:
            load_pixels(img, min_size=1)  # min_size=1: JPEGs at the smallest DCT scale, every coded block still read
        orientation = _orientation(img, decoded=not header_only)
        if not header_only and needs_conversion(img, orientation):
            to_rgb(img)  # the conversion training applies (it can fail); a plain upright RGB image needs none
    if header_only:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()  # must come right after open: checks the container without decoding pixels
        if result.format == "JPEG" and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
            raise OSError("truncated JPEG (no end-of-image marker)")
    result.exif_rotated = orientation not in (1, None)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    result.width, result.height = width, height


def _orientation(img: Image.Image, decoded: bool) -> int | None:
    """The EXIF orientation; without a decode, a PNG's EXIF is read only when it precedes the pixel data
    (Pillow's ``getexif`` would decode the whole image to look for a late ``eXIf`` chunk)."""
    if decoded and not hasattr(img, "tag_v2") and not any(key in img.info for key in ORIENTATION_SOURCES):
        return 1  # what getexif would answer, without building its Exif object (a tenth of a small PNG's check)
    if decoded or img.format != "PNG":
        return img.getexif().get(ORIENTATION_TAG, 1)
    exif = Image.Exif()
    if "exif" in img.info:
        exif.load(img.info["exif"])
    return exif.get(ORIENTATION_TAG, 1)


def _conversions(img: Image.Image) -> list[str]:
    """How the image differs from plain 8-bit RGB (each is converted by ``load_rgb``)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return []
    found = []
    if mode in HIGH_DEPTH_MODES:
        found.append("16-bit/float")
    if mode == "1":
        found.append("1-bit")
    if mode in ("L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "1"):
        found.append("grayscale")
    if mode in ("P", "PA"):
        found.append("palette")
    if mode == "CMYK":
        found.append("CMYK")
    if mode in ALPHA_MODES or "transparency" in img.info:
        found.append("alpha")
    return found


def _not_an_image(data: bytes) -> str:
    head = data[:512]
    try:
        head.decode("utf-8")
        return "not an image (the file contains text)"
    except UnicodeDecodeError:
        return "not an image (unrecognised content)"


# ------------------------------------------------------------------------------------ many files, cached
#: One file for a worker: ``(path, size, mtime_ns)`` of its cached result, size -1 when there is none.
Job = tuple[str, int, int]
#: A worker's answer for one file: ``None`` when the cached result still holds, else
#: ``(size, mtime_ns, fields, stored)``: the file's stat (size -1 when it could not be stat'ed: not cached), the
#: :class:`FileCheck` fields after ``path`` and the same as the JSON text the cache keeps (made in the worker).
Answer = tuple[int, int, tuple, str] | None


def _check_jobs(jobs: Sequence[Job], header_only: bool) -> list[Answer]:
    """Stat each file; check the ones that changed since their cached result (runs in a worker)."""
    answers: list[Answer] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path, size, mtime_ns in jobs:
            try:
                stat = os.stat(path)
                size_now, mtime_now = stat.st_size, stat.st_mtime_ns
            except OSError:
                size_now = mtime_now = -1  # the check says why it cannot be read
            if size_now >= 0 and (size_now, mtime_now) == (size, mtime_ns):
                answers.append(None)
                continue
            # stat before reading: a file changed in between gets a newer mtime, so it is checked again
            values = astuple_shallow(_check(path, header_only))
            answers.append((size_now, mtime_now, values, json.dumps(values)))
    return answers


def astuple_shallow(check: FileCheck) -> tuple:
    """The fields of ``check`` after ``path``, in order (``dataclasses.astuple`` deep-copies: 3x slower)."""
    return tuple(getattr(check, name) for name in STORED_FIELDS)


def inspect_files(
    paths: Iterable[str | Path],
    header_only: bool = False,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    cache: bool = True,
) -> list[FileCheck]:
    """Run :func:`check_file` over ``paths`` in parallel; results come back in input order.

    Args:
        paths: Files to check.
        header_only: Header and container checks only, no pixel decoding (see the module docstring).
        workers: Parallel processes; ``None`` means one per CPU core; 1 checks in this process.
        progress: Called with the number of files finished after each chunk.
        cache: Reuse the result of files whose size and modification time are unchanged since an earlier
            check, and remember the new ones (:mod:`lit_convnext.data.check_cache`).
    """
    paths = [os.fspath(p) for p in paths]
    absolute = [os.path.abspath(p) for p in paths]
    store = CheckCache() if cache else None
    known = store.lookup(absolute, header_only) if store else {}
    jobs = [(path, *known[key][:2]) if key in known else (path, -1, -1) for path, key in zip(paths, absolute)]
    results: list[FileCheck] = []
    fresh: list[tuple[str, int, int, str]] = []
    for index, answer in enumerate(_run(jobs, header_only, workers or _cpu_count(), progress)):
        if answer is None:
            results.append(FileCheck(paths[index], *json.loads(known[absolute[index]][2])))
            continue
        size, mtime_ns, values, stored = answer
        check = FileCheck(paths[index], *values)
        results.append(check)
        # A file that could not be opened (permissions, a vanished mount) may be fine later at the same mtime.
        if size >= 0 and not (check.error or "").startswith("cannot read file"):
            fresh.append((absolute[index], size, mtime_ns, stored))
    if store:
        store.store(fresh, header_only)
        store.close()
    return results


def _run(jobs: list[Job], header_only: bool, workers: int, progress: Callable[[int], None] | None
         ) -> Iterable[Answer]:
    """The answers for ``jobs`` in order, from ``workers`` processes (or this one)."""
    chunk = max(1, min(CHUNK, math.ceil(len(jobs) / (4 * workers))))
    chunks = [jobs[i : i + chunk] for i in range(0, len(jobs), chunk)]
    if workers <= 1 or len(chunks) <= 1:
        for part in chunks:
            yield from _check_jobs(part, header_only)
            if progress:
                progress(len(part))
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
        for part, answers in zip(chunks, pool.map(_check_jobs, chunks, [header_only] * len(chunks))):
            yield from answers
            if progress:
                progress(len(part))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
