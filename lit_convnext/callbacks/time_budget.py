"""Fit the learning-rate schedule to ``--trainer.max_time``, so a run with a time budget still anneals.

Lightning's ``max_time`` adds a ``Timer`` that stops training when the time is up, wherever the schedule is: a
cosine planned for ``max_epochs`` is cut off at a high learning rate, mid-epoch, without a last validation. As
Ultralytics' ``time=`` does, :class:`TimeBudget` measures each epoch (training, validation and checkpoint together)
and, at its end, plans how many more whole epochs fit in what is left of the budget, less a reserve for what follows
the last one (the end-of-fit analysis); it then ends training after those epochs (the fit loop's ``max_epochs``) and
re-plans the warm-up + cosine (:func:`lit_convnext.model.optim.build_scheduler`) to reach ``min_lr`` at their last
step. Lightning's Timer stays as the hard stop, should an epoch take far longer than the ones measured.

A budget too short for one epoch is one line a few steps into the first epoch (:class:`BudgetTooShort`): the steps
measured so far, times the epoch's steps, would not end in it, and Lightning's Timer would stop the run mid-epoch
with nothing validated. The check reads the clock (and, under DDP, broadcasts one flag once): a budget that fits
pays nothing measurable for it.

The budget counts as Lightning's Timer counts it, from the first training step's loop start (not the file check or
the sanity validation before it); ``max_epochs`` stays an upper bound (whichever ends first, as in Lightning).
"""

from __future__ import annotations

import math
import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.utilities import rank_zero_info

from lit_convnext.errors import UserError
from lit_convnext.model.optim import build_scheduler, warmup_steps_for
from lit_convnext.ranges import NonNegativeFloat

#: An epoch is planned as this much longer than the longest one measured: the shared machine's noise.
EPOCH_MARGIN = 1.1
#: The first epoch's steps timed before the budget is compared with one epoch (the first step, slower, is not
#: counted in the rate).
MEASURED_STEPS = 3


class BudgetTooShort(UserError):
    """The time budget cannot hold one training epoch, as measured over the first steps of the first one."""

    def __init__(self, budget: float, epoch: float, steps: int, option: str = "--trainer.max_time") -> None:
        self.budget, self.epoch, self.steps = budget, epoch, steps
        super().__init__(f"{option} {budget:.0f} s is shorter than one epoch: the first steps took "
                         f"{epoch / steps:.2f} s each, so its {steps} steps need about {epoch:.0f} s before any "
                         f"validation; give at least {2 * epoch + 10:.0f} s, or train fewer or smaller images "
                         "(--model.image_size)")


class TimeBudget(Callback):
    """Re-plan the epochs and the warm-up + cosine schedule at each epoch's end so training ends, annealed to
    ``min_lr`` and validated, within the Trainer's ``max_time`` (inert without it).

    Args:
        reserve: Seconds kept after the last epoch for the end-of-fit analysis (per-image results, calibration,
            label issues, ``report.html``), on top of one validation's measured time (the analysis may validate
            the best checkpoint once more). ``None`` keeps 5% of the budget, at least 10 s (a 3-class 32 px run
            on 2 shared CPU cores took 5.8 s for the best checkpoint's validation results and 4.6 s for the report).
    """

    def __init__(self, reserve: NonNegativeFloat | None = None) -> None:
        self.reserve = reserve
        self._epoch_start: float | None = None
        self._validation_start: float | None = None
        self._longest_epoch = 0.0
        self._validation = 0.0
        self._planned: int | None = None
        self._first_step_end: float | None = None

    @staticmethod
    def timer(trainer: pl.Trainer) -> Timer | None:
        """The Trainer's Timer with a duration (``max_time``), or ``None``."""
        found = [c for c in trainer.callbacks if isinstance(c, Timer) and c.time_remaining() is not None]
        return found[0] if found else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.timer(trainer) is None:
            return
        if trainer.max_epochs in (None, -1) and trainer.max_steps == -1:
            raise UserError("--trainer.max_time with --trainer.max_epochs -1: the schedule of the first epoch needs "
                            "an end; pass --trainer.max_epochs N, the most epochs the budget may run (the budget "
                            "then shortens the run to what fits, and the schedule anneals at its end)")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if trainer.current_epoch != 0 or batch_idx > MEASURED_STEPS or self._epoch_start is None:
            return
        timer = self.timer(trainer)
        steps = trainer.num_training_batches
        if timer is None or not math.isfinite(steps) or steps <= MEASURED_STEPS + 1:
            return
        now = time.monotonic()
        if batch_idx == 0:
            self._first_step_end = now
            return
        if batch_idx < MEASURED_STEPS:
            return
        per_step = (now - self._first_step_end) / batch_idx
        epoch = (now - self._epoch_start) + per_step * (steps - batch_idx - 1)
        # Every process stops, or none: rank 0's clock decides (the ranks step together).
        short = bool(trainer.strategy.broadcast(epoch > (now - self._epoch_start) + timer.time_remaining(), src=0))
        if short:
            raise BudgetTooShort(timer.time_elapsed() + timer.time_remaining(), epoch, int(steps))

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validation_start is not None and not trainer.sanity_checking:
            self._validation = max(self._validation, time.monotonic() - self._validation_start)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        timer = self.timer(trainer)
        if timer is None or self._epoch_start is None:
            return
        # Measured here, after the validation and the checkpoint of this epoch (saved when its validation ended).
        self._longest_epoch = max(self._longest_epoch, time.monotonic() - self._epoch_start)
        reserve = self._validation + (self.reserve if self.reserve is not None
                                      else max(10.0, 0.05 * (timer.time_elapsed() + timer.time_remaining())))
        left = timer.time_remaining() - reserve
        more = max(0, math.floor(left / (self._longest_epoch * EPOCH_MARGIN)))
        done = trainer.current_epoch + 1
        planned = done + more
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            planned = min(planned, trainer.max_epochs)
        # Every process must stop after the same epoch: rank 0's clock decides.
        planned = int(trainer.strategy.broadcast(planned, src=0))
        if planned == self._planned:
            return
        trainer.fit_loop.max_epochs = planned
        if planned > done:
            self._replan_schedule(trainer, pl_module, planned)
        rank_zero_info(
            f"Time budget: {timer.time_remaining():.0f} s left after epoch {done} ({self._longest_epoch:.1f} s an "
            f"epoch, {reserve:.0f} s kept for the end-of-fit analysis): training ends after epoch {planned}"
            + (", the schedule re-planned to anneal there." if planned > done else "."))
        self._planned = planned

    @staticmethod
    def _replan_schedule(trainer: pl.Trainer, pl_module: pl.LightningModule, epochs: int) -> None:
        """Replace the warm-up + cosine by one that ends at the last step of epoch ``epochs`` (the model's
        ``min_lr`` and ``warmup_epochs``, the measured steps per epoch)."""
        configs = trainer.lr_scheduler_configs
        if len(configs) != 1 or "min_lr" not in pl_module.hparams:
            return  # not the app's schedule: nothing this callback knows how to re-plan
        per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        total = per_epoch * epochs
        hp = pl_module.hparams
        scheduler = build_scheduler(trainer.optimizers[0], total,
                                    warmup_steps_for(hp.warmup_epochs, total, epochs, per_epoch), hp.min_lr)
        # Building a timm scheduler sets the warm-up's first lr; put each group back where the new plan is now.
        scheduler.step_update(num_updates=trainer.global_step)
        configs[0].scheduler = scheduler
