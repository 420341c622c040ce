"""Optimizer and learning-rate schedule of the official ConvNeXt fine-tuning recipes, via timm.

* AdamW with weight decay on weight matrices and conv kernels only: biases, norm weights,
  layer-scale gammas and GRN parameters are 1-D and get none (timm's ``param_groups_*``);
* layer-wise lr decay from timm's ConvNeXt ``group_matcher``: one group per block, every size;
* the lr is given for a reference batch and scaled linearly with the effective batch;
* linear warm-up then cosine decay, stepped per optimizer step (timm's ``CosineLRScheduler``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn


@dataclass(frozen=True)
class EffectiveBatch:
    """The batch one optimizer step sees, and its parts."""

    per_device: int
    devices: int
    accumulation: int

    @property
    def size(self) -> int:
        return self.per_device * self.devices * self.accumulation

    def scaled_lr(self, lr: float, reference: int) -> float:
        """Linear scaling rule: ``lr * size / reference``."""
        return lr * self.size / reference

    def describe(self) -> str:
        return f"{self.size} ({self.per_device} per device x {self.devices} device(s) x {self.accumulation} accumulation)"


def build_optimizer(
    net: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float | None,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """AdamW over timm's parameter groups; each group's ``lr_scale`` is its layer-decay factor."""
    return create_optimizer_v2(
        net,
        opt="adamw",
        lr=lr,
        weight_decay=weight_decay,
        layer_decay=layer_decay,
        betas=betas,
        eps=1e-8,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr: float
) -> CosineLRScheduler:
    """Warm up linearly over ``warmup_steps`` from ~0, then cosine-decay to ``min_lr`` at ``total_steps``."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return CosineLRScheduler(
        optimizer,
        # >= 2: with a single step after warm-up timm warns the cosine has no effect; that step is at t=0
        # (the base lr) for any t_initial, so 2 changes nothing but the warning.
        t_initial=max(total_steps - warmup_steps, 2),
        lr_min=min_lr,
        warmup_t=warmup_steps,
        warmup_lr_init=1e-8 if warmup_steps else 0.0,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def warmup_steps_for(warmup_epochs: float, total_steps: int, max_epochs: int | None, batches_per_epoch: float) -> int:
    """Convert a warm-up given in epochs into optimizer steps."""
    if max_epochs and max_epochs > 0:
        steps_per_epoch = total_steps / max_epochs
    elif math.isfinite(batches_per_epoch):
        steps_per_epoch = batches_per_epoch
    else:  # an iterable without a length, bounded by max_steps only
        steps_per_epoch = total_steps
    return int(math.ceil(warmup_epochs * steps_per_epoch)) if warmup_epochs > 0 else 0
