"""The progress bar: Lightning's Rich bar, drawn between steps and with the shown metrics read at most once per
interval.

Reading a logged metric for display copies it from the accelerator, which waits for the step's
kernels to finish. Lightning's Rich bar does that after every training batch, so the GPU idles
while the host renders the bar, runs the callbacks and starts the next step. Here the batch counter
still moves every step; the metrics (the loss) are read every ``metrics_interval`` seconds, and at
every epoch and validation end as before. The bar is drawn by the training thread itself, at most
``refresh_rate`` times a second, not by a thread of Rich's that wakes up that often (see
:meth:`ThrottledRichProgressBar._init_progress`).
"""


import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import (
    CustomBarColumn,
    ProcessingSpeedColumn,
    RichProgressBarTheme,
)

from lit_convnext.ranges import NonNegativeFloat, NonNegativeInt


#: The metrics the bar shows, under short names so that the bar stays one 80-column line (Lightning's own bar
#: lists every prog_bar metric in ~18 columns: eight wrapped lines); TensorBoard and the logs have all of them.
SHOWN_METRICS = {"train/loss_step": "loss", "val/acc1": "val_acc1", "val/map": "val_map"}
#: Width of the bar itself (Lightning's is 40).
BAR_WIDTH = 12


class ThrottledRichProgressBar(RichProgressBar):
    """Rich progress bar whose training metrics are refreshed at most every ``metrics_interval`` seconds.

    Args:
        refresh_rate: Most screen updates per second; ``0`` turns the bar off (e.g. for batch jobs). The bar is
            drawn between steps (a step longer than ``1 / refresh_rate`` seconds updates it once).
        leave: Keep each finished epoch's bar on screen.
        theme: Colours and number format.
        console_kwargs: Arguments for Rich's ``Console``.
        metrics_interval: Seconds between reads of the displayed training metrics (each read makes the
            host wait for the accelerator); ``0`` reads them after every batch like Lightning's bar.
    """

    def __init__(
        self,
        refresh_rate: NonNegativeInt = 2,
        leave: bool = False,
        theme: RichProgressBarTheme = RichProgressBarTheme(),
        console_kwargs: dict[str, Any] | None = None,
        metrics_interval: NonNegativeFloat = 1.0,
    ) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave, theme=theme, console_kwargs=console_kwargs)
        self.redraw_interval = 1.0 / refresh_rate if refresh_rate else float("inf")
        self._drawn_at = float("-inf")
        self.metrics_interval = metrics_interval
        self._in_train_batch = False
        self._metrics_read_at = float("-inf")
        self._shown: dict[str, Any] | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._in_train_batch = True
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            self._in_train_batch = False

    def _init_progress(self, trainer: pl.Trainer) -> None:
        super()._init_progress(trainer)
        # Rich's Live draws from a thread that wakes refresh_rate times a second. On a machine whose cores the
        # step's threads fill, each wake-up can hold them all up for a scheduler slice (convnext_atto on 2 CPU
        # cores: steps 3% slower at 10 wake-ups a second, 5% at 100); and Lightning's version of the thread
        # sleeps without being woken, so stopping the bar waited up to 1/refresh_rate seconds. The bar is drawn
        # by refresh() below instead, between steps, in this thread.
        live = getattr(self.progress, "live", None)
        thread = getattr(live, "_refresh_thread", None)
        if thread is not None:
            thread.stop()  # it ends after its current sleep; nothing waits for it
            live._refresh_thread = None
            live.auto_refresh = False

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning drops what the sanity check logged; the bar forgets it too (else its val_acc1 would show
        # until the first read of the training metrics, as if it were a validation's).
        self._shown = None
        super().on_sanity_check_end(trainer, pl_module)

    def refresh(self, hard: bool = False) -> None:
        """Draw the bar, at most ``refresh_rate`` times a second (Lightning asks after every batch and hook) unless
        ``hard``. Stopping the bar, at the end of a run, draws its last state."""
        now = time.monotonic()
        if self.progress is not None and (hard or now - self._drawn_at >= self.redraw_interval):
            self._drawn_at = now
            self.progress.refresh()

    def configure_columns(self, trainer: pl.Trainer) -> list:
        # Lightning's columns with a shorter bar and without the it/s column, which leaves the metrics room.
        columns = [c for c in super().configure_columns(trainer) if not isinstance(c, ProcessingSpeedColumn)]
        for column in columns:
            if isinstance(column, CustomBarColumn):
                column.bar_width = BAR_WIDTH
        return columns

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The shown metrics under short names; inside a training batch, the last ones read until
        ``metrics_interval`` has passed (each read waits for the accelerator)."""
        now = time.monotonic()
        if self._in_train_batch and self._shown is not None and now - self._metrics_read_at < self.metrics_interval:
            return self._shown
        self._metrics_read_at = now
        metrics = super().get_metrics(trainer, pl_module)
        self._shown = {short: metrics[name] for name, short in SHOWN_METRICS.items() if name in metrics}
        return self._shown
