"""Per-class precision, recall, F1 and the confusion matrix at the end of validation and test.

A callback (``--class_report.*``): it reads the logits the model's ``validation_step``/``test_step`` return,
accumulates torchmetrics' per-class metrics (synchronised across devices), logs ``{stage}/recall/<class>`` etc.,
and writes into the run directory (``trainer.log_dir``) ``{stage}_per_class.csv`` (class, precision,
recall, f1, support), ``{stage}_confusion_matrix.csv`` (rows: true class, columns: predicted class) and
``{stage}_confused_pairs.csv`` (its off-diagonal cells, most frequent first), overwritten each epoch, and
``{stage}_confusion_matrix.png`` (heat map). This is the one confusion matrix of a validation: the report reads
its CSV. Multi-label models get precision, recall and F1 at their decision thresholds plus each class's average
precision (``ap``) and no confusion matrix (an image can be in several classes). During ``fit`` the PNG is drawn
once, from the last validation, when training ends: drawing it at every validation would leave the accelerator
idle while matplotlib works. When the best checkpoint was saved from an earlier validation, the end-of-fit
analysis (:class:`~lit_convnext.evaluation.end_of_fit.EvaluationReport`) rewrites the ``val_*`` files from that
validation's logits, so they describe the same weights as ``val_predictions.csv`` and the report; the PNG is
therefore drawn after that analysis, by the EvaluationReport's ``on_fit_end`` when an enabled one is among the
Trainer's callbacks, else by this callback's own ``on_fit_end``: once, whatever the order of the callbacks.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MultilabelAveragePrecision,
    MultilabelF1Score,
    MultilabelPrecision,
    MultilabelRecall,
    MultilabelStatScores,
)
from torchmetrics.wrappers import ClasswiseWrapper

from lit_convnext.evaluation.report.figures import as_written, confusion_classes, save_png

#: Per-class metrics of the report, logged as ``{stage}/{metric}/{class name}``.
PER_CLASS = {"precision": MulticlassPrecision, "recall": MulticlassRecall, "f1": MulticlassF1Score}
#: The same for multi-label models, plus each class's average precision.
MULTILABEL_PER_CLASS: dict[str, tuple[Any, dict[str, Any]]] = {
    "precision": (MultilabelPrecision, {"zero_division": 0}),
    "recall": (MultilabelRecall, {"zero_division": 0}),
    "f1": (MultilabelF1Score, {"zero_division": 0}),
    "ap": (MultilabelAveragePrecision, {}),
}


class PerClassReport(Callback):
    """Per-class metrics and confusion matrix for validation and test.

    Args:
        enabled: Compute, log and save the per-class report.
        log_per_class: Also log every class's precision/recall/F1 as scalars (one curve per class and metric).
        plot: Save the confusion matrix as a PNG heat map (needs matplotlib); during ``fit``, once at the end.
    """

    def __init__(self, enabled: bool = True, log_per_class: bool = True, plot: bool = True) -> None:
        self.enabled = enabled
        self.log_per_class = log_per_class
        self.plot = plot
        self._metrics: dict[str, MetricCollection] = {}
        self._unplotted: tuple[Path, list[str], torch.Tensor] | None = None  # last validation during fit

    def _collection(self, stage: str, pl_module: pl.LightningModule) -> MetricCollection | None:
        names = getattr(pl_module, "class_names", None)
        if not self.enabled or not names:
            return None
        if stage not in self._metrics and getattr(pl_module, "multilabel", False):
            n = len(names)
            metrics = {metric: ClasswiseWrapper(cls(n, average=None, validate_args=False, **extra),
                                                labels=list(names), prefix=f"{stage}/{metric}/")
                       for metric, (cls, extra) in MULTILABEL_PER_CLASS.items()}
            # support: images per class
            metrics["stats"] = MultilabelStatScores(n, average=None, validate_args=False)
            self._metrics[stage] = MetricCollection(metrics, compute_groups=False)
        if stage not in self._metrics:
            n = len(names)
            # ClasswiseWrapper names each class's value by the class name: {stage}/recall/<class>.
            metrics: dict[str, Any] = {
                metric: ClasswiseWrapper(cls(n, average=None, zero_division=0, validate_args=False),
                                         labels=list(names), prefix=f"{stage}/{metric}/")
                for metric, cls in PER_CLASS.items()
            }
            metrics["confusion"] = MulticlassConfusionMatrix(n, validate_args=False)
            self._metrics[stage] = MetricCollection(metrics, compute_groups=False)
        return self._metrics[stage].to(pl_module.device)

    def _update(self, stage: str, pl_module: pl.LightningModule, outputs: Any, batch: Any) -> None:
        collection = self._collection(stage, pl_module)
        if collection is None or not isinstance(outputs, torch.Tensor):
            return
        logits, targets = pl_module.measured(outputs.detach(), batch[1])  # without stand-ins for unreadable files
        if not len(targets):
            return
        if "ap" in collection:  # multi-label: decisions at the model's thresholds, AP from the probabilities
            probabilities, targets = pl_module.probabilities(logits), targets.int()
            hits = pl_module.decide(probabilities).int()
            for name, metric in collection.items():
                metric.update(probabilities if name == "ap" else hits, targets)
        else:
            collection.update(logits, targets)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._update("val", pl_module, outputs, batch)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update("test", pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._finish("val", trainer, pl_module)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish("test", trainer, pl_module)

    def _finish(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule, replay: bool = False) -> None:
        """Compute, log and write the stage's report; ``replay``: logits handed over after fit (see
        :meth:`rewrite_validation`), written and plotted at once, not logged."""
        collection = self._metrics.get(stage)
        # Under DDP every rank must reach compute() (it gathers); a rank without batches still takes part.
        if collection is None or (trainer.world_size == 1 and not collection["precision"].update_called):
            return
        result = {k: v.cpu() for k, v in collection.compute().items()}
        collection.reset()
        names = list(pl_module.class_names)
        confusion = result.pop("confusion", None)
        stats = result.pop("stats", None)
        if self.log_per_class and not replay:
            pl_module.log_dict({k: v.float() for k, v in result.items()}, sync_dist=False)  # already synchronised
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)  # log_dir broadcasts: call it on every rank
        if not trainer.is_global_zero:
            return
        if stats is not None:
            per_class = {m: [float(result[f"{stage}/{m}/{name}"]) for name in names] for m in MULTILABEL_PER_CLASS}
            write_multilabel_report(run_dir, stage, names, per_class, stats)
            return
        confusion = confusion.long()
        in_fit = trainer.state.fn == TrainerFn.FITTING and not replay
        per_class = {metric: [float(result[f"{stage}/{metric}/{name}"]) for name in names] for metric in PER_CLASS}
        write_reports(run_dir, stage, names, per_class, confusion, plot=self.plot and not in_fit)
        if self.plot and (in_fit or stage == "val"):  # a PNG drawn now replaces the fit's pending one
            self._unplotted = (run_dir, names, confusion) if in_fit else None

    def rewrite_validation(self, trainer: pl.Trainer, pl_module: pl.LightningModule, logits: torch.Tensor,
                           targets: torch.Tensor) -> None:
        """Rewrite the ``val_*`` files from other validation logits: the end-of-fit analysis hands over those of
        the best checkpoint when it was saved before the last validation, which the files describe until then
        (single process, single-label; nothing is logged)."""
        collection = self._collection("val", pl_module)
        if collection is None or "ap" in collection:
            return
        collection.reset()
        collection.update(logits.to(pl_module.device), targets.to(pl_module.device))
        self._finish("val", trainer, pl_module, replay=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lit_convnext.evaluation.end_of_fit import EvaluationReport  # it imports this module

        # An enabled end-of-fit analysis may rewrite the files first: it draws the PNG after that.
        if not any(isinstance(callback, EvaluationReport) and callback.enabled for callback in trainer.callbacks):
            self.draw_pending()

    def draw_pending(self) -> None:
        """Draw the PNG of the fit's last validation, unless it has been drawn since (by a rewrite or validate);
        called when ``fit`` ends, after the end-of-fit analysis (see the module docstring)."""
        if self._unplotted is not None:
            run_dir, names, confusion = self._unplotted
            plot_confusion(confusion, names, run_dir / "val_confusion_matrix.png", title="val confusion matrix")
            self._unplotted = None


def write_reports(run_dir: Path, stage: str, names: list[str], per_class: dict[str, list[float]],
                  confusion: torch.Tensor, plot: bool) -> None:
    """Write the per-class CSV, confusion-matrix CSV and (optionally) PNG for one stage."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / f"{stage}_per_class.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", *PER_CLASS, "support"])
        for i, name in enumerate(names):
            writer.writerow([name, *(f"{per_class[m][i]:.4f}" for m in PER_CLASS), int(confusion[i].sum())])
    with (run_dir / f"{stage}_confusion_matrix.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *names])
        for name, row in zip(names, confusion.tolist()):
            writer.writerow([name, *row])
    write_confused_pairs(run_dir / f"{stage}_confused_pairs.csv", names, confusion)
    if plot:
        plot_confusion(confusion, names, run_dir / f"{stage}_confusion_matrix.png", title=f"{stage} confusion matrix")


def write_confused_pairs(path: Path, names: list[str], confusion: torch.Tensor) -> None:
    """Off-diagonal cells of the confusion matrix, most frequent first, with their share of the true class."""
    n = len(names)
    totals = confusion.sum(dim=1)
    errors = confusion.clone()
    errors.fill_diagonal_(0)
    counts, cells = errors.flatten().sort(descending=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true", "predicted", "count", "share_of_true"])
        for count, cell in zip(counts.tolist(), cells.tolist()):
            if count == 0:
                break
            true, predicted = divmod(cell, n)
            writer.writerow([names[true], names[predicted], count, f"{count / int(totals[true]):.4f}"])


def write_multilabel_report(run_dir: Path, stage: str, names: list[str], per_class: dict[str, list[float]],
                            stats: torch.Tensor) -> None:
    """``{stage}_per_class.csv`` for a multi-label model: precision, recall, F1, AP and images per class."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / f"{stage}_per_class.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", *MULTILABEL_PER_CLASS, "support"])
        for i, name in enumerate(names):
            writer.writerow([name, *(f"{per_class[m][i]:.4f}" for m in MULTILABEL_PER_CLASS), int(stats[i, 4])])


def plot_confusion(confusion: torch.Tensor, names: list[str], path: Path, title: str) -> None:
    """torchmetrics' confusion-matrix plot, with the counts in the cells that have any.

    Above ``report.figures.CONFUSION_MAX_CLASSES`` classes it shows those most involved in errors, as the report does (the
    CSV beside it holds every class): a matrix of 100 classes took a 40-inch figure whose cells nobody could
    read, and 2 s to draw (8 s at 1,000).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    classes = confusion_classes(confusion)
    if len(classes) < len(names):
        title = (f"{title}: the {len(classes)} of {len(names)} classes with the most errors "
                 f"(all classes in {path.with_suffix('.csv').name})")
    n = len(classes)
    side = 4 + 0.35 * n
    figure = Figure(figsize=(side, side), layout="constrained")
    axes = figure.add_subplot()
    with warnings.catch_warnings():  # torchmetrics hands matplotlib the tensor itself; numpy 2 warns about its copy
        warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy keyword")
        shown = confusion[classes][:, classes]
        MulticlassConfusionMatrix(n).plot(val=shown, ax=axes, add_text=False,
                                          labels=[as_written(names[i]) for i in classes], cmap="Blues")
    # The counts, in the cells that have any: 900 zeros would hide the errors (and take a second to draw).
    dark = shown.max().item() / 2
    for (row, column), count in zip(shown.nonzero().tolist(), shown[shown > 0].tolist()):
        axes.text(column, row, str(count), ha="center", va="center", fontsize=(10 if n <= 15 else 8) - (count >= 1000),
                  color="white" if count > dark else "black")
    # Each class gets at least 0.35 inch: names upright on the rows, vertical under the columns.
    axes.tick_params(labelsize=9)
    axes.tick_params(axis="y", labelrotation=0)
    axes.tick_params(axis="x", labelrotation=90)
    axes.set_title(title, wrap=True)
    save_png(figure, path, dpi=100)
