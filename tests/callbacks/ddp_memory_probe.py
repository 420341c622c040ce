"""``python -m tests.callbacks.ddp_memory_probe fit ...``: the CLI with a CPU that runs out of "CUDA" memory.

Test-only. Lightning's DDP launcher starts the other ranks by running this same module again, so every rank gets
the same stand-ins: ``searches_memory`` is true on the CPU, and a training step of more images than the rank's
``FITS`` (the rank is ``LOCAL_RANK``, which the launcher sets) raises ``torch.OutOfMemoryError`` as CUDA would. The
ranks differ, so ``--data.batch_size auto`` must take the smallest rank's batch.
"""

from __future__ import annotations

import os

import torch

from lit_convnext.callbacks import batch_size as auto_batch
from lit_convnext.cli.entry import main
from lit_convnext.model.classifier import ConvNeXtClassifier

#: The largest batch each rank's "device" trains.
FITS = {0: 20, 1: 9}
_training_step = ConvNeXtClassifier.training_step


def _runs_out_above(self, batch, batch_idx):
    fits = FITS[int(os.environ.get("LOCAL_RANK", "0"))]
    if batch[0].shape[0] > fits:
        raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {batch[0].shape[0]} images")
    return _training_step(self, batch, batch_idx)


if __name__ == "__main__":
    auto_batch.searches_memory = lambda trainer: True
    ConvNeXtClassifier.training_step = _runs_out_above
    main()
