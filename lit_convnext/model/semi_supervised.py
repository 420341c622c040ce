"""Semi-supervised learning from images without labels (``--data.unlabeled_root`` without a teacher).

FixMatch (Sohn et al., NeurIPS 2020): the model labels each unlabelled image from its weak view (a mild crop and
flip), and where it is confident enough it learns that label from the image's strong view (the training
augmentation), with cross-entropy averaged over all unlabelled images of the batch (those below the threshold add
zero), weighted by ``unlabeled_weight`` against the labelled loss.

The confidence is the model's *calibrated* probability, ``softmax(logits / T)`` (see
:meth:`~lit_convnext.model.postprocess.ClassifierOutputs.probabilities`), so a threshold of 0.95 means "right about
95% of the time on validation", whatever the model's over- or under-confidence. During ``fit`` ``T`` is the one
fitted on the latest validation (:mod:`lit_convnext.evaluation.end_of_fit`); before the first validation, and when
``--evaluation.calibrate false`` or several devices leave it unfitted during fit, it is 1 (the raw softmax).

FlexMatch's per-class thresholds (Zhang et al., NeurIPS 2021) were measured and left out: on the digits benchmark
(``benchmarks/semi_supervised.py``, docs/semi-supervised.md) its warm-up, which starts every class's threshold at 0
while most of the pool is still unseen, let through pseudo-labels of which a third were wrong.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lit_convnext.errors import UserError

#: The file in the run directory that lists the pseudo-labels of the last training epoch.
PSEUDO_LABELS_NAME = "pseudo_labels.csv"


class PseudoLabeler:
    """The FixMatch loss of a training batch's unlabelled part, and what each unlabelled image was last labelled.

    Keeps, per unlabelled image (by its ``index`` in the pool), its latest pseudo-label, confidence and the epoch in
    which that label was used (for :data:`PSEUDO_LABELS_NAME`). Tensors live on the device of the logits and grow
    to the largest index seen, so any pool works, also one not known in advance.

    Args:
        threshold: Calibrated confidence at or above which a pseudo-label is used.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.label = torch.zeros(0, dtype=torch.long)  # latest pseudo-label (the weak view's argmax)
        self.confidence = torch.zeros(0)  # its calibrated probability
        self.used_in = torch.zeros(0, dtype=torch.long)  # epoch in which the label was last used, -1: never
        #: Unlabelled images seen and used in the current epoch (``train/pseudo_labeled`` is their ratio).
        self.seen = 0
        self.used = 0

    def _grow(self, size: int, device: torch.device) -> None:
        if self.label.device != device:
            self.label, self.confidence, self.used_in = (t.to(device) for t in (self.label, self.confidence,
                                                                                 self.used_in))
        extra = size - len(self.label)
        if extra > 0:
            self.label = torch.cat([self.label, self.label.new_zeros(extra)])
            self.confidence = torch.cat([self.confidence, self.confidence.new_zeros(extra)])
            self.used_in = torch.cat([self.used_in, self.used_in.new_full((extra,), -1)])

    def reserve(self, pool_size: int) -> None:
        """Make room for a pool of ``pool_size`` images up front (the same size on every device)."""
        self._grow(pool_size, self.label.device)

    def loss(self, model: Any, unlabeled: dict[str, torch.Tensor], epoch: int) -> torch.Tensor:
        """The consistency loss of a batch's unlabelled part: cross-entropy of the strong view's logits against the
        weak view's pseudo-labels where their calibrated confidence reaches the threshold, averaged over
        all the batch's unlabelled images. ``model`` gives logits (``model(images)``) and calibrated probabilities
        (``model.probabilities(logits)``)."""
        weak, strong, index = unlabeled["weak"], unlabeled["strong"], unlabeled["index"].long()
        with torch.no_grad():  # the target: no gradient through the weak view (FixMatch's stop-gradient)
            confidence, label = model.probabilities(model(weak)).max(dim=1)
        self._grow(int(index.max()) + 1, label.device)
        index = index.to(label.device)
        keep = confidence >= self.threshold
        self.label[index], self.confidence[index] = label, confidence
        self.used_in[index[keep]] = epoch
        self.seen += len(index)
        self.used += int(keep.sum())
        per_image = F.cross_entropy(model(strong), label, reduction="none")
        return (per_image * keep.to(per_image.dtype)).mean()

    def take_used_ratio(self) -> float | None:
        """Share of the unlabelled images of the epoch so far whose pseudo-label was used; restarts the count."""
        if not self.seen:
            return None
        ratio = self.used / self.seen
        self.seen = self.used = 0
        return ratio

    def used_rows(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(index, label, confidence)`` of the images whose pseudo-label was used in ``epoch``."""
        chosen = (self.used_in == epoch).nonzero().flatten()
        return chosen, self.label[chosen], self.confidence[chosen]


def check_semi_supervised(task: str, unlabeled_root: Path | None) -> None:
    """Refuse unlabelled images with a multi-label model before training: FixMatch's pseudo-label is one class per
    image, and a label per class above a threshold would teach every missed label as a negative."""
    if unlabeled_root is not None and task == "multilabel":
        raise UserError(f"--data.unlabeled_root {unlabeled_root}: semi-supervised learning from unlabelled images "
                        "is for multiclass data (one class per image); leave --data.unlabeled_root out for "
                        "multi-label data")


def write_pseudo_labels(path: Path, paths: Sequence[Path | str], class_names: Sequence[str], index: torch.Tensor,
                        label: torch.Tensor, confidence: torch.Tensor, epoch: int) -> None:
    """Write :data:`PSEUDO_LABELS_NAME`: one row per unlabelled image used in ``epoch`` (its latest pseudo-label),
    most confident first, written to a temporary file and renamed so a reader never sees half of it."""
    order = confidence.argsort(descending=True).tolist()
    rows = [(str(paths[int(index[i])]), class_names[int(label[i])], f"{float(confidence[i]):.4f}", epoch)
            for i in order]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "pseudo_label", "confidence", "epoch"])
        writer.writerows(rows)
    partial.replace(path)
