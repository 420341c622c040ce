"""``lit-convnext doctor``: run the data checks with a progress bar and print them as Rich tables."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from lit_convnext.data.scan import DoctorReport, scan
from lit_convnext.errors import UserError

#: Rows shown per table; the JSON report always has everything.
SHOW = 20


def doctor(root: Path, json: Path | None = None, image_size: int | None = None, header_only: bool = False,
           workers: int | None = None) -> int:
    """Check an image folder for problems before training; exit status 1 when there are errors.

    Args:
        root: The data folder, in any layout ``fit`` accepts (``train/ val/ test/`` or class folders).
        json: Also write the full report as JSON to this file.
        image_size: Training resolution; smaller images are reported.
        header_only: Check headers and containers only, without decoding pixels: faster, but misses files
            whose pixel data is corrupt (which training would then fail on).
        workers: Parallel processes; default one per CPU core.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist or is not a folder: pass the folder of your images")
    console = Console(stderr=False)
    with Progress(TextColumn("checking images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("scan", total=None)
        report = scan(root, image_size=image_size, header_only=header_only, workers=workers,
                      on_total=lambda n: progress.update(task, total=n),
                      progress=lambda n: progress.advance(task, n))
    render(report, console)
    if json is not None:
        Path(json).parent.mkdir(parents=True, exist_ok=True)
        Path(json).write_text(jsonlib.dumps(report.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
        console.print(f"Report written to {json}")
    return 0 if report.ok else 1


def render(report: DoctorReport, console: Console) -> None:
    """Print ``report`` as a few tables and a verdict."""
    console.print(f"[bold]{report.root}[/] ({report.layout}), {report.files_checked} image files checked"
                  f"{' (headers only: corrupt pixel data is not found)' if report.header_only else ', pixels decoded'}")
    splits = list(report.counts)
    classes = sorted({c for per in report.counts.values() for c in per},
                     key=lambda c: list(report.counts.get(splits[0], {})).index(c)
                     if c in report.counts.get(splits[0], {}) else 10**9)
    table = Table(title="Images per class")
    table.add_column("class")
    for split in splits:
        table.add_column(split, justify="right")
    for name in classes:
        table.add_row(name, *(_count(report.counts[s].get(name)) for s in splits))
    table.add_row("[bold]imbalance (max/min)", *(f"{report.imbalance[s] or '-'}" for s in splits))
    console.print(table)

    _rows(console, "Files that cannot be used", ("path", "reason"), report.bad_files, style="red")
    _rows(console, "Train / val-test leakage (identical files)", ("train", "val/test"), report.leakage, style="red")
    _rows(console, "Extension does not match content", ("path", "actual format"), report.wrong_extension)
    _rows(console, "Duplicates within a split", ("files",), [(" = ".join(g),) for g in report.duplicates])
    _rows(console, f"Smaller than {report.image_size} px", ("path", "width", "height"),
          [(p, str(w), str(h)) for p, w, h in report.too_small])
    if report.size_stats:
        sizes = Table(title="Image size (upright)")
        for col in ("", "min", "median", "max"):
            sizes.add_column(col, justify="right")
        for axis, stats in report.size_stats.items():
            sizes.add_row(axis, *(f"{stats[k]:g}" for k in ("min", "median", "max")))
        console.print(sizes)
    for message in report.errors:
        console.print(f"[bold red]error:[/] {message}")
    for message in report.warnings:
        console.print(f"[yellow]warning:[/] {message}")
    verdict = "[bold green]OK[/]" if report.ok else "[bold red]problems found: fix the errors above[/]"
    console.print(f"{verdict} ({len(report.errors)} error(s), {len(report.warnings)} warning(s))")


def _count(value: int | None) -> str:
    if value is None:
        return "-"
    return f"[red]{value}[/]" if value == 0 else str(value)


def _rows(console: Console, title: str, columns: tuple[str, ...], rows: list, style: str = "") -> None:
    if not rows:
        return
    table = Table(title=f"{title} ({len(rows)})", title_style=style or None)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows[:SHOW]:
        table.add_row(*(str(v) for v in row))
    if len(rows) > SHOW:
        table.add_row(f"... {len(rows) - SHOW} more (see --json)", *([""] * (len(columns) - 1)))
    console.print(table)
