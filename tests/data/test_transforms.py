"""Transforms follow the stored preprocessing, and the official RandAugment policy never crashes."""

from __future__ import annotations


import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import AugmentOp

from lit_convnext.data.transforms import TrainAugmentation, build_eval_transform, build_train_transform

#: Deliberately not ImageNet's statistics: the transforms must take whatever the weights say.
PREPROCESSING = {
    "input_size": [3, 32, 32],
    "interpolation": "bicubic",
    "mean": [0.5, 0.25, 0.0],
    "std": [0.5, 0.25, 1.0],
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def test_eval_transform_uses_the_stored_mean_std_and_size() -> None:
    image = Image.new("RGB", (80, 60), (255, 0, 128))
    tensor = build_eval_transform(PREPROCESSING)(image)
    assert tensor.shape == (3, 32, 32)
    expected = torch.tensor([(1.0 - 0.5) / 0.5, (0.0 - 0.25) / 0.25, (128 / 255 - 0.0) / 1.0])
    assert torch.allclose(tensor[:, 16, 16], expected, atol=1e-3)


def test_zero_bit_posterize_gives_black_instead_of_raising() -> None:
    """timm's top-magnitude posterize asks Pillow for 0 bits, which Pillow 13 refuses: the app's op gives black."""
    transform = build_train_transform(PREPROCESSING, TrainAugmentation())
    rand_augment = next(t for t in transform.transforms if type(t).__name__ == "RandAugment")
    posterize = next(o for o in rand_augment.ops if o.name == "PosterizeIncreasing")
    zero_bits = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)  # 4 - 4 = 0 bits
    image = Image.new("RGB", (8, 8), (200, 100, 50))
    assert np.asarray(type(posterize)(zero_bits)(image)).max() == 0
    one_bit = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=8)  # 4 - 3 = 1 bit: timm's op, unchanged
    assert np.asarray(type(posterize)(one_bit)(image))[0, 0].tolist() == [128, 0, 0]
