"""An exported model (ONNX, OpenVINO IR, LiteRT) run by its own runtime, behind the trained LightningModule's interface.

``ExportedClassifier`` has what ``predict`` and the predictor use from ``ConvNeXtClassifier``: ``class_names``,
``preprocessing``, ``forward`` (logits), and the post-processing both share (:mod:`lit_convnext.model.postprocess`),
so an exported model's rows are computed and written exactly like a checkpoint's. Each format's module supplies
``open_runner(path, device) -> (runner, card)``: a function from a float32 NCHW batch to logits, and the model card
read from the file's own metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule

from lit_convnext.inference import formats
from lit_convnext.model.postprocess import ClassifierOutputs

#: A loaded exported model: float32 NCHW images in, logits out (temperature already applied).
Runner = Callable[[np.ndarray], np.ndarray]


class ExportedClassifier(ClassifierOutputs, LightningModule):
    """A file written by ``lit-convnext export`` (``.onnx``, ``.xml``, ``.tflite``) for ``predict`` and the predictor.

    Args:
        path: The exported model; its suffix says the format.
        device: ``cpu``, or ``cuda[:N]`` for ONNX models (needs ``onnxruntime-gpu``).
    """

    def __init__(self, path: Path, device: str = "cpu") -> None:
        super().__init__()
        self.path = Path(path)
        self.format = formats.format_of(self.path, "model")
        self.runner, card = formats.runtime(self.format).open_runner(self.path, device)
        self.card = card
        self.class_names = card.class_names
        self.preprocessing = card.preprocessing
        self.hparams["task"] = card.task
        self.hparams["model_name"] = card.model_name
        # The temperature is already inside the graph; what remains (e.g. thresholds) applies as usual.
        self.calibration: dict[str, Any] = dict(card.calibration)
        self.threshold: float | None = None  # multi-label: as ConvNeXtClassifier.threshold
        self.tta = False  # --tta: as ConvNeXtClassifier.tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.runner(np.ascontiguousarray(images.detach().float().cpu().numpy()))
        return torch.from_numpy(np.asarray(logits, dtype=np.float32)).to(images.device)


def is_exported(path: str | Path | None) -> bool:
    """Whether ``path`` names an exported model (by its suffix) rather than a checkpoint."""
    return path is not None and Path(path).suffix.lower() in formats.FORMATS
