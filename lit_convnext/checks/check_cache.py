"""Remember each file's check result by path, size and modification time, so a folder is checked once.

Decoding every image before each run costs seconds to minutes on large folders; a file whose size and
modification time are unchanged gives the same result, so the second ``fit`` or ``doctor`` over the same
folder only stats its files. The results live in one SQLite file (stdlib, safe for concurrent readers and
writers such as several ranks or two runs) under ``$LIT_CONVNEXT_CACHE_DIR``, by default
``$XDG_CACHE_HOME/lit-convnext`` (``~/.cache/lit-convnext``), one column per field of a result (no text to
encode per file: that took 9 us of a small PNG's 140 us check). Deleting it only costs one full check.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

#: Bump when the per-file check changes what it finds, or which fields a result has: each version has its own
#: table, so older rows are never reused (nor read by an older version of the app sharing the file).
CHECK_VERSION = 5
FILE_NAME = "file_checks.sqlite"


def cache_dir() -> Path:
    """Where the cache lives (see the module docstring)."""
    configured = os.environ.get("LIT_CONVNEXT_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lit-convnext"


class CheckCache:
    """Check results by absolute path, each with the size and mtime of the file it describes.

    A result is a tuple of ``columns`` values that SQLite stores as they are (text, integers, ``None``; the
    checker encodes anything else); a decoded result also answers a header-only request, never the other way
    round.
    """

    def __init__(self, columns: Sequence[str], directory: Path | None = None) -> None:
        directory = directory or cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(directory / FILE_NAME, timeout=30)
        # A lost write only costs a re-check, so commits need not wait for the disk (home folders on network
        # filesystems make each sync slow).
        self._db.execute("PRAGMA synchronous = OFF")
        self._table = f"checks_v{CHECK_VERSION}"
        self._columns = ", ".join(f'"{name}"' for name in columns)
        self._db.execute(f"CREATE TABLE IF NOT EXISTS {self._table} (path TEXT PRIMARY KEY, size INTEGER, "
                         f"mtime_ns INTEGER, decoded INTEGER, {self._columns})")
        self._insert = (f"INSERT OR REPLACE INTO {self._table} VALUES "
                        f"({', '.join('?' * (4 + len(columns)))})")

    def lookup(self, paths: Sequence[str], header_only: bool) -> dict[str, tuple[int, int, tuple]]:
        """``{path: (size, mtime_ns, result)}`` for the absolute ``paths`` with a usable stored result; the caller
        compares size and mtime with the file's."""
        wanted = set(paths)
        if not wanted:
            return {}
        # One range scan of the primary key over the folder that holds them all, instead of a query per path.
        try:
            # The common folder of the first and last path in sort order is the common folder of them all.
            common = os.path.commonpath([min(wanted), max(wanted)]) if len(wanted) > 1 else os.path.dirname(next(iter(wanted)))
            low = common.rstrip(os.sep) + os.sep
            high = low[:-1] + chr(ord(os.sep) + 1)  # every string that starts with `low` sorts below this one
        except ValueError:  # no common folder (Windows paths on different drives): read every row
            low, high = "", chr(0x10FFFF)
        rows = self._db.execute(
            f"SELECT path, size, mtime_ns, {self._columns} FROM {self._table} WHERE path >= ? AND path < ? "
            "AND decoded >= ?", (low, high, int(not header_only)))
        return {row[0]: (row[1], row[2], row[3:]) for row in rows if row[0] in wanted}

    def store(self, entries: Iterable[tuple[str, int, int, tuple]], header_only: bool) -> None:
        """Save ``(absolute path, size, mtime_ns, result)`` entries."""
        decoded = int(not header_only)
        with self._db:
            self._db.executemany(self._insert, [(path, size, mtime_ns, decoded, *result)
                                                for path, size, mtime_ns, result in entries])

    def close(self) -> None:
        self._db.close()
