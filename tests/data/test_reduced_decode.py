"""Reduced-size JPEG decoding: same pictures as full decoding after the transform, much less work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from lit_convnext.data.images import load_rgb
from lit_convnext.data.transforms import TrainAugmentation, eval_decode_size, train_decode_size

PREPROCESSING = {"input_size": [3, 64, 64], "crop_pct": 0.875, "interpolation": "bicubic"}


def photo_like_jpeg(path: Path, width: int, height: int, orientation: int | None = None, seed: int = 0) -> Path:
    """Smooth colour fields with fine grain, like a photo (not flat colours, which any decoder gets right)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 100 + 2, width // 100 + 2, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
    grain = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    picture = Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    picture.save(path, quality=90, exif=exif)
    return path


def _eval_pixels(image: Image.Image) -> torch.Tensor:
    size = PREPROCESSING["input_size"][-1]
    resize = int(size / PREPROCESSING["crop_pct"])
    return T.Compose([T.Resize(resize, T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor()])(image)


@pytest.mark.parametrize("orientation", [None, 6])
def test_reduced_decode_matches_full_decode_for_evaluation(tmp_path: Path, orientation: int | None) -> None:
    path = photo_like_jpeg(tmp_path / "big.jpg", 1600, 1200, orientation)
    min_size = eval_decode_size(PREPROCESSING)  # 74 px: 1/8 scale (150 px short side) is allowed
    full, reduced = load_rgb(path), load_rgb(path, min_size)
    expected_full = (1200, 1600) if orientation == 6 else (1600, 1200)
    assert full.size == expected_full
    assert reduced.size == (expected_full[0] // 8, expected_full[1] // 8)  # decoded at 1/8, rotated after
    difference = (_eval_pixels(reduced) - _eval_pixels(full)).abs().mean().item()
    assert difference < 0.01  # measured 0.0011 (pixel values 0..1)


def test_reduced_decode_never_goes_below_the_needed_short_side(tmp_path: Path) -> None:
    path = photo_like_jpeg(tmp_path / "big.jpg", 1000, 700)
    for min_size in (80, 88, 100, 200, 349, 350, 351, 700, 2000):
        decoded = load_rgb(path, min_size)
        assert min(decoded.size) >= min(min_size, 700)
        assert min(decoded.size) < 2 * min_size or decoded.size == (1000, 700)  # and takes the smallest fitting scale


def test_png_and_small_images_are_decoded_in_full(tmp_path: Path) -> None:
    png = tmp_path / "big.png"
    Image.new("RGB", (800, 600), (10, 20, 30)).save(png)
    assert load_rgb(png, 50).size == (800, 600)


def test_training_decode_size_keeps_the_smallest_crop_at_output_resolution() -> None:
    augmentation = TrainAugmentation(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    short = train_decode_size({"input_size": [3, 224, 224]}, augmentation)
    smallest_crop_short_side = (short * short * 0.08 * 3 / 4) ** 0.5
    assert smallest_crop_short_side >= 224
    assert train_decode_size({"input_size": [3, 224, 224]}, TrainAugmentation(scale=(1.0, 1.0), ratio=(1.0, 1.0))) == 224
