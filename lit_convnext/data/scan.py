"""Check an image folder before training: bad files, class balance, leakage, conversions, sizes.

:func:`scan` walks the same layouts ``fit`` accepts (``root/train|val|test/<class>/...`` or
``root/<class>/...``) but, unlike the training scan, reports every problem instead of stopping at the
first. :func:`inspect_files` is the per-file pass on its own; the DataModule runs it before training.

Each file is read and opened once: the bytes are hashed (exact-duplicate detection), the header is parsed
by ``PIL.Image.open``, and the pixels are decoded the way training decodes them
(:func:`lit_convnext.data.images.decode`; JPEGs at 1/8 scale through libjpeg's ``draft``, which still reads
every coded block), so every file that would fail in training fails here. ``header_only=True`` replaces
the decode by ``verify()``, a check of the container (chunk CRCs for PNG, the end-of-image marker for
JPEG): faster, but it misses files whose headers are fine and whose pixel data is corrupt (bad palettes,
broken compressed streams).
"""

from __future__ import annotations

import hashlib
import io
import os
import statistics
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from lit_convnext.data.check_cache import CheckCache, file_key
from lit_convnext.data.folders import IMAGE_SUFFIXES, SPLIT_NAMES, class_folders, is_hidden, natural_key
from lit_convnext.data.images import decode, open_image

#: Which extensions are normal for each Pillow format (a mismatch is reported, it still loads).
FORMAT_SUFFIXES = {
    "JPEG": {".jpg", ".jpeg", ".jpe"},
    "MPO": {".jpg", ".jpeg", ".jpe"},  # multi-picture JPEGs from phones
    "PNG": {".png"},
    "GIF": {".gif"},
    "BMP": {".bmp"},
    "TIFF": {".tif", ".tiff"},
    "WEBP": {".webp"},
    "PPM": {".ppm", ".pgm", ".pbm"},
}
HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
#: EXIF orientation tag; values 5-8 swap width and height.
ORIENTATION_TAG = 0x0112


@dataclass
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


def check_file(path: str | Path, header_only: bool = False) -> FileCheck:
    """Inspect one file (never raises for a bad file: the problem goes into ``error``)."""
    path = Path(path)
    result = FileCheck(str(path))
    try:
        data = path.read_bytes()
    except OSError as err:
        result.error = f"cannot read file: {err.strerror or err}"
        return result
    if not data:
        result.error = "empty file (0 bytes)"
        return result
    result.digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette transparency notes
            _inspect(data, result, header_only)
    except UnidentifiedImageError:
        result.error = _not_an_image(data)
    except Exception as err:  # Pillow raises many types (OSError, SyntaxError, struct.error, ...)
        result.error = f"cannot decode ({type(err).__name__}: {err})"
    if result.error is None and result.format in FORMAT_SUFFIXES:
        result.wrong_extension = path.suffix.lower() not in FORMAT_SUFFIXES[result.format]
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
            decode(img, min_size=1)  # min_size=1: JPEGs at the smallest DCT scale, every coded block still read
        orientation = _orientation(img, decoded=not header_only)
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
    if decoded or img.format != "PNG":
        return img.getexif().get(ORIENTATION_TAG, 1)
    exif = Image.Exif()
    if "exif" in img.info:
        exif.load(img.info["exif"])
    return exif.get(ORIENTATION_TAG, 1)


def _conversions(img: Image.Image) -> list[str]:
    """How the image differs from plain 8-bit RGB (each is converted by ``load_rgb``)."""
    mode = img.mode
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


def _check_chunk(paths: Sequence[str], header_only: bool) -> list[FileCheck]:
    return [check_file(p, header_only) for p in paths]


def inspect_files(
    paths: Iterable[str | Path],
    header_only: bool = False,
    workers: int | None = None,
    processes: bool = True,
    progress: Callable[[int], None] | None = None,
    cache: bool = True,
) -> list[FileCheck]:
    """Run :func:`check_file` over ``paths`` in parallel; results come back in input order.

    Args:
        paths: Files to check.
        header_only: Header and container checks only, no pixel decoding (see the module docstring).
        workers: Parallel workers; ``None`` means one per CPU core; 1 checks in this process.
        processes: Worker processes (fastest: header parsing is Python code) or threads (``False``; safe
            inside a training process that already holds a GPU context).
        progress: Called with the number of files finished after each chunk.
        cache: Reuse the result of files whose size and modification time are unchanged since an earlier
            check, and remember the new ones (:mod:`lit_convnext.data.check_cache`).
    """
    paths = [str(p) for p in paths]
    store = CheckCache() if cache else None
    keys = {p: file_key(p) for p in paths} if store else {}
    known = store.lookup([k for k in keys.values() if k], header_only) if store else {}
    results: dict[str, FileCheck] = {}
    for path in paths:
        key = keys.get(path)
        if key and key[0] in known:
            results[path] = FileCheck(**{**known[key[0]], "path": path})
    if progress and results:
        progress(len(results))
    todo = [p for p in paths if p not in results]
    fresh = _check_all(todo, header_only, workers or _cpu_count(), processes, progress)
    results.update((check.path, check) for check in fresh)
    if store:
        # A file that could not be opened (permissions, a vanished mount) may be fine later at the same mtime.
        store.store([(keys[c.path], vars(c)) for c in fresh  # vars: asdict's deep copies cost 30% here
                     if keys.get(c.path) and not (c.error or "").startswith("cannot read file")], header_only)
        store.close()
    return [results[p] for p in paths]


def _check_all(paths: list[str], header_only: bool, workers: int, processes: bool,
               progress: Callable[[int], None] | None) -> list[FileCheck]:
    chunk = 64
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    results: list[FileCheck] = []
    if workers <= 1 or len(chunks) <= 1:
        for part in chunks:
            results.extend(_check_chunk(part, header_only))
            if progress:
                progress(len(part))
        return results
    pool: Executor = (ProcessPoolExecutor if processes else ThreadPoolExecutor)(max_workers=workers)
    with pool:
        for part in pool.map(_check_chunk, chunks, [header_only] * len(chunks)):
            results.extend(part)
            if progress:
                progress(len(part))
    return results


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------ folder scan
@dataclass
class ClassFolder:
    """One class folder of one split and what it holds."""

    split: str
    name: str
    images: list[Path]
    ignored: list[Path]  # files training skips: non-image extensions (hidden files are not listed)


def discover(root: Path) -> tuple[str, list[ClassFolder]]:
    """The layout of ``root`` and its class folders, tolerating every problem :func:`scan` reports."""
    if (root / "train").is_dir() or any((root / s).is_dir() for s in SPLIT_NAMES[1:]):
        layout = "splits"
        split_dirs = [(s, root / s) for s in SPLIT_NAMES if (root / s).is_dir()]
    else:
        layout = "single folder (validation is drawn from it)"
        split_dirs = [("all", root)]
    folders = []
    for split, split_dir in split_dirs:
        for folder in class_folders(split_dir):
            images, ignored = _walk(folder)
            folders.append(ClassFolder(split, folder.name, images, ignored))
    return layout, folders


def _walk(folder: Path) -> tuple[list[Path], list[Path]]:
    images, ignored = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted((d for d in dirnames if not is_hidden(d)), key=natural_key)
        for name in sorted(filenames, key=natural_key):
            if is_hidden(name):
                continue
            path = Path(dirpath) / name
            (images if path.suffix.lower() in IMAGE_SUFFIXES else ignored).append(path)
    return images, ignored


@dataclass
class DoctorReport:
    """Everything :func:`scan` found. ``errors`` stop training; ``warnings`` are worth a look."""

    root: str
    layout: str
    image_size: int | None
    header_only: bool
    counts: dict[str, dict[str, int]]  # split -> class -> usable images
    imbalance: dict[str, float | None]  # split -> largest / smallest class count
    empty_classes: list[tuple[str, str]]  # (split, class)
    unknown_classes: list[tuple[str, str]]  # (split, class) not in the training split
    missing_classes: list[tuple[str, str]]  # (split, class) in training but not in this split
    bad_files: list[tuple[str, str]]  # (path, reason)
    wrong_extension: list[tuple[str, str]]  # (path, actual format)
    conversions: dict[str, int]  # grayscale / palette / alpha / CMYK / 16-bit/float / 1-bit -> files
    exif_rotated: int
    multi_frame: int  # animated or multi-page: only the first frame is used
    ignored_files: list[str]  # non-image files inside class folders
    size_stats: dict[str, dict[str, float]]  # width / height -> min, median, max
    too_small: list[tuple[str, int, int]]  # (path, width, height) below image_size on the shorter side
    duplicates: list[list[str]]  # groups of identical files within one split
    leakage: list[tuple[str, str]]  # (train path, val/test path) with identical content
    files_checked: int
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    label_file_problems: list[tuple[int, str, str]] = field(default_factory=list)  # (line, value, problem)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scan(root: str | Path, image_size: int | None = None, header_only: bool = False, workers: int | None = None,
         progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None,
         cache: bool = True) -> DoctorReport:
    """Check every split of ``root``; see the module docstring. ``progress``/``on_total`` drive a progress bar."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist or is not a folder")
    layout, folders = discover(root)
    files = [(f, p) for f in folders for p in f.images]
    if on_total:
        on_total(len(files))
    checks = inspect_files([p for _, p in files], header_only=header_only, workers=workers, progress=progress,
                           cache=cache)
    split_of = {str(p): f.split for f, p in files}

    train_split = "train" if layout == "splits" else "all"
    report = _report(root, layout, [(f.split, (f.name,)) for f, _ in files], checks, split_of, train_split,
                     image_size, header_only, [(f.split, f.name) for f in folders],
                     [str(p) for f in folders for p in f.ignored])
    _judge(report, train_split)
    return report


def scan_label_file(root: str | Path, labels: str | Path, separator: str = ";", image_size: int | None = None,
                    header_only: bool = False, workers: int | None = None,
                    progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None,
                    cache: bool = True) -> DoctorReport:
    """:func:`scan` for a label file (``--data.labels``): its own problems (line, value, what is wrong) become
    errors or warnings, and the listed images get the same per-file checks; classes are counted per split."""
    from lit_convnext.data.labels import read_label_file

    table = read_label_file(Path(labels), Path(root).expanduser(), separator)
    entries = [(split or "all", sample) for sample, split in table.rows]
    if on_total:
        on_total(len(entries))
    checks = inspect_files([s.path for _, s in entries], header_only=header_only, workers=workers, progress=progress,
                           cache=cache)
    train_split = "train" if table.has_split else "all"
    kind = "multi-label" if table.multilabel else "one label per image"
    report = _report(Path(root).expanduser(), f"label file {table.file} ({kind})",
                     [(split, s.labels) for split, s in entries], checks,
                     {str(s.path): split for split, s in entries}, train_split, image_size, header_only,
                     [(train_split, name) for name in table.class_names], [])
    report.label_file_problems = [(p.line, p.value, p.problem) for p in table.problems]
    file_errors = [p.message(table.file) for p in table.errors]
    _judge(report, train_split)
    report.errors[:0] = file_errors
    report.warnings[:0] = [p.message(table.file) for p in table.problems if not p.error]
    return report


def _report(root: Path, layout: str, entries: Sequence[tuple[str, tuple[str, ...]]], checks: Sequence[FileCheck],
            split_of: dict[str, str], train_split: str, image_size: int | None, header_only: bool,
            known: Sequence[tuple[str, str]], ignored: list[str]) -> DoctorReport:
    """Tally the per-file checks of ``entries`` (split, class names of one file) into a report."""
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    usable: dict[str, FileCheck] = {}
    for split, name in known:
        counts[split][name] = 0
    bad_files, wrong_ext, too_small = [], [], []
    conversions: Counter[str] = Counter()
    rotated = frames = 0
    for (split, names), check in zip(entries, checks):
        if check.error:
            bad_files.append((check.path, check.error))
            continue
        usable[check.path] = check
        for name in names:
            counts[split][name] = counts[split].get(name, 0) + 1
        conversions.update(check.conversions)
        rotated += check.exif_rotated
        frames += check.frames > 1
        if check.wrong_extension:
            wrong_ext.append((check.path, check.format))
        if image_size and min(check.width, check.height) < image_size:
            too_small.append((check.path, check.width, check.height))

    train_classes = {c for c, n in counts.get(train_split, {}).items() if n}
    empty = [(split, name) for split, name in known if counts[split][name] == 0]
    unknown = [(s, c) for s in counts if s != train_split for c in counts[s] if c not in train_classes]
    missing = [(s, c) for s in counts if s != train_split for c in sorted(train_classes - set(counts[s]), key=natural_key)]
    duplicates, leakage = _duplicates(usable.values(), split_of, train_split)
    return DoctorReport(
        root=str(root), layout=layout, image_size=image_size, header_only=header_only,
        counts={s: counts[s] for s in counts},
        imbalance={s: _imbalance(c) for s, c in counts.items()},
        empty_classes=empty, unknown_classes=unknown, missing_classes=missing,
        bad_files=bad_files, wrong_extension=wrong_ext, conversions=dict(sorted(conversions.items())),
        exif_rotated=rotated, multi_frame=frames, ignored_files=ignored,
        size_stats=_size_stats(usable.values()), too_small=too_small,
        duplicates=duplicates, leakage=leakage, files_checked=len(entries),
    )


def _imbalance(per_class: dict[str, int]) -> float | None:
    nonzero = [n for n in per_class.values() if n]
    return round(max(nonzero) / min(nonzero), 2) if nonzero else None


def _size_stats(checks: Iterable[FileCheck]) -> dict[str, dict[str, float]]:
    checks = list(checks)
    if not checks:
        return {}
    stats = {}
    for axis in ("width", "height"):
        values = [getattr(c, axis) for c in checks]
        stats[axis] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    return stats


def _duplicates(checks: Iterable[FileCheck], split_of: dict[str, str], train_split: str
                ) -> tuple[list[list[str]], list[tuple[str, str]]]:
    by_digest: dict[str, list[str]] = defaultdict(list)
    for check in checks:
        by_digest[check.digest].append(check.path)
    duplicates, leakage = [], []
    for paths in by_digest.values():
        if len(paths) < 2:
            continue
        per_split: dict[str, list[str]] = defaultdict(list)
        for path in paths:
            per_split[split_of[path]].append(path)
        duplicates.extend(group for group in per_split.values() if len(group) > 1)
        for split, others in per_split.items():
            if split != train_split:
                leakage.extend((t, o) for t in per_split.get(train_split, []) for o in others)
    return duplicates, leakage


def _judge(report: DoctorReport, train_split: str) -> None:
    errors, warns = report.errors, report.warnings
    if report.bad_files:
        errors.append(f"{len(report.bad_files)} file(s) cannot be decoded")
    if report.empty_classes:
        errors.append(f"{len(report.empty_classes)} empty class folder(s): "
                      + ", ".join(f"{s}/{c}" for s, c in report.empty_classes))
    if report.unknown_classes:
        errors.append("class(es) without training images: " + ", ".join(f"{s}/{c}" for s, c in report.unknown_classes))
    if report.leakage:
        errors.append(f"{len(report.leakage)} training image(s) also appear in val/test (identical content)")
    if not report.files_checked:
        errors.append("no images found")
    for split, ratio in report.imbalance.items():
        if ratio is not None and ratio >= 3:
            warns.append(f"{split}: classes are imbalanced (largest / smallest = {ratio:g})")
    if report.missing_classes:
        warns.append("class(es) missing from val/test: " + ", ".join(f"{s}/{c}" for s, c in report.missing_classes))
    if report.duplicates:
        extra = sum(len(g) - 1 for g in report.duplicates)
        note = " (they may land in both train and val when val is drawn from it)" if train_split == "all" else ""
        warns.append(f"{extra} duplicate file(s) within a split{note}")
    if report.wrong_extension:
        warns.append(f"{len(report.wrong_extension)} file(s) have an extension that does not match their content")
    if report.too_small:
        warns.append(f"{len(report.too_small)} image(s) smaller than {report.image_size} px on the shorter side")
    if report.conversions:
        warns.append("images converted to 8-bit RGB when loaded: "
                     + ", ".join(f"{k} {v}" for k, v in report.conversions.items()))
    if report.exif_rotated:
        warns.append(f"{report.exif_rotated} image(s) have an EXIF orientation (they are loaded upright)")
    if report.multi_frame:
        warns.append(f"{report.multi_frame} animated or multi-page image(s): only the first frame is used")
    if report.ignored_files:
        warns.append(f"{len(report.ignored_files)} non-image file(s) in class folders are ignored")
