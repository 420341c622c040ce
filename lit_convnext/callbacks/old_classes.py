"""Whether a model that learnt new classes kept the old ones: their validation accuracy before and after the fit.

When ``--model.pretrained`` weights gained classes by name (:func:`lit_convnext.data.samplers.added_classes`), the
old classes' validation images are measured twice: before training, by the loaded weights over the old classes'
rows alone (what the old model predicted: those rows are its rows, bit for bit), and after, by the fine-tuned model
over every class (an old image taken for a new class counts as an error). ``fit`` ends with the line
``old classes: acc before X, after Y``; ``old_classes.json`` in the run directory holds the figures, which
``report.html`` shows, and ``val/acc_old_classes`` and ``val/acc_new_classes`` are logged at each validation.
"""

from __future__ import annotations

import json
import operator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from lit_convnext.data.datasets import measured_rows
from lit_convnext.data.samplers import added_classes

OLD_CLASSES_NAME = "old_classes.json"


class OldClassAccuracy(Callback):
    """Measure the old classes' validation accuracy before and after a fit that added classes by name (single-label
    models; a no-op for any other fit).

    Args:
        enabled: Measure (one extra pass over the validation images before training) and report.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._old: torch.Tensor | None = None  # class indices of the old classes, in the model's order
        self._before: dict[str, float] | None = None
        self._counts = torch.zeros(4, dtype=torch.float64)  # old correct, old images, new correct, new images
        self._best: tuple[float, dict[str, Any]] | None = None  # monitored value, figures of that validation
        self._last: dict[str, Any] | None = None

    def _active(self, pl_module: pl.LightningModule) -> bool:
        return self._old is not None and not getattr(pl_module, "multilabel", False)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The loaded weights' accuracy on the old classes' images, over the old rows: one pass over validation.
        (Here, not at ``on_fit_start``: a resumed fit knows its classes once the checkpoint is restored.)"""
        added = added_classes(pl_module) if self.enabled else []
        names = list(getattr(pl_module, "class_names", None) or [])
        self._old = torch.tensor([i for i, name in enumerate(names) if name not in added]) if added else None
        if not self._active(pl_module) or self._before is not None:  # measured once, not again after a resume
            return
        loader = trainer.val_dataloaders or (trainer.datamodule.val_dataloader() if trainer.datamodule else None)
        if loader is None:
            return
        old = self._old.to(pl_module.device)
        correct = total = 0
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            for images, targets in loader:
                targets = targets.to(pl_module.device)
                keep = measured_rows(targets)
                keep &= torch.isin(targets, old)
                if not keep.any():
                    continue
                logits = pl_module(images.to(pl_module.device))[keep][:, old]
                correct += int((old[logits.argmax(1)] == targets[keep]).sum())
                total += int(keep.sum())
        pl_module.train(was_training)
        counts = trainer.strategy.reduce(torch.tensor([correct, total], dtype=torch.float64,
                                                      device=pl_module.device), reduce_op="sum")
        self._before = {"accuracy": _share(counts[0], counts[1]), "images": int(counts[1])}

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._counts.zero_()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if (not self._active(pl_module) or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING
                or not isinstance(outputs, torch.Tensor)):
            return
        logits, targets = pl_module.measured(outputs, batch[1])
        is_old = torch.isin(targets, self._old.to(targets.device))
        right = logits.argmax(1) == targets
        self._counts += torch.stack([(right & is_old).sum(), is_old.sum(), (right & ~is_old).sum(),
                                     (~is_old).sum()]).double().cpu()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(pl_module) or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        counts = trainer.strategy.reduce(self._counts.to(pl_module.device), reduce_op="sum").cpu()
        self._last = {"accuracy": _share(counts[0], counts[1]), "images": int(counts[1]),
                      "new_accuracy": _share(counts[2], counts[3]), "new_images": int(counts[3]),
                      "step": trainer.global_step}
        pl_module.log_dict({"val/acc_old_classes": self._last["accuracy"],
                            "val/acc_new_classes": self._last["new_accuracy"]}, sync_dist=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep the figures of the validation the best checkpoint is saved from (the checkpoint callback's monitor,
        strictly better as it counts), and write them: ``report.html`` is built before ``fit`` ends."""
        if self._last is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        checkpoint = trainer.checkpoint_callback
        monitor = getattr(checkpoint, "monitor", None)
        value = trainer.callback_metrics.get(monitor) if monitor else None
        if value is None:
            self._best = (0.0, self._last)  # no monitored metric: the latest weights
        else:
            better = operator.gt if getattr(checkpoint, "mode", "max") == "max" else operator.lt
            if self._best is None or better(float(value), self._best[0]):
                self._best = (float(value), {**self._last, "checkpoint": f"best by {monitor}"})
        self._write(trainer)

    def _write(self, trainer: pl.Trainer) -> None:
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective under DDP: every rank asks
        if trainer.is_global_zero and self._best is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / OLD_CLASSES_NAME).write_text(json.dumps(self.summary(trainer.lightning_module), indent=1)
                                                    + "\n", encoding="utf-8")

    def summary(self, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The figures: the old and new classes, the accuracy before, and after (with the new classes')."""
        names = list(pl_module.class_names)
        after = self._best[1] if self._best is not None else {}
        return {"old_classes": [names[i] for i in self._old.tolist()],
                "new_classes": [n for i, n in enumerate(names) if i not in set(self._old.tolist())],
                "before": self._before, "after": after}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(pl_module) or self._best is None:
            return
        figures = self.summary(pl_module)
        before, after = figures["before"] or {}, figures["after"]
        rank_zero_info(
            f"old classes: acc before {before.get('accuracy', float('nan')):.4f}, after {after['accuracy']:.4f} "
            f"({len(figures['old_classes'])} old classes, {after['images']} validation images; before: the "
            f"pretrained weights over the old classes, after: {after.get('checkpoint', 'the last weights')} over all "
            f"{len(figures['old_classes']) + len(figures['new_classes'])}); new classes: acc "
            f"{after['new_accuracy']:.4f} ({after['new_images']} images)"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"before": self._before, "best": self._best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._before, self._best = state_dict.get("before"), state_dict.get("best")


def _share(part: torch.Tensor, whole: torch.Tensor) -> float:
    return float(part / whole) if float(whole) > 0 else float("nan")
