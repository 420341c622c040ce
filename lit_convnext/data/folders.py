"""Find images and classes in folders: natural class order, split layouts, a reproducible split.

Layouts accepted for ``root``:

* ``root/train/<class>/...`` with optional ``root/val/<class>/...`` and ``root/test/<class>/...``;
* ``root/<class>/...``: a stratified, seeded validation split is drawn from it.

The class list is built once, from the training split only; other splits are mapped by class name.
"""

from __future__ import annotations

import csv
import os
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lit_convnext.errors import UserError

#: File name suffixes treated as images (compared case-insensitively).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
SPLIT_NAMES = ("train", "val", "test")


_DIGIT_RUNS = re.compile(r"(\d+)")


def natural_key(text: str) -> list[int | str]:
    """Sort key that orders embedded numbers by value: ``class2`` before ``class10``.

    Splitting on a captured pattern alternates text and digit runs, so the odd parts are the numbers (``isdigit``
    would also take superscripts and circled digits such as ``²`` or ``①``, which ``int`` refuses)."""
    return [int(part) if i % 2 else part.casefold() for i, part in enumerate(_DIGIT_RUNS.split(text))]


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def walk_files(folder: Path | str) -> Iterator[tuple[str, bool]]:
    """Every file below ``folder`` recursively, in natural order, hidden entries skipped, as ``(path, is_image)``:
    the one folder walk behind training, ``predict`` and ``doctor`` (which also lists the files training skips).
    Plain strings: a folder of 100,000 files is listed without a ``Path`` object per file."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted((d for d in dirnames if not is_hidden(d)), key=natural_key)
        for name in sorted(filenames, key=natural_key):
            if not is_hidden(name):
                suffix = name[name.rfind("."):].lower() if "." in name else ""
                yield f"{dirpath}{os.sep}{name}", suffix in IMAGE_SUFFIXES


def iter_images(folder: Path) -> Iterator[Path]:
    """Yield image files below ``folder`` recursively, in natural order, skipping hidden entries."""
    for path, is_image in walk_files(folder):
        if is_image:
            yield Path(path)


def class_folders(split_dir: Path) -> list[Path]:
    """The class sub-folders of a split directory, in natural order."""
    return sorted((p for p in split_dir.iterdir() if p.is_dir() and not is_hidden(p.name)),
                  key=lambda p: natural_key(p.name))


@dataclass(frozen=True, slots=True)
class Sample:
    """One labelled image: its path and class name (slots: a folder of a million images holds a million)."""

    path: Path
    class_name: str


def scan_split(split_dir: Path) -> dict[str, list[Path]]:
    """Map each class folder of ``split_dir`` to its images; an empty class folder is an error."""
    folders = class_folders(split_dir)
    if not folders:
        raise UserError(
            f"{split_dir} has no class sub-folders: put each class's images in their own folder, "
            f"e.g. {split_dir}/cat/001.jpg and {split_dir}/dog/001.jpg"
        )
    per_class: dict[str, list[Path]] = {}
    for folder in folders:
        images = list(iter_images(folder))
        if not images:
            raise UserError(
                f"class folder {folder} contains no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}): "
                "add images or remove the folder"
            )
        per_class[folder.name] = images
    return per_class


@dataclass
class FolderSplits:
    """The samples of each split and the class list (from the training split, natural order)."""

    class_names: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    val_is_held_out: bool  # True when val was drawn from the training folders
    multilabel: bool = False  # from a label file with a ``labels`` column (see ``labels.py``)

    def targets(self, samples: Iterable[Sample]) -> list[int]:
        index = {name: i for i, name in enumerate(self.class_names)}
        return [index[s.class_name] for s in samples]


def read_folder_splits(
    root: Path, val_fraction: float = 0.2, seed: int = 42, manifest: Path | None = None
) -> FolderSplits:
    """Scan ``root`` in either accepted layout; see the module docstring."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist or is not a folder: pass --data.root PATH to your images")
    train_dir = root / "train"
    if train_dir.is_dir():
        train = scan_split(train_dir)
        class_names = sorted(train, key=natural_key)
        splits = {"train": _flatten(train)}
        for name in ("val", "test"):
            split_dir = root / name
            splits[name] = _flatten(_checked_split(split_dir, class_names)) if split_dir.is_dir() else []
        if splits["val"]:
            return FolderSplits(class_names, splits["train"], splits["val"], splits["test"], val_is_held_out=False)
        pool = splits["train"]
        test = splits["test"]
    else:
        if any((root / name).is_dir() for name in ("val", "test")):
            raise UserError(f"{root} has a val/ or test/ folder but no train/ folder: add {root}/train/<class>/...")
        per_class = scan_split(root)
        class_names = sorted(per_class, key=natural_key)
        pool, test = _flatten(per_class), []
    if manifest is not None:
        train, val = split_from_manifest(root, pool, Path(manifest))
    else:
        train, val = stratified_split(pool, val_fraction, seed)
    return FolderSplits(class_names, train, val, test, val_is_held_out=True)


def _flatten(per_class: dict[str, list[Path]]) -> list[Sample]:
    return [Sample(path, name) for name in sorted(per_class, key=natural_key) for path in per_class[name]]


def _checked_split(split_dir: Path, class_names: list[str]) -> dict[str, list[Path]]:
    per_class = scan_split(split_dir)
    unknown = [name for name in per_class if name not in class_names]
    if unknown:
        raise UserError(
            f"class folder(s) {', '.join(unknown)} in {split_dir} do not exist in the training split "
            f"({', '.join(class_names)}): add training images for them or remove them"
        )
    return per_class


def stratified_split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``val_fraction`` of every class (at least one image when a class has two or more)."""
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.class_name].append(sample)
    rng = random.Random(seed)
    train, val = [], []
    for name in sorted(by_class, key=natural_key):
        members = list(by_class[name])
        rng.shuffle(members)
        n_val = round(len(members) * val_fraction)
        n_val = min(max(n_val, 1), len(members) - 1) if len(members) >= 2 else 0
        val.extend(sorted(members[:n_val], key=lambda s: natural_key(str(s.path))))
        train.extend(sorted(members[n_val:], key=lambda s: natural_key(str(s.path))))
    return train, val


def write_split_manifest(path: Path, root: Path, splits: FolderSplits) -> None:
    """Write which file went to which split, relative to ``root``, to reproduce the split later."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "class", "path"])
        for split, samples in (("train", splits.train), ("val", splits.val)):
            for sample in samples:
                writer.writerow([split, sample.class_name, manifest_path(sample.path, root)])


def manifest_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as the manifest stores it (absolute for a label file's image outside root)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def split_from_manifest(root: Path, pool: list[Sample], manifest: Path) -> tuple[list[Sample], list[Sample]]:
    if not manifest.is_file():
        raise UserError(f"split manifest {manifest} does not exist: pass a split_manifest.csv from an earlier run")
    assignment: dict[str, str] = {}
    with manifest.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            assignment[row["path"]] = row["split"]
    train, val = [], []
    for sample in pool:
        split = assignment.get(manifest_path(sample.path, root), "train")
        (val if split == "val" else train).append(sample)
    return train, val
