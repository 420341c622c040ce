"""Remember each file's check result by path, size and modification time, so a folder is checked once.

Decoding every image before each run costs seconds to minutes on large folders; a file whose size and
modification time are unchanged gives the same result, so the second ``fit`` or ``doctor`` over the same
folder only stats its files. The results live in one SQLite file (stdlib, safe for concurrent readers and
writers such as several ranks or two runs) under ``$LIT_CONVNEXT_CACHE_DIR``, by default
``$XDG_CACHE_HOME/lit-convnext`` (``~/.cache/lit-convnext``). Deleting it only costs one full check.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

#: Bump when the per-file check changes what it finds, so older results are not reused.
CHECK_VERSION = 2
FILE_NAME = "file_checks.sqlite"


def cache_dir() -> Path:
    """Where the cache lives (see the module docstring)."""
    configured = os.environ.get("LIT_CONVNEXT_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lit-convnext"


def file_key(path: str) -> tuple[str, int, int] | None:
    """``(absolute path, size, mtime_ns)``, or ``None`` when the file cannot be stat'ed (never cached)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return os.path.abspath(path), stat.st_size, stat.st_mtime_ns


class CheckCache:
    """Check results keyed by :func:`file_key`; a decoded result also answers a header-only request."""

    def __init__(self, directory: Path | None = None) -> None:
        directory = directory or cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(directory / FILE_NAME, timeout=30)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS checks (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
            "version INTEGER, decoded INTEGER, result TEXT)"
        )

    def lookup(self, keys: Iterable[tuple[str, int, int]], header_only: bool) -> dict[str, dict]:
        """Stored results (as dicts) for the keys whose file is unchanged, by absolute path."""
        found: dict[str, dict] = {}
        wanted = {key[0]: key for key in keys}
        names = list(wanted)
        for start in range(0, len(names), 500):  # SQLite's limit on bound parameters
            part = names[start : start + 500]
            rows = self._db.execute(
                f"SELECT path, size, mtime_ns, version, decoded, result FROM checks "
                f"WHERE path IN ({','.join('?' * len(part))})", part)
            for path, size, mtime_ns, version, decoded, result in rows:
                if (path, size, mtime_ns) == wanted[path] and version == CHECK_VERSION and (decoded or header_only):
                    found[path] = json.loads(result)
        return found

    def store(self, entries: Iterable[tuple[tuple[str, int, int], dict]], header_only: bool) -> None:
        """Save ``(key, result)`` pairs."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO checks VALUES (?, ?, ?, ?, ?, ?)",
                [(*key, CHECK_VERSION, int(not header_only), json.dumps(result)) for key, result in entries],
            )

    def close(self) -> None:
        self._db.close()
