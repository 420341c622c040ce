"""Label files: a table of image paths and their class (``label``) or classes (``labels``).

``--data.labels FILE`` takes a ``.csv`` with a header row or a ``.jsonl`` file (one JSON object per line) with

* ``path``: the image, relative to ``--data.root`` (or, without a root, to the label file's folder) or absolute;
* ``label`` (one class per image) or ``labels`` (multi-label: names joined by ``--data.label_separator``, default
  ``;`` since class names may contain spaces; in JSON Lines also a list of names);
* optionally ``split`` (``train``, ``val`` or ``test``); rows are drawn into a validation split otherwise.

:func:`read_label_file` returns every row plus every problem found (the doctor lists them all);
:func:`read_label_splits` is what training uses: it stops at the first problem with a one-line error naming the
file, line and value. Classes come from the training rows in natural order, as for folders.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import numpy as np
import torch

from lit_convnext.data.folders import (
    SPLIT_NAMES,
    FolderSplits,
    Sample,
    natural_key,
    split_from_manifest,
    stratified_split,
)
from lit_convnext.errors import UserError

LABEL_FILE_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class LabeledSample(Sample):
    """A row of a label file: ``class_name`` is the labels joined by the separator (manifest, single-label split)."""

    labels: tuple[str, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class LabelProblem:
    """One problem of a label file: the line (1 = header), the offending value and what is wrong."""

    line: int
    value: str
    problem: str
    error: bool = True  # False: a warning (training goes on)

    def message(self, file: Path) -> str:
        return f"{file} line {self.line}: {self.problem} ({self.value!r})" if self.line else f"{file}: {self.problem}"


@dataclass
class LabelTable:
    """What a label file holds: its rows and every problem found in it."""

    file: Path
    multilabel: bool
    has_split: bool
    rows: list[tuple[LabeledSample, str | None]]  # (sample, split or None)
    class_names: list[str]
    problems: list[LabelProblem] = field(default_factory=list)

    @property
    def errors(self) -> list[LabelProblem]:
        return [p for p in self.problems if p.error]


def label_columns(file: Path) -> tuple[list[str], bool]:
    """The column names of ``file`` and whether it is multi-label (a ``labels`` column); checks the header."""
    file = Path(file).expanduser()
    if file.suffix.lower() not in LABEL_FILE_SUFFIXES:
        raise UserError(f"label file {file}: use a .csv file with a header row or a .jsonl file")
    if not file.is_file():
        raise UserError(f"label file {file} does not exist: pass --data.labels PATH to a .csv or .jsonl file")
    with _Utf8Lines(file) as handle:
        if file.suffix.lower() == ".csv":
            columns = [c.strip() for c in next(csv.reader(handle), [])]
        else:
            columns = sorted({key for _, record in _jsonl_records(file, handle) for key in record})
    if "path" not in columns:
        raise UserError(f"label file {file} has no 'path' column (columns: {', '.join(columns) or 'none'}): "
                        "name the image column 'path'")
    if ("label" in columns) == ("labels" in columns):
        raise UserError(f"label file {file} needs exactly one of the columns 'label' (one class per image) or "
                        f"'labels' (multi-label), found columns {', '.join(columns)}")
    return columns, "labels" in columns


#: What a label is: one class per image (softmax) or any number of classes per image (a sigmoid per class).
Task = Literal["multiclass", "multilabel"]


def data_task(labels: Path | None, task: Task | None = None) -> Task:
    """The task the data asks for, the one rule: ``task`` when given, else ``multilabel`` for a label file with a
    ``labels`` column and ``multiclass`` for everything else (class folders, a ``label`` column, no data)."""
    multilabel_file = labels is not None and label_columns(Path(labels))[1]
    if task == "multiclass" and multilabel_file:
        raise UserError(f"label file {labels} has a 'labels' column (multi-label) but --data.task is multiclass: "
                        "leave --data.task out, or use a 'label' column (one class per image)")
    return task or ("multilabel" if multilabel_file else "multiclass")


class _Utf8Lines:
    """A label file's text lines; a file that is not UTF-8 is a one-line error naming it, not a traceback."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.handle = file.open(newline="", encoding="utf-8-sig")

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self.handle
        except UnicodeDecodeError as err:
            raise UserError(f"label file {self.file} is not UTF-8 text ({err.reason} at byte {err.start}): "
                            "save it as UTF-8") from err

    def __enter__(self) -> _Utf8Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def _jsonl_records(file: Path, handle: IO[str] | _Utf8Lines) -> list[tuple[int, dict]]:
    records = []
    for number, text in enumerate(handle, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"label file {file} line {number}: not valid JSON ({err.msg}): {text.strip()[:80]!r}") from err
        if not isinstance(record, dict):
            raise UserError(f"label file {file} line {number}: expected a JSON object, got {text.strip()[:80]!r}")
        records.append((number, record))
    return records


def _records(file: Path) -> list[tuple[int, dict]]:
    with _Utf8Lines(file) as handle:
        if file.suffix.lower() == ".jsonl":
            return _jsonl_records(file, handle)
        reader = csv.DictReader(handle)
        reader.fieldnames = [c.strip() for c in reader.fieldnames or []]
        # csv line numbers: the header is line 1; reader.line_num counts physical lines (quoted newlines too)
        return [(reader.line_num, row) for row in reader]


def read_label_file(file: Path, root: Path | None = None, separator: str = ";") -> LabelTable:
    """Read ``file`` and collect every problem (missing images, empty or unknown labels, duplicates, splits)."""
    file = Path(file).expanduser()
    _, multilabel = label_columns(file)
    if not separator:
        raise UserError("--data.label_separator must not be empty")
    base = Path(root).expanduser() if root is not None else file.parent
    problems: list[LabelProblem] = []
    rows: list[tuple[LabeledSample, str | None]] = []
    first_seen: dict[Path, tuple[int, tuple[str, ...], str | None]] = {}
    has_split = False
    for line, record in _records(file):
        raw_path = str(record.get("path") or "").strip()
        split = record.get("split")
        split = str(split).strip().lower() if split is not None else None
        has_split = has_split or "split" in record
        labels = _labels(record, multilabel, separator)
        if not raw_path:
            problems.append(LabelProblem(line, raw_path, "empty path"))
            continue
        path = Path(raw_path).expanduser()
        path = path if path.is_absolute() else base / path
        if split is not None and split not in SPLIT_NAMES:
            problems.append(LabelProblem(line, split, f"split must be one of {', '.join(SPLIT_NAMES)}"))
            continue
        if not labels or any(not name for name in labels):
            problems.append(LabelProblem(line, str(record.get("labels" if multilabel else "label") or ""),
                                         "empty label: every image needs a class name"
                                         + (f" (names joined by {separator!r})" if multilabel else "")))
            continue
        if not multilabel and len(labels) > 1:  # a JSON list in a 'label' column
            problems.append(LabelProblem(line, str(labels), "a 'label' column holds one class: use a 'labels' column"))
            continue
        if path in first_seen:
            earlier, earlier_labels, earlier_split = first_seen[path]
            if set(earlier_labels) == set(labels) and earlier_split == split:
                problems.append(LabelProblem(line, raw_path, f"duplicate row: the same image and labels as line {earlier}"))
            else:
                problems.append(LabelProblem(line, raw_path, f"image listed twice with different labels or split "
                                                             f"(line {earlier}: {separator.join(earlier_labels)})"))
            continue
        first_seen[path] = (line, labels, split)
        if not path.is_file():
            problems.append(LabelProblem(line, raw_path, f"image not found at {path}"))
            continue
        rows.append((LabeledSample(path, separator.join(labels), labels, line), split))
    train_rows = [s for s, split in rows if split in (None, "train")]
    class_names = sorted({name for s in train_rows for name in s.labels}, key=natural_key)
    known = set(class_names)
    for sample, split in rows:
        unknown = [name for name in sample.labels if name not in known]
        if unknown:
            problems.append(LabelProblem(sample.line, separator.join(unknown),
                                         f"class with no training rows in the {split} split"))
    if not rows and not problems:
        problems.append(LabelProblem(0, "", "no rows: add one row per image"))
    table = LabelTable(file, multilabel, has_split, rows, class_names, problems)
    if not has_split:
        counts = Counter(name for s in train_rows for name in s.labels)
        for name in class_names:
            if counts[name] < 2:
                problems.append(LabelProblem(0, name, f"class {name!r} has {counts[name]} image(s): too few to put "
                                                      "one in both the training and the validation split", error=False))
    return table


def _labels(record: dict, multilabel: bool, separator: str) -> tuple[str, ...]:
    value = record.get("labels" if multilabel else "label")
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(str(v).strip() for v in value)
    text = str(value).strip()
    if not text:
        return ()
    return tuple(part.strip() for part in text.split(separator)) if multilabel else (text,)


def read_label_splits(file: Path, root: Path | None, separator: str, val_fraction: float, seed: int,
                      manifest: Path | None = None) -> FolderSplits:
    """The splits of a label file for training; the first problem is a one-line error naming file, line and value."""
    table = read_label_file(file, root, separator)
    if table.errors:
        first, more = table.errors[0], len(table.errors) - 1
        extra = f" (and {more} more problem(s): run `lit-convnext doctor ROOT --labels FILE` to list them)" if more else ""
        raise UserError(first.message(table.file) + extra)
    by_split: dict[str | None, list[LabeledSample]] = defaultdict(list)
    for sample, split in table.rows:
        by_split[split].append(sample)
    test = by_split["test"]
    pool = by_split[None] + by_split["train"]
    if by_split["val"]:
        splits = FolderSplits(table.class_names, pool, by_split["val"], test, val_is_held_out=False)
    else:
        if manifest is not None:
            train, val = split_from_manifest(Path(root or table.file.parent), pool, Path(manifest))
        elif table.multilabel:
            train, val = multilabel_split(pool, table.class_names, val_fraction, seed)
        else:
            train, val = stratified_split(pool, val_fraction, seed)
        splits = FolderSplits(table.class_names, train, val, test, val_is_held_out=True)
    splits.multilabel = table.multilabel
    return splits


def multilabel_split(samples: Sequence[LabeledSample], class_names: list[str], val_fraction: float,
                     seed: int) -> tuple[list[LabeledSample], list[LabeledSample]]:
    """Hold out ``val_fraction`` of the rows by iterative stratification, so rare labels reach validation too
    (iterative-stratification, the ``multilabel`` extra)."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--data.val_fraction must be between 0 and 1, got {val_fraction}")
    try:
        from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit
    except ImportError:
        raise UserError(
            "drawing the validation split of a multi-label label file needs iterative-stratification: "
            "pip install 'lit-convnext[multilabel]'; or mark validation rows with `val` in a `split` column, "
            "or pass --data.split_manifest of an earlier run"
        ) from None

    targets = multi_hot(samples, class_names).numpy()
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(samples)), targets))
    return [samples[i] for i in sorted(train_idx)], [samples[i] for i in sorted(val_idx)]


def sample_labels(sample: Sample) -> tuple[str, ...]:
    """The class names of a sample: a label-file row's labels, or a folder sample's one class."""
    return getattr(sample, "labels", None) or (sample.class_name,)


def multi_hot(samples: Sequence[Sample], class_names: list[str]) -> torch.Tensor:
    """``(len(samples), len(class_names))`` float targets, 1 where the image has the class."""
    index = {name: i for i, name in enumerate(class_names)}
    targets = torch.zeros(len(samples), len(class_names))
    for row, sample in enumerate(samples):
        for name in sample_labels(sample):
            targets[row, index[name]] = 1.0
    return targets
