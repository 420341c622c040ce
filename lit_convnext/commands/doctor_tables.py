"""The doctor's report as Rich tables and a verdict.

Everything that comes from the data (paths, class names, Pillow's words, messages that quote them) goes through
``rich.markup.escape``: a folder named ``[draft]`` would otherwise be read as a style and vanish from the screen.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lit_convnext.checks.scan import DoctorReport

#: Rows shown per table; the JSON report always has everything.
SHOW = 20


def render(report: DoctorReport, console: Console) -> None:
    """Print ``report`` as a few tables and a verdict."""
    console.print(f"[bold]{escape(report.root)}[/] ({escape(report.layout)}), {report.files_checked} image files checked"
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
        table.add_row(escape(name), *(_count(report.counts[s].get(name)) for s in splits))
    table.add_row("[bold]imbalance (max/min)", *(f"{report.imbalance[s] or '-'}" for s in splits))
    console.print(table)

    _rows(console, "Label file problems", ("line", "value", "problem"),
          [(line or "-", value, problem) for line, value, problem in report.label_file_problems], style="red")
    _rows(console, "Files that cannot be used", ("path", "reason"), report.bad_files, style="red")
    _rows(console, "Train / val-test leakage (identical files)", ("train", "val/test"), report.leakage, style="red")
    _rows(console, "Extension does not match content", ("path", "actual format"), report.wrong_extension)
    _rows(console, "Decoded with warnings from Pillow (still used)", ("path", "warning"), report.decoder_notes)
    _rows(console, "Duplicates within a split", ("files",), [(" = ".join(g),) for g in report.duplicates])
    _rows(console, "Near-duplicates (the same picture re-saved)", ("path", "path", "similarity", "where"),
          [(a, b, f"{similarity:.2f}", where) for a, b, similarity, where in report.near_duplicates or []])
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
        console.print(f"[bold red]error:[/] {escape(message)}")
    for message in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(message)}")
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
        table.add_row(*(escape(str(v)) for v in row))
    if len(rows) > SHOW:
        table.add_row(f"... {len(rows) - SHOW} more (see --json)", *([""] * (len(columns) - 1)))
    console.print(table)
