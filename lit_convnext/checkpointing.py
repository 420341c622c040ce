"""ModelCheckpoint that also checkpoints the metrics it ranks by, so a resumed run ranks like an unbroken one.

Lightning keeps the last logged ``val/acc1`` only in ``trainer.callback_metrics``, which no checkpoint
holds. A run resumed from a mid-epoch ``last.ckpt`` starts with no ``val/acc1``: its next step-triggered
save (``--checkpoint.every_n_train_steps``) is deferred to validation, and with one validation per epoch
ModelCheckpoint saves at train-epoch end, where that deferred top-k save is never made. The resumed run
then keeps fewer best-k files than an uninterrupted one. Saving the scalar callback metrics with the
callback state and putting them back when training starts gives both runs the same candidates.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

METRICS_KEY = "callback_metrics"


class ResumableModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose checkpointed state includes the latest logged scalar metrics.

    It takes ModelCheckpoint's arguments. Its state is stored under ModelCheckpoint's own key, so
    checkpoints written before (or by a plain ``ModelCheckpoint``) resume with their best-k bookkeeping.
    """

    _restored_metrics: dict[str, torch.Tensor] = {}  # replaced, never mutated: set by load_state_dict

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is not None:
            state[METRICS_KEY] = {
                name: value.detach().cpu() for name, value in trainer.callback_metrics.items()
                if isinstance(value, torch.Tensor) and value.numel() == 1
            }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._restored_metrics = dict(state_dict.get(METRICS_KEY, {}))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # Lightning clears callback_metrics after restoring callbacks, so they go back in here.
        for name, value in self._restored_metrics.items():
            trainer.callback_metrics.setdefault(name, value)
        self._restored_metrics = {}
