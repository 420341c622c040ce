"""Images without labels beside the labelled folder (``--data.unlabeled_root``), and the training batch that
carries them.

A folder of unlabelled photos (typically many, from where the model will be used) feeds two kinds of training:
a teacher labels them (distillation, ``--model.teacher``), or the model labels them itself from a lightly
augmented view and learns from a strongly augmented one (semi-supervised, FixMatch-style). Both read the same
batches, so this module owns their shape: with an unlabelled folder, each training batch is a dict

``{"labeled": (images, targets), "unlabeled": {"weak": images, "strong": images, "index": indices}}``

where ``index`` maps each row back to :attr:`UnlabeledPool.paths`. Without one it is the usual
``(images, targets)``: :func:`split_training_batch` gives a training step both parts either way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import RandomSampler

from lit_convnext.data.datasets import Transform, _ImageFiles
from lit_convnext.data.folders import iter_images
from lit_convnext.errors import UserError

log = logging.getLogger(__name__)

LabeledBatch = tuple[torch.Tensor, torch.Tensor]
UnlabeledBatch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class UnlabeledPool:
    """The unlabelled images found, and how many of the folder's images were left out as already labelled."""

    root: Path
    paths: list[Path]
    left_out: int


def find_unlabeled_images(root: Path, labelled: Iterable[Path | str], option: str = "--data.unlabeled_root"
                          ) -> UnlabeledPool:
    """The images below ``root`` (searched recursively) that are not among ``labelled``, compared by their real
    paths (an unlabelled folder that holds or links to the training images must not teach the model its own
    labels back). Raises :class:`UserError` for a missing folder or one with no image left; ``option`` names the
    option in that message."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{option} {root} does not exist or is not a folder: pass a folder of images (searched "
                        "recursively)")
    known = {os.path.realpath(path) for path in labelled}
    found = list(iter_images(root))
    paths = [path for path in found if os.path.realpath(path) not in known]
    if not found:
        raise UserError(f"{option} {root} contains no images (searched recursively): point it at a folder of "
                        "images, or leave it out")
    if not paths:
        raise UserError(f"all {len(found)} images under {option} {root} are already labelled images of the run: "
                        "point it at images without labels, or leave it out")
    if len(paths) < len(found):
        log.warning("%s: left out %d of the %d images under %s, which are already labelled images of the run",
                    option, len(found) - len(paths), len(found), root)
    return UnlabeledPool(root, paths, len(found) - len(paths))


class TwoViewImages(_ImageFiles):
    """Unlabelled images as two augmented views of the same decoded picture: yields
    ``{"weak": tensor, "strong": tensor, "index": int}``.

    A file that cannot be decoded is replaced by the next readable one: such files were already listed and left
    out by the check before training (``--data.check_files``), so this only covers a file that changed since.
    """

    def __init__(self, paths: Sequence[Path], weak: Transform, strong: Transform,
                 decode_min_size: int | None = None) -> None:
        self.paths = list(paths)
        self.weak = weak
        self.strong = strong
        self.decode_min_size = decode_min_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.paths)):
            candidate = (index + offset) % len(self.paths)
            image, reason = self.decode(self.paths[candidate])
            if image is not None:
                return {"weak": self.weak(image), "strong": self.strong(image), "index": candidate}
            if offset == 0:
                log.warning("skipping unlabelled image %s, which cannot be read now (%s)", self.paths[candidate],
                            reason)
        raise UserError(f"no image under --data.unlabeled_root can be read (the first is {self.paths[index]})")


def unlabeled_sampler(pool_size: int, labelled_batches: int, batch_size: int, world_size: int) -> RandomSampler:
    """Draws enough unlabelled images for every labelled batch of an epoch on every device (a few more, so the
    labelled loader, not this one, ends the epoch), reshuffling the pool each time it is used up: an epoch is one
    pass over the labelled images however large the unlabelled folder is. Its own generator: the training loader
    re-seeds it every epoch (:class:`~lit_convnext.data.resumable.EpochSeededSampler`)."""
    return RandomSampler(range(pool_size), replacement=False,
                         num_samples=(labelled_batches + world_size) * batch_size, generator=torch.Generator())


def split_training_batch(batch: LabeledBatch | dict[str, Any]) -> tuple[LabeledBatch, UnlabeledBatch | None]:
    """``((images, targets), unlabelled part or None)`` of a training batch of either shape (module docstring)."""
    if isinstance(batch, dict):
        return batch["labeled"], batch["unlabeled"]
    return batch, None
