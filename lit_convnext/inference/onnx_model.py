"""An exported ONNX model run by ONNX Runtime (the runner behind :class:`~lit_convnext.inference.exported.ExportedClassifier`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_convnext.errors import UserError
from lit_convnext.inference.metadata import INPUT_NAME, ModelCard


def open_session(path: Path, device: str = "cpu") -> tuple[Any, ModelCard]:
    """An ONNX Runtime session for ``path`` on ``device`` (``cpu`` or ``cuda[:N]``) and the model's card."""
    import onnxruntime as ort

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


def open_runner(path: Path, device: str = "cpu") -> tuple[Any, ModelCard]:
    """``(images -> logits, card)`` for an ``.onnx`` file."""
    session, card = open_session(path, device)

    def run(images: np.ndarray) -> np.ndarray:
        return session.run(None, {INPUT_NAME: images})[0]

    return run, card
