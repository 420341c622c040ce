"""Samplers: unpadded evaluation under several processes, and class-balanced training draws.

Lightning's default ``DistributedSampler`` pads the evaluation set so every rank gets the same
number of batches: with an odd number of images some are counted twice in the metrics. Evaluation
loaders use Lightning's ``UnrepeatedDistributedSampler`` instead (each image on exactly one rank);
torchmetrics then sums the per-rank states, so metrics match a single-device run.

The balanced sampler (``--data.sampler balanced``) draws training images with replacement with probability
``1 / n_class`` each, so every class is equally likely per draw; an epoch keeps the dataset's length. Under DDP,
Lightning wraps it in its ``DistributedSamplerWrapper`` (``use_distributed_sampler``, on by default): every rank
builds the same seeded sampler and takes a disjoint share of its draws.
"""

from __future__ import annotations

from collections.abc import Sequence

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
