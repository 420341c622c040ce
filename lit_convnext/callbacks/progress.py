"""The progress bar: Lightning's own tqdm bar, showing a few metrics under short names.

Reading a logged metric for display copies it from the accelerator, which waits for the step's kernels to finish.
Lightning's tqdm bar reads the metrics only when it redraws, every ``refresh_rate`` batches (and at each epoch and
validation end), so a bar that redraws every 10 batches makes the host wait once in 10 steps instead of every step.
"""

# No ``from __future__ import annotations``: jsonargparse reads the range constraints (``NonNegativeInt``) from the
# evaluated annotations.
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_warn

from lit_convnext.ranges import NonNegativeInt

#: The metrics the bar shows, under short names so that the bar stays one line (Lightning's bar lists every
#: prog_bar metric, and the version number); TensorBoard and the logs have all of them.
SHOWN_METRICS = {"train/loss_step": "loss", "val/acc1": "val_acc1", "val/map": "val_map"}


class CompactProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar with the loss and the validation score only.

    Args:
        refresh_rate: Redraw the bar (and read the shown metrics, a wait for the accelerator) every this many
            batches; ``0`` turns the bar off (e.g. for batch jobs).
        leave: Keep each finished epoch's bar on screen.
        process_position: Lines the bar is moved down by, below other bars of the same terminal.
        metrics_interval: No longer used (the Rich bar of earlier versions read the metrics every this many
            seconds); accepted so that the ``config.yaml`` of earlier runs still loads, with a warning.
        theme: No longer used (the Rich bar's colours); accepted like ``metrics_interval``.
        console_kwargs: No longer used (the Rich bar's console); accepted like ``metrics_interval``.
    """

    def __init__(
        self,
        refresh_rate: NonNegativeInt = 10,
        leave: bool = False,
        process_position: NonNegativeInt = 0,
        metrics_interval: float | None = None,
        theme: dict[str, Any] | None = None,
        console_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        given = {"metrics_interval": metrics_interval, "theme": theme, "console_kwargs": console_kwargs}
        self.unused_options = [f"--progress_bar.{name}" for name, value in given.items() if value is not None]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.unused_options:
            rank_zero_warn(f"{', '.join(self.unused_options)}: no longer used (the progress bar is Lightning's tqdm "
                           "bar, which reads the metrics every --progress_bar.refresh_rate batches); leave it out of "
                           "the config")
            self.unused_options = []

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The shown metrics under short names (called by the bar at its redraws only)."""
        metrics = super().get_metrics(trainer, pl_module)
        return {short: metrics[name] for name, short in SHOWN_METRICS.items() if name in metrics}
