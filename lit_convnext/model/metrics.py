"""The metric objects of the classifier, per stage (torchmetrics: exact over all images, synchronised across
devices by ``compute()``).

``validate_args=False`` everywhere: the inputs are the model's own logits and the data's targets, and torchmetrics'
checks (``torch.unique``) would make every step wait for the accelerator.
"""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassF1Score,
    MultilabelAveragePrecision,
    MultilabelF1Score,
    MultilabelPrecisionRecallCurve,
)

from lit_convnext.evaluation.calibration import ECE_BINS


def multiclass_metrics(n: int) -> dict[str, torch.nn.Module]:
    """``metrics`` (``{stage}_metrics``: acc1, f1, and acc5 from 5 classes on, for train, val and test),
    ``eval_losses`` (val, test) and ``calibration_errors`` (the raw softmax's ECE, val and test)."""
    # acc1/acc5: share of all images whose class is in the top 1/5 (timm's and the papers' top-1/top-5;
    # torchmetrics' default would be the mean per-class recall). f1: macro, every class counts alike.
    metrics: dict[str, MulticlassAccuracy | MulticlassF1Score] = {
        "acc1": MulticlassAccuracy(num_classes=n, top_k=1, average="micro", validate_args=False),
        "f1": MulticlassF1Score(num_classes=n, average="macro", validate_args=False),
    }
    if n >= 5:
        metrics["acc5"] = MulticlassAccuracy(num_classes=n, top_k=5, average="micro", validate_args=False)
    collection = MetricCollection(metrics)
    return {
        # Keys get a suffix: ``train`` would clash with ``nn.Module.train``.
        "metrics": torch.nn.ModuleDict(
            {f"{stage}_metrics": collection.clone(prefix=f"{stage}/") for stage in ("train", "val", "test")}),
        "eval_losses": torch.nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")}),
        # ECE of the raw (uncalibrated) softmax: what the temperature fitted during fit has to correct.
        "calibration_errors": torch.nn.ModuleDict(
            {stage: MulticlassCalibrationError(n, n_bins=ECE_BINS, norm="l1", validate_args=False)
             for stage in ("val", "test")}),
    }


def multilabel_metrics(n: int) -> dict[str, torch.nn.Module]:
    """``metrics`` (``{stage}_metrics``: map; ``{stage}_decisions``: f1 and f1_micro at the decision thresholds; val
    and test), ``eval_losses`` and ``threshold_curve`` (the precision-recall curve that tunes each class's threshold
    on validation during fit)."""
    # map: mean over classes of the average precision (threshold-free, exact: every score is kept).
    ranking = MetricCollection({"map": MultilabelAveragePrecision(n, average="macro", validate_args=False)})
    decisions = MetricCollection({
        "f1": MultilabelF1Score(n, average="macro", zero_division=0, validate_args=False),
        "f1_micro": MultilabelF1Score(n, average="micro", zero_division=0, validate_args=False),
    })
    return {
        "metrics": torch.nn.ModuleDict({
            **{f"{stage}_metrics": ranking.clone(prefix=f"{stage}/") for stage in ("val", "test")},
            **{f"{stage}_decisions": decisions.clone(prefix=f"{stage}/") for stage in ("val", "test")},
        }),
        "eval_losses": torch.nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")}),
        "threshold_curve": MultilabelPrecisionRecallCurve(n, validate_args=False),
    }
