"""Warn when training steps spend a large share of their time waiting for the data loader.

Host-side wall-clock only (``time.perf_counter`` in callback hooks, no CUDA synchronisation), so it
costs nothing measurable per step. On a GPU the host runs ahead of the device and blocks inside the
step when the GPU is the bottleneck, so a large share of time *between* steps means the loader is.
"""


import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

from lit_convnext.ranges import OpenFraction, PositiveInt


class DataWaitMonitor(pl.Callback):
    """Measure time between training batches vs time inside them; warn once if the loader is the bottleneck.

    Each epoch is judged on its own steps: the counts start again at every epoch, so a loader that slows down later
    (a cache that no longer fits, another job on the disk) is not hidden by the fast epochs before it.

    Args:
        threshold: Warn when this share of an epoch's training time (0-1) is spent waiting for batches.
        min_steps: Training steps of the epoch measured (after its first batch) before judging.
    """

    def __init__(self, threshold: OpenFraction = 0.3, min_steps: PositiveInt = 20) -> None:
        self.threshold = threshold
        self.min_steps = min_steps
        self.wait = 0.0
        self.busy = 0.0
        self.steps = 0
        self.warned = False
        self._batch_end: float | None = None
        self._batch_start: float | None = None

    @property
    def wait_share(self) -> float:
        total = self.wait + self.busy
        return self.wait / total if total > 0 else 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.wait, self.busy, self.steps = 0.0, 0.0, 0
        self._batch_end = None  # the first batch of an epoch includes loader start-up: not counted

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batch_end = None  # a validation run between two training batches is not waiting on data

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        now = time.perf_counter()
        # A step is measured from the previous step's end to its own end, wait and work alike; the epoch's first
        # step and the first after a validation have no previous end and are left out whole.
        self._batch_start = None
        if self._batch_end is not None:
            self.wait += now - self._batch_end
            self.steps += 1
            self._batch_start = now

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        if self._batch_start is not None:
            self.busy += now - self._batch_start
        self._batch_end = now
        if not self.warned and self.steps >= self.min_steps and self.wait_share >= self.threshold:
            self.warned = True
            rank_zero_warn(self.advice(trainer))

    def advice(self, trainer: pl.Trainer) -> str:
        loader = trainer.train_dataloader
        workers = getattr(loader, "num_workers", None)
        datamodule = trainer.datamodule
        tips = [f"raise --data.num_workers (now {workers}) up to the number of CPU cores"]
        if getattr(datamodule, "reduced_decode", True) is False:
            tips.append("turn --data.reduced_decode back on (decodes large JPEGs at 1/2-1/8 size)")
        tips.append("store the images smaller (e.g. short side 2x the training size) or on a faster disk")
        tips.append("lighten the augmentation (--data.augmentation.rand_augment null)")
        return (f"Training steps waited for data {self.wait_share:.0%} of the time over the first {self.steps} "
                f"steps of epoch {trainer.current_epoch}: the data loader is the bottleneck. Try: "
                + "; ".join(tips) + ".")
