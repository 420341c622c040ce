"""Resuming interrupted runs: find the newest ``last.ckpt`` and write checkpoints atomically.

``fit --ckpt_path last`` in Lightning only looks in the current run's directory, but every CLI run
gets a new ``runs/<name>/version_N``; the CLI therefore resolves ``last`` here to the newest run's
``last.ckpt`` and keeps logging into that run's directory, so ModelCheckpoint's best-k bookkeeping
(restored from the checkpoint) still points at files that exist.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lit_convnext.errors import UserError

LAST_NAME = "last.ckpt"


def newest_last_checkpoint(save_dir: Path, name: str) -> Path:
    """The most recently written ``<save_dir>/<name>/version_*/checkpoints/last.ckpt``."""
    candidates = [p for p in (Path(save_dir) / name).glob(f"*/checkpoints/{LAST_NAME}") if p.is_file()]
    if not candidates:
        raise UserError(
            f"--ckpt_path last: no run under {Path(save_dir) / name} has checkpoints/{LAST_NAME}; "
            "pass the path of a .ckpt file instead"
        )
    return max(candidates, key=lambda p: p.stat().st_mtime)


def run_version(checkpoint: Path) -> str:
    """The version directory name (``version_3``) that holds ``.../version_3/checkpoints/x.ckpt``."""
    return checkpoint.parent.parent.name


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each local checkpoint to a temporary file and rename it into place.

    A process killed mid-save (SIGKILL, node preemption) then leaves the previous ``last.ckpt`` intact
    instead of a truncated file. Remote paths (``s3://`` ...) go through Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        try:
            super().save_checkpoint(checkpoint, temp, storage_options)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
