"""Keep undecodable files out of training: check the split files before the first step.

The DataModule calls :func:`check_samples` in ``setup``. By default a bad file stops the run with one
error that lists them (the doctor explains more); with ``skip_bad_files`` they are dropped and a summary
is logged. The check runs in worker processes, like the loader's (they only run Pillow, so starting them
from a process that already holds a GPU is as safe as starting loader workers), and files unchanged since
an earlier check are not read again.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

from lit_convnext.data.folders import Sample
from lit_convnext.checks.file_checks import FileCheck, inspect_files
from lit_convnext.errors import UserError
from lit_convnext.text import preview

log = logging.getLogger(__name__)

#: Bad files named in the error / summary; the rest are counted.
LISTED = 10
#: Files named in the line about Pillow's warnings (each with its first warning).
NOTED = 3

#: File in the run directory listing every file left out or that stopped the run: ``path,reason,found``.
BAD_FILES_NAME = "bad_files.csv"
#: The ``found`` value of files that failed in the loader, after the check (changed on disk, or not checked).
FOUND_WHILE_LOADING = "while loading"


def check_samples(samples: Sequence[Sample], split: str, skip: bool, workers: int | None = None,
                  bad_file_list: Path | None = None) -> list[Sample]:
    """``samples`` without undecodable files; raises :class:`UserError` listing them unless ``skip``.

    Every image is decoded (see :mod:`lit_convnext.checks.file_checks`); the bad ones are also appended to
    ``bad_file_list`` (the run directory's ``bad_files.csv``).
    """
    checks = inspect_files([s.path for s in samples], workers=workers)
    _mention_decoder_notes(checks, split)
    bad = {c.path: c.error for c in checks if c.error}
    if not bad:
        return list(samples)
    append_bad_files(bad_file_list, list(bad.items()), f"{split} check before the first step")
    listed = preview([f"{path} ({reason})" for path, reason in bad.items()], LISTED, "; ", "and {left} more")
    if not skip:
        raise UserError(
            f"{len(bad)} {split} file(s) cannot be decoded: {listed}. Fix or remove them, or pass "
            "--data.skip_bad_files true to train without them (run `lit-convnext doctor ROOT` for a full report)"
        )
    log.warning("skipping %d undecodable %s file(s): %s", len(bad), split, listed)
    return [s for s in samples if str(s.path) not in bad]


def _mention_decoder_notes(checks: Sequence[FileCheck], split: str) -> None:
    """One line for the files that decode with warnings from Pillow (left out of the terminal while loading)."""
    noted = [c for c in checks if c.notes and not c.error]
    if noted:
        named = preview([f"{c.path} ({c.notes[0]})" for c in noted], NOTED, "; ", "and {left} more")
        log.warning("%d %s file(s) decode with warnings from Pillow and are used as decoded: %s "
                    "(`lit-convnext doctor` lists them)", len(noted), split, named)


def append_bad_files(listing: Path | None, rows: Sequence[tuple[str, str]], found: str) -> None:
    """Add ``(path, reason)`` rows to the run's bad-file list (one ``write`` per call: safe across workers)."""
    if listing is None or not rows:
        return
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    if not listing.exists():
        writer.writerow(["path", "reason", "found"])
    writer.writerows((path, reason, found) for path, reason in rows)
    listing.parent.mkdir(parents=True, exist_ok=True)
    with listing.open("a", encoding="utf-8", newline="") as handle:
        handle.write(buffer.getvalue())


def listing_size(listing: Path | None) -> int:
    """The bad-file list's size now: rows added after this offset are this command's."""
    return listing.stat().st_size if listing is not None and listing.is_file() else 0


def found_while_loading_since(listing: Path | None, offset: int) -> tuple[set[str], int]:
    """The paths added to the run's bad-file list as found while loading after byte ``offset`` (by any loader
    process of this command), and the offset to read from next time (rows are whole lines: each is one write)."""
    if listing is None or not listing.is_file():
        return set(), offset
    with listing.open("rb") as handle:
        handle.seek(offset)
        added = handle.read()
    complete = added[: added.rfind(b"\n") + 1]  # a row still being written is read next time
    rows = csv.reader(io.StringIO(complete.decode("utf-8"), newline=""))
    return {row[0] for row in rows if len(row) == 3 and row[2] == FOUND_WHILE_LOADING}, offset + len(complete)
