"""Exponential moving average of the weights: Lightning's ``WeightAveraging`` with a decay you can reason about.

After each optimizer step the average moves ``1 - decay`` of the way to the model, so it spans roughly the last
``1 / (1 - decay)`` steps. Give the decay one of two ways:

* ``decay``: a constant per-step decay, as the official recipes do (0.9999 over tens of thousands of ImageNet
  steps). A run shorter than ``1 / (1 - decay)`` steps leaves the average close to where it started; the
  callback says so when the run starts.
* ``horizon``: the share of the run's optimizer steps the average spans; the callback converts it to
  ``decay = 1 - 1 / (horizon x total steps)`` once the run's length is known.

With ``warmup`` on, the average is the plain mean of the weights since the first step until that mean would move
less than the decay does (``1 / (1 - decay)`` steps, i.e. ``horizon`` of the run), then the constant decay; with it
off, the constant decay applies from the first step, starting from the weights the fit started with (the official
recipes: the pretrained weights). The decay in use is logged as ``ema/decay``.

While this callback is on, validation runs on the EMA weights and every checkpoint's ``state_dict``
holds the EMA weights (Lightning keeps the raw weights under ``current_model_state``).
"""


import math

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from lit_convnext.errors import UserError
from lit_convnext.private_api.lightning import averaged_model
from lit_convnext.ranges import OpenFraction

#: Used when neither ``decay`` nor ``horizon`` is given: the average spans the last 10% of the run (see
#: docs/recipes.md, "EMA", for the measurement behind it).
DEFAULT_HORIZON = 0.1


def decay_for_horizon(horizon: float, total_steps: int) -> float:
    """The constant decay whose average spans ``horizon`` of ``total_steps``: ``1 - 1 / (horizon x steps)``."""
    span = horizon * total_steps
    if span <= 1:
        raise UserError(
            f"EMA horizon {horizon} of a {total_steps}-step run is {span:.2g} steps, less than one: "
            "use a larger --trainer.callbacks.horizon, a longer run, or no EMA"
        )
    return 1.0 - 1.0 / span


class WarmupEMADecay:
    """``multi_avg_fn`` for ``torch.optim.swa_utils.AveragedModel``: constant decay, optionally after a mean.

    The update itself is torch's (``get_ema_multi_avg_fn``: one fused lerp per device and dtype); what is the app's
    own is the decay of each update, :meth:`decay_at`. The update count is read on the host; ``AveragedModel`` has
    just read it there itself, so that adds no accelerator wait.
    """

    def __init__(self, decay: float | None, warmup: bool = True) -> None:
        self.decay = decay  # None until the run's length is known (horizon)
        self.warmup = warmup
        self.updates = 0  # calls so far (one per device and dtype group of an update)
        self.last_decay: float | None = None  # the decay of the latest update, for the ema/decay log

    def decay_at(self, num_averaged: torch.Tensor | int) -> float:
        """Decay of the update after ``num_averaged`` models were averaged: ``n / (n + 1)`` (a plain mean) while
        that is below ``decay`` and the warm-up is on, ``decay`` after."""
        if self.decay is None:
            raise RuntimeError("the EMA decay is set when the fit starts")
        if not self.warmup:
            return self.decay
        n = int(num_averaged)
        return min(self.decay, n / (n + 1))

    def __call__(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        self.updates += 1
        if not averaged[0].is_floating_point():  # integer buffers (counters): the model's value, not a blend
            for average, value in zip(averaged, current):
                average.copy_(value)
            return
        self.last_decay = self.decay_at(num_averaged)
        get_ema_multi_avg_fn(self.last_decay)(averaged, current, num_averaged)


class EMA(WeightAveraging):
    """EMA of the model weights, validated and checkpointed in place of the raw weights.

    Args:
        decay: Constant EMA decay per optimizer step (0.9999 in the official recipes). Give this or ``horizon``.
        horizon: Share of the run's optimizer steps the average spans, converted to
            ``decay = 1 - 1 / (horizon x total steps)``. When neither is given: 0.1 (the last tenth of the run).
        warmup: Average by a plain mean of the weights since the first step until the decay is reached
            (``1 / (1 - decay)`` steps); off: the constant decay from the first step, starting from the weights
            the fit started with (the official recipes).
        device: Where the average lives (``"cpu"`` saves GPU memory); ``None`` keeps it with the model.
    """

    def __init__(
        self,
        decay: OpenFraction | None = None,
        horizon: OpenFraction | None = None,
        warmup: bool = True,
        device: str | None = None,
    ) -> None:
        self.decay = decay
        self.horizon = DEFAULT_HORIZON if decay is None and horizon is None else horizon
        self._both_given = decay is not None and horizon is not None  # refused when the fit starts (one-line error)
        self.schedule = WarmupEMADecay(decay, warmup)
        super().__init__(device=device, use_buffers=True, multi_avg_fn=self.schedule)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._both_given:
            raise UserError(
                f"EMA: give either decay ({self.decay}) or horizon ({self.horizon}), not both: decay is the constant "
                "per-step value, horizon the share of the run it is derived from"
            )
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and not self.schedule.warmup:
            # The average already holds the starting weights: the first update then applies the constant decay
            # to them (as the official recipes' EMA of the pretrained model) instead of copying the model.
            averaged_model(self).n_averaged.fill_(1)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        if self.horizon is not None:
            if not math.isfinite(total):
                raise UserError("EMA horizon needs a run of known length: set --trainer.max_steps or give EMA decay")
            self.schedule.decay = decay_for_horizon(self.horizon, int(total))
            source = f"horizon {self.horizon} of {int(total)} steps"
        else:
            source = "constant"
        decay = self.schedule.decay
        span = 1.0 / (1.0 - decay)
        warmup = f"plain mean over the first {span:.0f} steps, then " if self.schedule.warmup else ""
        rank_zero_info(
            f"EMA of the weights is on: {warmup}decay {decay:.6g} ({source}; the average spans ~{span:.0f} steps). "
            "Validation metrics and the checkpoints' state_dict are the EMA weights; the raw weights are kept under "
            "'current_model_state'."
        )
        if math.isfinite(total) and span > total:
            outcome = ("is the plain mean of all the run's weights" if self.schedule.warmup
                       else "stays close to the starting weights")
            rank_zero_warn(
                f"EMA decay {decay:.6g} averages over ~{span:.0f} steps but the run has {int(total)}: the average "
                f"{outcome}. Use a horizon (e.g. 0.1) or a lower decay for short runs."
            )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        updates = self.schedule.updates
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.schedule.updates != updates and self.schedule.last_decay is not None:  # log the decay it used
            pl_module.log("ema/decay", self.schedule.last_decay, on_step=True, on_epoch=False)
