"""``lit-convnext doctor``: run the data checks with a progress bar and print them as Rich tables.

This module holds only the command's signature so that ``lit-convnext doctor --help`` starts at once;
the scan (Pillow) and the tables (:mod:`lit_convnext.commands.doctor_tables`) load when it runs.
"""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated

from annotated_types import Ge, Le

from lit_convnext.errors import UserError


def doctor(root: Path, json: Path | None = None, image_size: int | None = None, header_only: bool = False,
           workers: int | None = None, cache: bool = True, labels: Path | None = None,
           label_separator: str = ";", near_duplicates: bool = False,
           near_duplicate_distance: Annotated[int, Ge(0), Le(32)] = 8) -> int:
    """Check an image folder for problems before training; exit status 1 when there are errors.

    Args:
        root: The data folder, in any layout ``fit`` accepts (``train/ val/ test/`` or class folders).
        json: Also write the full report as JSON to this file.
        image_size: Training resolution; smaller images are reported.
        header_only: Check headers and containers only, without decoding pixels: faster, but misses files
            whose pixel data is corrupt (which training would then fail on).
        workers: Parallel processes; default one per CPU core.
        cache: Reuse the results of files unchanged (same size and modification time) since an earlier check
            by ``doctor`` or ``fit``, kept in ``~/.cache/lit-convnext`` (``$LIT_CONVNEXT_CACHE_DIR``).
        labels: A label file (as ``fit --data.labels``) to check instead of class folders: its rows (missing
            images, empty or unknown labels, duplicate rows, images listed twice with different labels, classes
            too small to split) and the images it lists. Relative paths start at ``root``.
        label_separator: What separates the class names in a ``labels`` cell.
        near_duplicates: Also look for the same picture saved twice in another form (re-encoded, resized, slightly
            cropped, brightened) by perceptual hashes: pairs across train/val/test (leakage), across classes (a
            labelling conflict) and within a class. A second pass over the files; needs the ``doctor`` extra.
        near_duplicate_distance: Bits (of 64) in which two pictures' perceptual hashes may differ and still be
            listed: higher finds harder crops and brightening, and more look-alike pictures that are not copies
            (measured in docs/improving-data.md).
    """
    # Imported here, not at the top: `lit-convnext doctor --help` needs only this signature.
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lit_convnext.commands.doctor_tables import render
    from lit_convnext.checks.scan import scan, scan_label_file

    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist or is not a folder: pass the folder of your images")
    console = Console(stderr=False)
    with Progress(TextColumn("checking images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("scan", total=None)
        # on_total starts a pass over the files (near-duplicates make a second one)
        hooks = {"on_total": lambda n: progress.update(task, total=n, completed=0),
                 "progress": lambda n: progress.advance(task, n)}
        if labels is not None:
            report = scan_label_file(root, labels, label_separator, image_size=image_size, header_only=header_only,
                                     workers=workers, cache=cache, near_duplicates=near_duplicates,
                                     near_duplicate_distance=near_duplicate_distance, **hooks)
        else:
            report = scan(root, image_size=image_size, header_only=header_only, workers=workers, cache=cache,
                          near_duplicates=near_duplicates, near_duplicate_distance=near_duplicate_distance,
                          **hooks)
    render(report, console)
    if json is not None:
        Path(json).parent.mkdir(parents=True, exist_ok=True)
        Path(json).write_text(jsonlib.dumps(report.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
        console.print(f"Report written to {json}", markup=False)
    return 0 if report.ok else 1
