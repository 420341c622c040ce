"""Helpers shared by the tests: tiny synthetic image folders, fast CLI options, one-line-error checks."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: The smallest ConvNeXt timm has; tests train it at 32-64 px for a handful of steps.
TINY_MODEL = "convnext_atto"
#: This checkout: its configs/, README and lit_convnext (subprocesses import this copy, not an installed one).
REPO = Path(__file__).resolve().parents[1]


def write_image(path: Path, color: tuple[int, int, int], size: int = 32, seed: int = 0) -> Path:
    """A noisy image of a given dominant colour, so classes are learnable and files differ."""
    rng = np.random.default_rng(seed)
    base = np.array(color, dtype=np.int16)[None, None, :]
    noise = rng.integers(-30, 30, size=(size, size, 3))
    array = np.clip(base + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def make_folder(root: Path, per_class: int, classes: dict[str, tuple[int, int, int]] = COLORS, seed: int = 0) -> Path:
    for c, (name, color) in enumerate(classes.items()):
        for i in range(per_class):
            write_image(root / name / f"img{i}.png", color, seed=seed + 1000 * c + i)
    return root


#: CLI options for a fast CPU run of the smallest model at 32 px.
FAST = [
    "--model.model_name", TINY_MODEL, "--model.pretrained", "false",
    "--model.image_size", "32", "--data.batch_size", "8", "--data.num_workers", "0",
    "--trainer.accelerator", "cpu", "--progress_bar.refresh_rate", "0",
]


def fit_args(root: Path, *extra: str) -> list[str]:
    """``fit`` on ``root`` for one short epoch with the fast options."""
    return ["fit", "--data.root", str(root), "--trainer.max_epochs", "1", *FAST, *extra]


def one_line_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """Run the CLI with ``args``; assert it exits 2 with no traceback and return the last stderr line."""
    from lit_convnext.cli.entry import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lit-convnext: error:")]
    assert len(lines) == 1, err
    return lines[0]


@contextmanager
def lightning_info_lines() -> Iterator[list[str]]:
    """The info lines Lightning (and the app, through ``rank_zero_info``) log during the block, after the app's
    filters: its logger does not propagate to pytest's log capture, so a handler is put on it directly."""
    from lit_convnext.cli.terminal import LIGHTNING_INFO_LOGGER

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger(LIGHTNING_INFO_LOGGER)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
