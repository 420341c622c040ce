"""Check image files one by one, the way training reads them: in parallel, and only once per file version.

Each file is read once: its bytes are hashed (duplicate and leakage detection by :mod:`lit_convnext.checks.scan`),
the header is parsed by ``PIL.Image.open``, and the pixels are decoded as training decodes them
(:func:`lit_convnext.data.images.load_pixels`; JPEGs at 1/8 scale through libjpeg's ``draft``, which still
reads every coded block), then converted to RGB where training would convert them, so every file that would
fail in training fails here. ``header_only=True`` replaces the decode by ``verify()``, a check of the container
(chunk CRCs for PNG, the end-of-image marker for JPEG): faster, but it misses files whose headers are fine and
whose pixel data is corrupt (bad palettes, broken compressed streams). What Pillow warns about while it
opens and decodes a file that still loads (corrupt EXIF, an invalid APNG frame sequence, tags pointing past the
end of the file) is kept in the file's ``notes``: outside the checks those warnings are left out of the
terminal (:func:`lit_convnext.data.images.hide_pillow_file_warnings`), so this is where they are reported.

:func:`inspect_files` spreads the files over worker processes (the start method is the platform's, as for
PyTorch's loader workers: the workers only run Pillow) and skips files whose size and modification time are
those of an earlier check (:mod:`lit_convnext.checks.check_cache`); the workers do the ``stat`` calls too, so
the main process only lists the files and collects the results. Each worker opens its files a few turns early and
tells the kernel to start reading them, so a first check of files that are not in memory is not one disk wait
after another.
"""

from __future__ import annotations

import hashlib
import io
import json
import operator
import os
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from lit_convnext.checks.check_cache import CheckCache
from lit_convnext.data.images import (ALPHA_MODES, HIGH_DEPTH_MODES, ORIENTATION_TAG, DamagedImageError, load_pixels,
                                      needs_conversion, open_image, refuse_special_file, to_rgb)

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
#: ``Image.info`` keys that Pillow's ``getexif`` reads an orientation from (besides a TIFF's own tags).
ORIENTATION_SOURCES = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")
#: Files per task sent to a worker: each task costs about half a millisecond of hand-over and wake-ups on
#: both sides, so tasks grow with the backlog (a quarter of it per worker) up to ``MAX_CHUNK``; the first and the
#: last tasks hold ``CHUNK``, so the workers start at once and finish together. Fewer than ``2 * CHUNK`` files
#: are checked in the calling process (starting processes would cost more than it saves).
CHUNK = 64
MAX_CHUNK = 256
#: New results are written to the cache in batches of this many while the workers go on.
STORE_BATCH = 4096
#: At most this many distinct Pillow warnings are kept per file (a damaged TIFF can warn once per tag).
MAX_NOTES = 3
#: Files a worker opens ahead of the one it checks, so that their reads overlap (see :func:`_opened_ahead`).
READ_AHEAD = 32


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
    conversions: tuple[str, ...] = ()
    digest: str | None = None
    notes: tuple[str, ...] = ()  # Pillow's warnings about a file that still decodes


#: FileCheck's fields after ``path``, in order: the columns of a result in the cache.
STORED_FIELDS = tuple(f.name for f in fields(FileCheck))[1:]


def check_file(path: str | Path, header_only: bool = False) -> FileCheck:
    """Inspect one file (never raises for a bad file: the problem goes into ``error``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # recorded, never printed: Pillow's warnings become the file's notes
        return _check(os.fspath(path), header_only, caught)[0]


def _check(path: str, header_only: bool, caught: list[warnings.WarningMessage],
           fd: int | None = None) -> tuple[FileCheck, int, int]:
    """:func:`check_file` inside the caller's warning recorder ``caught`` (the workers set one up for all their
    files), with the size and modification time the file had when it was read (size -1 when it could not be read);
    ``fd``: the file already opened (and closed here)."""
    result = FileCheck(path)
    try:
        data, size, mtime_ns = _read(path, fd)
    except OSError as err:
        result.error = f"cannot read file: {err.strerror or err}"
        return result, -1, -1
    if not data:
        result.error = "empty file (0 bytes)"
        return result, size, mtime_ns
    # SHA-256 (OpenSSL, with the CPU's SHA instructions where present: twice BLAKE2's speed on small files),
    # 128 bits kept: duplicates are found by digest.
    result.digest = hashlib.sha256(data).hexdigest()[:32]
    caught.clear()
    try:
        _inspect(data, result, header_only, caught)
    except DamagedImageError as err:
        result.error = f"cannot decode ({err})"
    except UnidentifiedImageError:
        result.error = _not_an_image(data)
    except Exception as err:  # Pillow raises many types (OSError, SyntaxError, struct.error, ...)
        result.error = f"cannot decode ({type(err).__name__}: {err})"
    if result.error is not None:
        result.notes = ()
    elif result.format in FORMAT_SUFFIXES:
        result.wrong_extension = not path.lower().endswith(FORMAT_SUFFIXES[result.format])
    return result, size, mtime_ns


#: ``os.open`` flags for reading a whole file (binary mode matters on Windows only; non-blocking, so that opening a
#: named pipe returns at once instead of waiting for a writer: it is then refused as not a regular file).
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)


def _read(path: str, fd: int | None = None) -> tuple[bytes, int, int]:
    """The file's bytes, with the size and modification time it had when opened: one open, one ``fstat`` and
    (for a regular file) one read, a third of the cost of ``open(path, "rb").read()`` plus ``os.stat`` on
    small files. The stat comes first, so a file changed while it is read gets a newer mtime: checked again.
    Anything but a regular file (a pipe, a device, a folder named like an image) raises ``OSError`` unread."""
    if fd is None:
        fd = os.open(path, _READ_FLAGS)
    try:
        stat = os.fstat(fd)
        refuse_special_file(stat.st_mode)
        data = os.read(fd, stat.st_size + 1)  # the extra byte notices a file that grew since the stat
        if len(data) != stat.st_size:  # a short read (some network filesystems) or a growing file: read on
            parts = [data]
            while part := os.read(fd, 1 << 20):
                parts.append(part)
            data = b"".join(parts)
        return data, stat.st_size, stat.st_mtime_ns
    finally:
        os.close(fd)


def _inspect(data: bytes, result: FileCheck, header_only: bool, caught: list[warnings.WarningMessage]) -> None:
    """Fill ``result`` from one open of the file: header fields, then the decode (or ``verify``); Pillow's warnings
    recorded in ``caught`` until the conversion to RGB (which warns about the app's own conversions) become notes."""
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
        result.notes = _notes(caught)
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


def _notes(caught: list[warnings.WarningMessage]) -> tuple[str, ...]:
    """The distinct messages of the user warnings recorded so far (Pillow's notes about the file), at most
    :data:`MAX_NOTES`."""
    notes: list[str] = []
    for warning in caught:
        message = " ".join(str(warning.message).split())
        if issubclass(warning.category, UserWarning) and message not in notes:
            notes.append(message)
    return tuple(notes[:MAX_NOTES])


def _orientation(img: Image.Image, decoded: bool) -> int | None:
    """The EXIF orientation; without a decode, a PNG's EXIF is read only when it precedes the pixel data
    (Pillow's ``getexif`` would decode the whole image to look for a late ``eXIf`` chunk)."""
    if decoded and not hasattr(img, "tag_v2") and img.info.keys().isdisjoint(ORIENTATION_SOURCES):
        return 1  # what getexif would answer, without building its Exif object (a tenth of a small PNG's check)
    if decoded or img.format != "PNG":
        return img.getexif().get(ORIENTATION_TAG, 1)
    exif = Image.Exif()
    if "exif" in img.info:
        exif.load(img.info["exif"])
    return exif.get(ORIENTATION_TAG, 1)


def _conversions(img: Image.Image) -> tuple[str, ...]:
    """How the image differs from plain 8-bit RGB (each is converted by ``load_rgb``)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return ()
    found = []
    if mode in HIGH_DEPTH_MODES:
        found.append("16-bit/float")
    if mode == "1":
        found.append("1-bit")
    if mode in HIGH_DEPTH_MODES or mode in ("L", "LA", "1"):
        found.append("grayscale")
    if mode in ("P", "PA"):
        found.append("palette")
    if mode == "CMYK":
        found.append("CMYK")
    if mode in ALPHA_MODES or "transparency" in img.info:
        found.append("alpha")
    return tuple(found)


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
#: ``(size, mtime_ns, fields)``: the file's stat (size -1 when it could not be stat'ed: not cached) and the
#: :class:`FileCheck` fields after ``path``.
Answer = tuple[int, int, tuple] | None


def _check_jobs(jobs: Sequence[Job], header_only: bool) -> list[Answer]:
    """Check each file, unless its cached result still holds (same size and mtime); runs in a worker."""
    answers: list[Answer] = [None] * len(jobs)
    todo = [i for i, (path, size, mtime_ns) in enumerate(jobs) if size < 0 or not _unchanged(path, size, mtime_ns)]
    with warnings.catch_warnings(record=True) as caught, closing(_opened_ahead([jobs[i][0] for i in todo])) as files:
        warnings.simplefilter("always")  # see check_file
        for i, (path, fd) in zip(todo, files):
            check, size_now, mtime_now = _check(path, header_only, caught, fd)
            answers[i] = (size_now, mtime_now, _stored_values(check))
    return answers


def _unchanged(path: str, size: int, mtime_ns: int) -> bool:
    """Whether the file still has the size and modification time of its cached result (one ``stat``)."""
    try:
        stat = os.stat(path)
    except OSError:
        return False  # the check says why the file cannot be read
    return (stat.st_size, stat.st_mtime_ns) == (size, mtime_ns)


def _opened_ahead(paths: Sequence[str]) -> Iterator[tuple[str, int | None]]:
    """Each path with its file already open (``None`` where it could not be opened: the check tries again and says
    why), opened :data:`READ_AHEAD` files before its turn with a hint to the kernel to read it now
    (``posix_fadvise(WILLNEED)``, where the platform has it). A first check over files that are not in memory then
    keeps many small reads in flight instead of waiting for each in turn: 1.9-3.2x the naive loop's speed on this
    project's test machine (docs/performance.md), and no measurable cost when the files are already in memory. The caller closes each
    descriptor it is given; the ones opened ahead and never handed out are closed here."""
    opened: deque[int | None] = deque()
    try:
        for i in range(len(paths) + READ_AHEAD):
            if i < len(paths):
                opened.append(_open_for_reading(paths[i]))
            if i >= READ_AHEAD:
                yield paths[i - READ_AHEAD], opened.popleft()
    finally:
        for fd in opened:
            if fd is not None:
                os.close(fd)


def _open_for_reading(path: str) -> int | None:
    """The file opened for :func:`_read`, its reading started in the background; ``None`` when it cannot be opened."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    if _ADVISE is not None:
        try:
            _ADVISE(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # only a hint (a pipe or some special files refuse it): the file is read all the same
    return fd


#: ``os.posix_fadvise`` (Linux and most Unix systems; not macOS or Windows, where the files are only opened ahead).
_ADVISE = getattr(os, "posix_fadvise", None)


#: The fields of a :class:`FileCheck` after ``path``, as a tuple in order (``dataclasses.astuple`` deep-copies:
#: 10x slower).
_stored_values = operator.attrgetter(*STORED_FIELDS)
#: Positions in that tuple of the fields that hold several strings (kept in the cache as JSON text, NULL when
#: empty) and of the flags (kept as integers).
_LIST_FIELDS = [i for i, f in enumerate(fields(FileCheck)[1:]) if f.default == ()]
_BOOL_FIELDS = [i for i, f in enumerate(fields(FileCheck)[1:]) if isinstance(f.default, bool)]
#: Positions of the fields that take a few values over a whole folder ("PNG", "RGB"): SQLite hands back a new string
#: per row, interned so that a million cached results share them.
_FEW_VALUES = [STORED_FIELDS.index(name) for name in ("format", "mode")]


def _to_row(values: tuple) -> tuple:
    """A check's stored fields as the cache's columns hold them."""
    row = list(values)
    for i in _LIST_FIELDS:
        row[i] = json.dumps(row[i]) if row[i] else None
    return tuple(row)


def _from_row(row: tuple) -> list:
    """The stored fields of a check from the cache's columns (the inverse of :func:`_to_row`)."""
    values = list(row)
    for i in _LIST_FIELDS:
        values[i] = tuple(json.loads(values[i])) if values[i] else ()
    for i in _BOOL_FIELDS:
        values[i] = bool(values[i])
    for i in _FEW_VALUES:
        if values[i] is not None:
            values[i] = sys.intern(values[i])
    return values


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
            check, and remember the new ones (:mod:`lit_convnext.checks.check_cache`).
    """
    with FileChecker(header_only, workers, progress, cache) as checker:
        checker.add(paths)
        return checker.results()


class FileChecker:
    """:func:`inspect_files` for files listed bit by bit: the workers start on the first files while the
    caller is still listing folders (``add`` each batch, then ``results`` once)."""

    def __init__(self, header_only: bool = False, workers: int | None = None,
                 progress: Callable[[int], None] | None = None, cache: bool = True) -> None:
        self.header_only, self.progress = header_only, progress
        self.workers = workers or _cpu_count()
        self._store = CheckCache(STORED_FIELDS) if cache else None
        self._paths: list[str] = []
        self._known: dict[str, tuple] = {}  # absolute path -> cached row (its size and mtime go to the worker)
        self._waiting: list[Job] = []  # not yet handed to a worker
        self._parts: list[tuple[int, Any]] = []  # (files, answers or a future of them), in order
        self._unfinished = 0  # index in _parts of the first task that may not be done yet
        self._queued = 0  # files in the tasks from there on
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> FileChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        if self._store is not None:
            self._store.close()

    def add(self, paths: Iterable[str | Path]) -> None:
        """Queue more files (their cached results are looked up now, with one query)."""
        paths = [os.fspath(p) for p in paths]
        absolute = _absolute_paths(paths)
        found = self._store.lookup(absolute, self.header_only) if self._store is not None and paths else {}
        self._known.update((key, entry[2]) for key, entry in found.items())
        self._paths += paths  # the absolute paths are made again in `results`: cheaper than holding them all
        self._waiting += [(path, *found[key][:2]) if key in found else (path, -1, -1)
                          for path, key in zip(paths, absolute)]
        # Worker processes pay off from a few chunks on; fewer files are checked here, in `results`.
        if self.workers > 1 and (self._pool is not None or len(self._waiting) >= 2 * CHUNK):
            self._send(full_chunks_only=True)

    def _send(self, full_chunks_only: bool) -> None:
        """Hand the waiting files to the workers; with ``full_chunks_only``, keep back what does not fill a task."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers)
        start = 0
        while start < len(self._waiting):
            size = self._chunk_size(len(self._waiting) - start, last=not full_chunks_only)
            if full_chunks_only and len(self._waiting) - start < size:
                break
            part = self._waiting[start : start + size]
            self._parts.append((len(part), self._pool.submit(_check_jobs, part, self.header_only)))
            self._queued += len(part)
            start += len(part)
        del self._waiting[:start]

    def _chunk_size(self, waiting: int, last: bool) -> int:
        """Files in the next task (see :data:`CHUNK`): ``waiting`` files not sent yet, ``last`` when no more come."""
        if len(self._parts) < self.workers or last:  # each worker's first task, and the files listed last
            return CHUNK
        while self._unfinished < len(self._parts) and self._parts[self._unfinished][1].done():
            self._queued -= self._parts[self._unfinished][0]
            self._unfinished += 1
        return max(CHUNK, min(MAX_CHUNK, (waiting + self._queued) // (4 * self.workers)))

    def results(self) -> list[FileCheck]:
        """Every file's check, in the order added; new results are stored in the cache."""
        if self._pool is not None:
            self._send(full_chunks_only=False)
        elif self._waiting:
            self._parts += [(len(self._waiting[i : i + CHUNK]), self._waiting[i : i + CHUNK])
                            for i in range(0, len(self._waiting), CHUNK)]
            self._waiting = []
        results: list[FileCheck] = []
        fresh: list[tuple[str, int, int, tuple]] = []
        index = 0
        parts, self._parts = deque(self._parts), []
        while parts:  # each task leaves the queue as it is used: its answers are freed once turned into results
            count, work = parts.popleft()
            answers = work.result() if isinstance(work, Future) else _check_jobs(work, self.header_only)
            paths = self._paths[index : index + count]
            index += count
            for path, key, answer in zip(paths, _absolute_paths(paths), answers):
                if answer is None:
                    results.append(FileCheck(path, *_from_row(self._known[key])))
                    continue
                size, mtime_ns, values = answer
                check = FileCheck(path, *values)
                results.append(check)
                # A file that could not be opened (permissions, a vanished mount) may be fine later at the same mtime.
                if size >= 0 and not (check.error or "").startswith("cannot read file"):
                    fresh.append((key, size, mtime_ns, _to_row(values)))
            if self.progress:
                self.progress(count)
            if self._store is not None and len(fresh) >= STORE_BATCH:  # written while the workers go on
                self._store.store(fresh, self.header_only)
                fresh = []
        if self._store is not None:
            self._store.store(fresh, self.header_only)
        return results


def _absolute_paths(paths: Sequence[str]) -> list[str]:
    """``os.path.abspath`` of each path, resolving each folder once (the files of a folder come together)."""
    prefixes: dict[str, str] = {}
    absolute = []
    for path in paths:
        folder, name = os.path.split(path)
        if name in ("", os.curdir, os.pardir):
            absolute.append(os.path.abspath(path))  # not FOLDER/FILE: the general case
            continue
        prefix = prefixes.get(folder)
        if prefix is None:
            prefix = prefixes[folder] = os.path.join(os.path.abspath(folder or os.curdir), "")
        absolute.append(prefix + name)
    return absolute


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
