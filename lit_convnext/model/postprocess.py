"""What a classifier's logits become in validate, test, predict and the Python predictor: test-time augmentation,
calibrated probabilities, multi-label decisions, and ``predict_step``'s rows.

Shared by the trained :class:`~lit_convnext.model.classifier.ConvNeXtClassifier` and the exported
:class:`~lit_convnext.inference.exported.ExportedClassifier`, so a checkpoint's rows and an exported model's are
computed alike.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class ClassifierOutputs:
    """Mixin for a LightningModule whose ``forward`` returns logits and that has ``class_names``, ``hparams["task"]``,
    ``calibration`` (``temperature``, multi-label ``thresholds``), ``threshold`` and ``tta``."""

    class_names: list[str] | None
    calibration: dict[str, Any]
    threshold: float | None
    tta: bool

    @property
    def multilabel(self) -> bool:
        return self.hparams.get("task") == "multilabel"

    def predict_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> dict[str, Any]:
        images, indices = batch[0], batch[1]
        errors = list(batch[2]) if len(batch) > 2 else [""] * len(indices)  # unreadable files (see UnlabeledImages)
        return {"probabilities": self.probabilities(self.evaluation_logits(images)), "indices": indices,
                "errors": errors}

    def evaluation_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for validate/test/predict; with ``tta`` the log of the mean probability over image and mirror.

        Log-probabilities are valid logits (softmax returns the averaged probabilities), so the loss, metrics,
        callbacks and the temperature treat both cases alike.
        """
        logits = self(images)
        if not self.tta:
            return logits
        if self.multilabel:  # each class's probability averaged over both views, as logits again
            mean = (logits.float().sigmoid() + self(images.flip(-1)).float().sigmoid()) / 2
            return torch.logit(mean, eps=1e-6)
        views = torch.stack([logits.float().log_softmax(-1), self(images.flip(-1)).float().log_softmax(-1)])
        return views.logsumexp(dim=0) - math.log(len(views))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities as validate, test and predict report them (calibrated when a temperature was fitted;
        multi-label: each class's sigmoid, independent of the others)."""
        if self.multilabel:
            return logits.float().sigmoid()
        return (logits.float() / float(self.calibration.get("temperature", 1.0))).softmax(dim=-1)

    def decision_thresholds(self) -> torch.Tensor:
        """Multi-label: per-class thresholds in use: ``threshold`` when set, else the tuned ones, else 0.5."""
        n = len(self.class_names or [])
        if self.threshold is not None:
            values = [float(self.threshold)] * n
        else:
            values = list(self.calibration.get("thresholds") or [0.5] * n)
        return torch.tensor(values, device=self.device)

    def decide(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Multi-label: which classes each image has (probability at or above its class's threshold)."""
        return probabilities >= self.decision_thresholds().to(probabilities.device)
