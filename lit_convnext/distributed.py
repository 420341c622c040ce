"""Multi-process evaluation without duplicates.

Lightning's default ``DistributedSampler`` pads the evaluation set so every rank gets the same
number of batches: with an odd number of images some are counted twice in the metrics. Evaluation
loaders use Lightning's ``UnrepeatedDistributedSampler`` instead (each image on exactly one rank);
torchmetrics then sums the per-rank states, so metrics match a single-device run.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, Sampler


def eval_sampler(dataset: Dataset, trainer: pl.Trainer | None) -> Sampler | None:
    """An unpadded per-rank sampler under multi-process runs; ``None`` (plain sequential) otherwise."""
    if trainer is None or trainer.world_size <= 1:
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                        shuffle=False)
