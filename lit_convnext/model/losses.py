"""The training loss: cross-entropy with per-class weights for imbalanced folders.

Weights (``--model.class_weights``):

* ``none``: plain cross-entropy;
* ``auto``: inverse training frequency, normalised to mean 1 (``w_c = mean(n) / n_c`` over classes), so the
  loss keeps its usual scale and learning rates need no change;
* a mapping ``{class name: weight}``; classes left out get 1.

The weights compose with label smoothing and with Mixup/CutMix through PyTorch's own
``F.cross_entropy(weight=...)``: for a soft (mixed and/or smoothed) target ``y`` the per-sample loss is
``-sum_c w_c * y_c * log p_c``, i.e. each class share of the mixed target is weighted by that class's weight,
averaged over the batch. (For hard targets PyTorch divides by the summed weights of the batch's targets
instead; the gradient direction is the same.) Validation and test losses stay unweighted so runs compare.
The class-balanced sampler (``--data.sampler balanced``) lives in ``data/samplers.py``.

Multi-label models (a label file's ``labels`` column, or ``--data.task multilabel``) use binary cross-entropy on
the sigmoid of each class's logit (:func:`multilabel_loss`); class weights scale each class's binary loss, and label smoothing moves each binary
target towards 0.5 (``y (1 - s) + s / 2``, as timm's multi-label Mixup does), not towards ``1 / n_classes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from lit_convnext.errors import UserError
from lit_convnext.ranges import NonNegativeFloat

ClassWeights = Literal["none", "auto"] | dict[str, NonNegativeFloat] | None


def resolve_class_weights(spec: ClassWeights, class_names: Sequence[str] | None,
                          class_counts: Sequence[int] | None) -> torch.Tensor | None:
    """The weight tensor for ``spec`` (see the module docstring), or ``None`` for unweighted."""
    if spec is None or spec == "none" or not class_names:
        return None
    if spec == "auto":
        if class_counts is None:
            return None  # no training data attached (validate/test/predict): weights only matter for training
        if len(class_counts) != len(class_names):
            raise ValueError("class_counts and class_names differ in length")
        counts = torch.tensor([max(int(n), 1) for n in class_counts], dtype=torch.float32)
        weights = counts.mean() / counts
        return weights / weights.mean()
    unknown = sorted(set(spec) - set(class_names))
    if unknown:
        raise UserError(f"--model.class_weights names unknown class(es) {', '.join(unknown)}: "
                        f"the classes are {', '.join(class_names)}")
    weights = torch.tensor([float(spec.get(name, 1.0)) for name in class_names])
    if not weights.sum() > 0:  # each weight's range is in the type; this is what a type cannot say
        raise UserError("--model.class_weights must not all be zero")
    return weights


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy for hard (class index) or soft (Mixup/CutMix, already smoothed) targets, class-weighted."""
    if targets.is_floating_point():  # soft targets carry their own smoothing (timm's Mixup applies it)
        return F.cross_entropy(logits, targets, weight=weight)
    return F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing)


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
                    label_smoothing: float = 0.0) -> torch.Tensor:
    """Binary cross-entropy per class for multi-hot targets (Mixup/CutMix targets arrive already smoothed)."""
    targets = targets.to(logits.dtype)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return F.binary_cross_entropy_with_logits(logits, targets, weight=weight)
