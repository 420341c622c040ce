"""Stop at the first non-finite training loss, before it reaches the weights.

A NaN/inf loss is caught before ``backward`` so no NaN reaches the weights and no checkpoint holds
NaN weights; the run stops with a one-line ``UserError`` naming the step and the usual causes.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lit_convnext.errors import UserError


class FiniteLossGuard(Callback):
    """Stop training at the first step whose loss is NaN or infinite (on any device)."""

    def __init__(self) -> None:
        self._batch_idx = -1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch_idx = batch_idx  # for the message: which batch of the epoch went bad

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:  # every rank must stop together, or the others wait forever
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
        raise UserError(
            f"the training loss is {loss.item() if loss.numel() == 1 else 'not finite'} at step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}, batch {self._batch_idx}); "
            f"stopped before the update, last good checkpoint: {last}. Likely causes: learning rate too high "
            f"(lower --model.lr or lengthen --model.warmup_epochs) or float16 overflow (use --trainer.precision "
            f"bf16-mixed instead of {trainer.precision})"
        )
