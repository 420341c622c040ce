"""Shared fixtures: tiny synthetic image folders in ``tmp_path`` and an isolated working directory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: The smallest ConvNeXt timm has; tests train it at 32-64 px for a handful of steps.
TINY_MODEL = "convnext_atto"


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


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """``root/train`` (8 per class) and ``root/val`` (4 per class), three colour classes."""
    root = tmp_path / "images"
    make_folder(root / "train", 8)
    make_folder(root / "val", 4, seed=500)
    return root


#: CLI options for a fast CPU run of the smallest model at 32 px.
FAST = [
    "--model.model_name", TINY_MODEL, "--model.pretrained", "false",
    "--data.image_size", "32", "--data.batch_size", "8", "--data.num_workers", "0",
    "--trainer.accelerator", "cpu", "--progress_bar.refresh_rate", "0",
]


@pytest.fixture(scope="session")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real two-epoch fit, shared by the tests that only read its outputs."""
    base = tmp_path_factory.mktemp("fitted")
    root = base / "images"
    make_folder(root / "train", 8)
    make_folder(root / "val", 4, seed=500)
    make_folder(root / "test", 2, seed=900)
    previous = Path.cwd()
    os.chdir(base)
    try:
        from lit_convnext.cli import main

        main(["fit", "--data.root", str(root), "--trainer.max_epochs", "2", *FAST])
    finally:
        os.chdir(previous)
    run = base / "runs" / "convnext" / "version_0"
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    return {"base": base, "root": root, "run": run, "best": best}


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in its own directory so runs/ and predictions never land in the repository."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
