"""Check an image folder before training: bad files, class balance, leakage, conversions, sizes.

:func:`scan` walks the same layouts ``fit`` accepts (``root/train|val|test/<class>/...`` or
``root/<class>/...``) but, unlike the training scan, reports every problem instead of stopping at the
first. The per-file pass (decode, hash, cache) is :mod:`lit_convnext.checks.file_checks`, which the
DataModule also runs before training.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lit_convnext.checks.file_checks import FileCheck, FileChecker, inspect_files
from lit_convnext.data.folders import SPLIT_NAMES, class_folders, natural_key, walk_files
from lit_convnext.errors import UserError


# ------------------------------------------------------------------------------------------ folder scan
@dataclass
class ClassFolder:
    """One class folder of one split and what it holds."""

    split: str
    name: str
    images: list[str]
    ignored: list[str]  # files training skips: non-image extensions (hidden files are not listed)


def discover(root: Path, on_folder: Callable[[ClassFolder], None] | None = None) -> tuple[str, list[ClassFolder]]:
    """The layout of ``root`` and its class folders, tolerating every problem :func:`scan` reports;
    ``on_folder`` sees each class folder as soon as it is listed."""
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
            if on_folder:
                on_folder(folders[-1])
    return layout, folders


def _walk(folder: Path) -> tuple[list[str], list[str]]:
    """Image and other files below ``folder``, in the training scan's order."""
    images, ignored = [], []
    for path, is_image in walk_files(folder):
        (images if is_image else ignored).append(path)
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
    decoder_notes: list[tuple[str, str]] = field(default_factory=list)  # (path, Pillow's warnings) of usable files
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    label_file_problems: list[tuple[int, str, str]] = field(default_factory=list)  # (line, value, problem)
    #: (path, path, similarity, "across splits" | "across classes" | "within a class"); None: not looked for
    near_duplicates: list[tuple[str, str, float, str]] | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scan(root: str | Path, image_size: int | None = None, header_only: bool = False, workers: int | None = None,
         progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None,
         cache: bool = True, near_duplicates: bool = False, near_duplicate_distance: int = 8) -> DoctorReport:
    """Check every split of ``root``; see the module docstring. ``progress``/``on_total`` drive a progress bar;
    ``near_duplicates`` also looks for re-saved copies of one picture whose perceptual hashes differ in at most
    ``near_duplicate_distance`` bits (:mod:`lit_convnext.checks.near_duplicates`), a second pass over the files
    (``progress`` counts them again after ``on_total``)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist or is not a folder")
    with FileChecker(header_only, workers, progress, cache) as checker:  # checks start while folders are listed
        layout, folders = discover(root, on_folder=lambda folder: checker.add(folder.images))
        files = [(f, p) for f in folders for p in f.images]
        if on_total:
            on_total(len(files))
        checks = checker.results()
    split_of = {p: f.split for f, p in files}

    train_split = "train" if layout == "splits" else "all"
    report = _report(root, layout, [(f.split, (f.name,)) for f, _ in files], checks, split_of, train_split,
                     image_size, header_only, [(f.split, f.name) for f in folders],
                     [p for f in folders for p in f.ignored])
    if near_duplicates:
        _find_near_duplicates(report, checks, {p: (f.split, f.name) for f, p in files}, near_duplicate_distance,
                              workers, progress, on_total)
    _judge(report, train_split)
    return report


def _find_near_duplicates(report: DoctorReport, checks: Sequence[FileCheck], group_of: dict[str, tuple[str, str]],
                          max_distance: int, workers: int | None, progress: Callable[[int], None] | None,
                          on_total: Callable[[int], None] | None) -> None:
    """Fill ``report.near_duplicates`` from the usable files (imagehash is imported only here)."""
    if not _has_module("imagehash"):
        raise UserError("looking for near-duplicates needs imagehash: pip install 'lit-convnext[doctor]'")
    from lit_convnext.checks.near_duplicates import near_duplicates

    usable = [check for check in checks if not check.error]
    if on_total:
        on_total(len(usable))
    report.near_duplicates = near_duplicates([c.path for c in usable], group_of, {c.path: c.digest for c in usable},
                                             workers, progress, max_distance)


def scan_label_file(root: str | Path, labels: str | Path, separator: str = ";", image_size: int | None = None,
                    header_only: bool = False, workers: int | None = None,
                    progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None,
                    cache: bool = True, near_duplicates: bool = False, near_duplicate_distance: int = 8
                    ) -> DoctorReport:
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
    if near_duplicates:
        _find_near_duplicates(report, checks, {str(s.path): (split, separator.join(s.labels)) for split, s in entries},
                              near_duplicate_distance, workers, progress, on_total)
    file_errors = [p.message(table.file) for p in table.errors]
    _judge(report, train_split)
    report.errors[:0] = file_errors
    report.warnings[:0] = [p.message(table.file) for p in table.problems if not p.error]
    if table.multilabel and not any(split == "val" for split, _ in entries) and not _has_module("iterstrat"):
        report.warnings.append("fit draws this multi-label file's validation split by iterative stratification, "
                               "which is not installed: pip install 'lit-convnext[multilabel]' (or add `val` rows)")
    return report


def _has_module(name: str) -> bool:
    """Whether ``name`` can be imported (found, not imported)."""
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _report(root: Path, layout: str, entries: Sequence[tuple[str, tuple[str, ...]]], checks: Sequence[FileCheck],
            split_of: dict[str, str], train_split: str, image_size: int | None, header_only: bool,
            known: Sequence[tuple[str, str]], ignored: list[str]) -> DoctorReport:
    """Tally the per-file checks of ``entries`` (split, class names of one file) into a report."""
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    usable: dict[str, FileCheck] = {}
    for split, name in known:
        counts[split][name] = 0
    bad_files, wrong_ext, too_small, notes = [], [], [], []
    conversions: Counter[str] = Counter()
    rotated = frames = 0
    for (split, names), check in zip(entries, checks):
        if check.error:
            bad_files.append((check.path, check.error))
            continue
        usable[check.path] = check
        for name in names:
            counts[split][name] = counts[split].get(name, 0) + 1
        if check.conversions:
            conversions.update(check.conversions)
        rotated += check.exif_rotated
        frames += check.frames > 1
        if check.wrong_extension:
            wrong_ext.append((check.path, check.format))
        if check.notes:
            notes.append((check.path, "; ".join(check.notes)))
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
        duplicates=duplicates, leakage=leakage, files_checked=len(entries), decoder_notes=notes,
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


def _duplicates(checks: Collection[FileCheck], split_of: dict[str, str], train_split: str
                ) -> tuple[list[list[str]], list[tuple[str, str]]]:
    seen: set[str | None] = set()
    repeated: set[str | None] = set()
    for check in checks:
        (repeated if check.digest in seen else seen).add(check.digest)
    by_digest: dict[str | None, list[str]] = defaultdict(list)  # only the digests of two files or more (few)
    if repeated:
        for check in checks:
            if check.digest in repeated:
                by_digest[check.digest].append(check.path)
    duplicates, leakage = [], []
    for paths in by_digest.values():
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
    near = Counter(where for *_, where in report.near_duplicates or [])
    if near["across splits"]:
        warns.append(f"{near['across splits']} near-duplicate pair(s) across train/val/test: the same picture "
                     "re-saved in two splits inflates the score; keep one of each pair")
    if near["across classes"]:
        warns.append(f"{near['across classes']} near-duplicate pair(s) in different classes: a labelling conflict; "
                     "keep the right one")
    if near["within a class"]:
        note = " (they may land in both train and val when val is drawn from it)" if train_split == "all" else ""
        warns.append(f"{near['within a class']} near-duplicate pair(s) within a class{note}")
    if report.wrong_extension:
        warns.append(f"{len(report.wrong_extension)} file(s) have an extension that does not match their content")
    if report.decoder_notes:
        warns.append(f"{len(report.decoder_notes)} file(s) decode with warnings from Pillow (damaged metadata or "
                     "frames): each is used as Pillow decodes it")
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
