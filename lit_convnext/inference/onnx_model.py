"""An exported ONNX model run by ONNX Runtime, behind the same interface as the trained LightningModule.

``OnnxClassifier`` has what ``predict`` and the predictor use from ``ConvNeXtClassifier``: ``class_names``,
``preprocessing``, ``forward`` (logits), and the post-processing both share (:mod:`lit_convnext.model.postprocess`),
so an ONNX model's rows are computed and written exactly like a checkpoint's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

from lit_convnext.errors import UserError
from lit_convnext.inference.metadata import INPUT_NAME, ModelCard
from lit_convnext.model.postprocess import ClassifierOutputs


def open_session(path: Path, device: str = "cpu") -> tuple[Any, ModelCard]:
    """An ONNX Runtime session for ``path`` on ``device`` (``cpu`` or ``cuda[:N]``) and the model's card."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise UserError('running an ONNX model needs onnxruntime: pip install "lit-convnext[onnx]"') from err
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"ONNX model {path} does not exist; check the path")
    device = torch.device(device)
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError(f"device {device} asked for, but this onnxruntime has no CUDA support: "
                            "pip install onnxruntime-gpu, or use device='cpu'")
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": device.index or 0})]
    elif device.type == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        raise UserError(f"ONNX models run on cpu or cuda, not {device}")
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types for unreadable models
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load ONNX model {path}: {first}") from err
    card = ModelCard.from_props(session.get_modelmeta().custom_metadata_map, str(path))
    return session, card


class OnnxClassifier(ClassifierOutputs, LightningModule):
    """An exported model (``lit-convnext export CKPT model.onnx``) for ``predict`` and the Python predictor.

    Args:
        path: The ``.onnx`` file.
        device: ``cpu`` or ``cuda[:N]`` (needs ``onnxruntime-gpu``).
    """

    def __init__(self, path: Path, device: str = "cpu") -> None:
        super().__init__()
        self.path = Path(path)
        self.session, card = open_session(self.path, device)
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
        logits = self.session.run(None, {INPUT_NAME: images.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(logits).to(images.device)
