"""Generated photo-like JPEG folders for the benchmarks (smooth colour fields plus grain, not flat colours)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(REPO))


def photo_like(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Smooth random colour fields with fine grain: compresses and decodes like a camera photo."""
    coarse = Image.fromarray(rng.integers(0, 256, (height // 150 + 2, width // 150 + 2, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
    grain = rng.integers(-10, 11, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def make_photo_folder(root: Path, width: int, height: int, count: int, classes: int = 2, seed: int = 0) -> Path:
    """``root/<class>/<i>.jpg`` (``count`` images in all); reused when already there."""
    marker = root / f".done-{width}x{height}-{count}-{classes}"
    if marker.exists():
        return root
    rng = np.random.default_rng(seed)
    for i in range(count):
        path = root / f"class{i % classes}" / f"{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo_like(width, height, rng).save(path, quality=90)
    marker.touch()
    return root
