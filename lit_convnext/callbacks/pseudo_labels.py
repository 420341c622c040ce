"""What semi-supervised training took from the unlabelled images: ``pseudo_labels.csv`` and ``train/pseudo_labeled``.

After each training epoch the run directory's :data:`~lit_convnext.model.semi_supervised.PSEUDO_LABELS_NAME` is
rewritten with the unlabelled images whose pseudo-label was used in that epoch (path, class name, calibrated
confidence, epoch), so at the end of ``fit`` it lists what the last epoch learnt from; ``train/pseudo_labeled``
logs the share of the epoch's unlabelled images that were used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lit_convnext.model.semi_supervised import PSEUDO_LABELS_NAME, write_pseudo_labels


class PseudoLabelReport(Callback):
    """Write ``pseudo_labels.csv`` and log ``train/pseudo_labeled`` when the model learns from unlabelled images
    (its ``pseudo_labeler``; a run without unlabelled batches writes nothing)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        labeler, paths = getattr(pl_module, "pseudo_labeler", None), _pool_paths(trainer)
        if labeler is not None and paths:  # the same length on every device, so the rows gather
            labeler.reserve(len(paths))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        labeler = getattr(pl_module, "pseudo_labeler", None)
        ratio = labeler.take_used_ratio() if labeler is not None else None
        if ratio is None:  # no unlabelled batch this epoch
            return
        pl_module.log("train/pseudo_labeled", ratio, sync_dist=True)
        epoch = trainer.current_epoch
        index, label, confidence = labeler.used_rows(epoch)
        if trainer.world_size > 1:
            index, label, confidence = _gathered(pl_module, labeler, epoch)
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)  # log_dir broadcasts: every rank asks
        if trainer.is_global_zero:
            write_pseudo_labels(run_dir / PSEUDO_LABELS_NAME, _pool_paths(trainer), pl_module.class_names,
                                index.cpu(), label.cpu(), confidence.cpu(), epoch)


def _pool_paths(trainer: pl.Trainer) -> list[Any]:
    """The unlabelled images in pool order (their ``index`` in the batches): the datamodule's pool."""
    pool = getattr(trainer.datamodule, "unlabeled", None)
    return list(pool.paths) if pool is not None else []


def _gathered(pl_module: pl.LightningModule, labeler: Any, epoch: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every device's used pseudo-labels of ``epoch``: per image, the most confident device's."""
    used = labeler.used_in == epoch
    confidence = torch.where(used, labeler.confidence, torch.full_like(labeler.confidence, -1.0))
    all_confidence, all_label = pl_module.all_gather(confidence), pl_module.all_gather(labeler.label)
    best, rank = all_confidence.max(dim=0)
    chosen = (best >= 0).nonzero().flatten()
    return chosen, all_label[rank[chosen], chosen], best[chosen]
