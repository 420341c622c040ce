"""Training and evaluation transforms, built by timm from the weights' preprocessing config.

Mean, std, interpolation and crop come from the model's pretrained config (see
``ConvNeXtClassifier.preprocessing``), never from constants here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import AugmentOp, RandAugment
from torchvision import transforms as T


#: Smallest crop area of the weak view: about the 12.5% translation of FixMatch's weak augmentation.
WEAK_MIN_SCALE = 0.75


#: Training augmentation that depends on the task (``None`` in :class:`TrainAugmentation`): the official ConvNeXt
#: fine-tuning values for one class per image; for multi-label images, values that keep what the labels name in
#: the image (a crop of 8% of the image, or an erased patch, can take a labelled object out while its label stays):
#: measured on 2x2 grids of digit scans, see docs/recipes.md, "Multi-label".
TASK_AUGMENTATION: dict[str, dict[str, Any]] = {
    "multiclass": {"scale": (0.08, 1.0), "random_erasing": 0.25},
    "multilabel": {"scale": (1.0, 1.0), "random_erasing": 0.0},
}


@dataclass(frozen=True)
class TrainAugmentation:
    """Training augmentation (timm's). Defaults follow the official ConvNeXt fine-tuning recipe; those marked
    *task* are ``None`` until :meth:`for_task` gives them the task's value (``TASK_AUGMENTATION``), so a value
    the user gives is kept.

    Args:
        scale: Random-resized-crop area range, as a fraction of the image; ``None``: the task's (*task*:
            ``[0.08, 1.0]`` multi-class, ``[1.0, 1.0]`` multi-label: the whole image).
        ratio: Random-resized-crop aspect-ratio range.
        hflip: Probability of a horizontal flip.
        vflip: Probability of a vertical flip.
        rand_augment: timm RandAugment policy string, or ``None`` for none.
        color_jitter: Colour-jitter strength; timm ignores it while RandAugment is on.
        random_erasing: Probability of random erasing; ``None``: the task's (*task*: 0.25 multi-class, 0
            multi-label).
        random_erasing_mode: ``pixel`` (per-pixel noise), ``rand`` (per-channel) or ``const``.
        enabled: ``false``: no augmentation at all; training images get the evaluation transform (the same tensor
            every epoch, which lets a frozen backbone's features be computed once: ``--model.freeze_backbone``).
    """

    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip: float = 0.5
    vflip: float = 0.0
    rand_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float | None = 0.4
    random_erasing: float | None = None
    random_erasing_mode: str = "pixel"
    enabled: bool = True

    def for_task(self, task: str) -> tuple["TrainAugmentation", dict[str, Any]]:
        """This augmentation with the task's values for the options left ``None``, and those of them whose value
        differs from the multi-class one (what a multi-label run changes, for its one-line notice)."""
        chosen = {name: value for name, value in TASK_AUGMENTATION[task].items() if getattr(self, name) is None}
        changed = {name: value for name, value in chosen.items() if value != TASK_AUGMENTATION["multiclass"][name]}
        return replace(self, **chosen), changed


def build_train_transform(preprocessing: dict[str, Any], augmentation: TrainAugmentation) -> T.Compose:
    """The training pipeline: random resized crop, flips, RandAugment, normalise, random erasing (options left to
    the task and not yet given theirs take the multi-class values)."""
    augmentation = augmentation.for_task("multiclass")[0]
    transform = create_transform(
        input_size=tuple(preprocessing["input_size"]),
        is_training=True,
        scale=augmentation.scale,
        ratio=augmentation.ratio,
        hflip=augmentation.hflip,
        vflip=augmentation.vflip,
        auto_augment=augmentation.rand_augment,
        color_jitter=augmentation.color_jitter,
        re_prob=augmentation.random_erasing,
        re_mode=augmentation.random_erasing_mode,
        interpolation=preprocessing["interpolation"],
        mean=tuple(preprocessing["mean"]),
        std=tuple(preprocessing["std"]),
    )
    _posterize_zero_bits_as_black(transform)
    return transform


def build_weak_transform(preprocessing: dict[str, Any], augmentation: TrainAugmentation) -> T.Compose:
    """The light view of an unlabelled image (what the model or a teacher labels it from): a mild random resized
    crop (at least three quarters of the image, or the training minimum if larger) and the training flips, without
    RandAugment or erasing."""
    augmentation = augmentation.for_task("multiclass")[0]
    return create_transform(
        input_size=tuple(preprocessing["input_size"]),
        is_training=True,
        scale=(max(WEAK_MIN_SCALE, min(augmentation.scale)), 1.0),
        ratio=augmentation.ratio,
        hflip=augmentation.hflip,
        vflip=augmentation.vflip,
        auto_augment=None,
        color_jitter=None,
        re_prob=0.0,
        interpolation=preprocessing["interpolation"],
        mean=tuple(preprocessing["mean"]),
        std=tuple(preprocessing["std"]),
    )


def build_eval_transform(preprocessing: dict[str, Any]) -> T.Compose:
    """The evaluation pipeline (validate, test, predict): resize, centre crop by ``crop_pct``, normalise."""
    return create_transform(
        input_size=tuple(preprocessing["input_size"]),
        is_training=False,
        interpolation=preprocessing["interpolation"],
        mean=tuple(preprocessing["mean"]),
        std=tuple(preprocessing["std"]),
        crop_pct=preprocessing["crop_pct"],
        crop_mode=preprocessing.get("crop_mode", "center"),
    )


def eval_decode_size(preprocessing: dict[str, Any]) -> int:
    """Short side an image needs for the evaluation transform: its resize target ``size / crop_pct``."""
    size = max(preprocessing["input_size"][1:])
    return math.ceil(size / preprocessing.get("crop_pct", 1.0))


def train_decode_size(preprocessing: dict[str, Any], augmentation: TrainAugmentation) -> int:
    """Short side an image needs so that even the smallest random-resized crop has >= output pixels.

    Conservative: the smallest crop (area ``scale[0]`` of the image, most extreme aspect ratio) of a
    *square* image of short side ``S`` has short side ``S * sqrt(scale[0] * min(ratio, 1/ratio))``;
    longer images give larger crops.
    """
    augmentation = augmentation.for_task("multiclass")[0]
    size = max(preprocessing["input_size"][1:])
    min_scale = max(min(augmentation.scale), 1e-6)
    aspect = min(min(augmentation.ratio), 1.0 / max(augmentation.ratio))
    return math.ceil(size / math.sqrt(min(min_scale, 1.0) * min(aspect, 1.0)))


class ZeroBitsAsBlack:
    """One posterize op of timm's RandAugment, giving a black image where Pillow refuses to keep 0 bits.

    timm's ``inc1`` policies ask for 0 bits at the top magnitude (m9 + noise reaches 10), and its plain ``Posterize``
    at magnitudes below 2.5. Pillow up to 12.x returned a black image for that, which is what the official ConvNeXt
    recipe trained with; Pillow 13 raises ``ValueError``, which crashed the loader worker a few percent into an
    epoch. The op itself is timm's, unchanged; this wrapper only takes its place in the policy's list of ops.
    """

    def __init__(self, op: AugmentOp) -> None:
        self.op = op
        self.name = op.name

    def __call__(self, img: Image.Image) -> Image.Image:
        try:
            return self.op(img)
        except ValueError:  # Pillow >= 13: "bits must be between or equal to 1 and 8"
            return Image.new(img.mode, img.size)

    def __repr__(self) -> str:
        return repr(self.op)


def _posterize_zero_bits_as_black(transform: T.Compose) -> None:
    """Put :class:`ZeroBitsAsBlack` in place of each posterize op of the transform's RandAugment."""
    for step in transform.transforms:
        if isinstance(step, RandAugment):
            step.ops = [ZeroBitsAsBlack(op) if op.name.startswith("Posterize") else op for op in step.ops]
