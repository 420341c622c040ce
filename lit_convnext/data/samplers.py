"""Samplers: unpadded evaluation under several processes, and class-balanced training draws.

Lightning's default ``DistributedSampler`` pads the evaluation set so every rank gets the same
number of batches: with an odd number of images some are counted twice in the metrics. Evaluation
loaders use Lightning's ``UnrepeatedDistributedSampler`` instead (each image on exactly one rank);
torchmetrics then sums the per-rank states, so metrics match a single-device run.

The balanced sampler (``--data.sampler balanced``) draws training images with replacement with probability
``1 / n_class`` each, so every class is equally likely per draw; an epoch keeps the dataset's length. Under DDP,
Lightning wraps it in its ``DistributedSamplerWrapper`` (``use_distributed_sampler``, on by default): every rank
builds the same seeded sampler and takes a disjoint share of its draws.

The replay sampler (``--data.sampler replay``, chosen by ``auto`` when ``--model.pretrained`` weights gained new
classes by name) follows OTX's class-incremental rule: old-class images are drawn sqrt(old/new) times as often as
new-class images, counted in images, instead of old/new times as in plain shuffling. With 900 old and 100 new
images a batch holds about 3 old images per new one instead of 9, so the new classes' fresh rows learn fast while
the old classes keep being replayed (see docs/new-classes.md for what it measured).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler

from lit_convnext.private_api.lightning import UnrepeatedDistributedSampler


def eval_sampler(dataset: Dataset, trainer: pl.Trainer | None) -> Sampler | None:
    """An unpadded per-rank sampler under multi-process runs; ``None`` (plain sequential) otherwise."""
    if trainer is None or trainer.world_size <= 1:
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                        shuffle=False)


def balanced_sampler(targets: Sequence[int] | torch.Tensor, seed: int) -> WeightedRandomSampler:
    """Draw ``len(targets)`` indices with replacement, every class equally likely (seeded, same on every rank).

    Multi-hot targets (multi-label): an image is drawn with the mean of ``1 / n_class`` over its classes, so
    images of rare classes come up more often (classes that co-occur cannot be balanced exactly).
    """
    targets = torch.as_tensor(targets)
    if targets.ndim == 2:
        per_class = 1.0 / targets.sum(0).clamp(min=1).double()
        weights = (targets.double() @ per_class) / targets.sum(1).clamp(min=1).double()
    else:
        counts = torch.bincount(targets)
        weights = 1.0 / counts[targets].double()
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(weights, num_samples=len(targets), replacement=True, generator=generator)


def replay_groups(targets: Sequence[int] | torch.Tensor, new_classes: Sequence[int], num_classes: int) -> torch.Tensor:
    """Which images are new-class images (multi-label: any of their classes is new), as a boolean mask."""
    targets = torch.as_tensor(targets)
    new = torch.zeros(num_classes, dtype=torch.bool)
    new[torch.as_tensor(list(new_classes), dtype=torch.long)] = True
    return (targets.bool() & new).any(1) if targets.ndim == 2 else new[targets]


def replay_sampler(is_new: torch.Tensor, seed: int) -> WeightedRandomSampler:
    """Draw ``len(is_new)`` indices with replacement, old-class and new-class images in the ratio sqrt(old/new)
    (each image equally likely within its group; both groups must hold images)."""
    n_new = int(is_new.sum())
    n_old = len(is_new) - n_new
    # Group weights old:new = sqrt(n_old / n_new), spread evenly over each group's images.
    weights = torch.where(is_new, 1.0 / n_new, math.sqrt(n_old / n_new) / n_old).double()
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(weights, num_samples=len(is_new), replacement=True, generator=generator)


def added_classes(model: Any) -> list[str]:
    """The classes ``--model.pretrained`` weights gained by name (their rows new in the head), from the model's load
    report; empty for any other start."""
    report = getattr(model, "load_report", None)
    if not isinstance(report, Mapping) or report.get("head") != "by_name":
        return []
    return list(report.get("classes_added") or [])
