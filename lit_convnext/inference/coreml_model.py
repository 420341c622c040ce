"""Core ML (``.mlpackage``): conversion with ``coremltools`` and the model card in the user-defined metadata.

Core ML runs only on Apple devices: on other machines the package is converted and its metadata checked, and its
predictions are checked only where Core ML runs (see docs/deployment.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lit_convnext.errors import UserError
from lit_convnext.inference.metadata import INPUT_NAME, OUTPUT_NAME, ModelCard


def build(net: nn.Module, output: Path, card: ModelCard, version: str,
          calibration: torch.Tensor | None = None) -> None:
    """Write ``net`` (temperature applied, batch 1 to 64, float32 compute) as an ML program package."""
    import coremltools as ct

    from lit_convnext.inference.onnx_export import Calibrated

    if calibration is not None:
        raise UserError("--int8 is not supported for .mlpackage; export it without --int8")
    model = Calibrated(net.float().eval(), card.temperature).eval()
    channels, height, width = card.preprocessing["input_size"]
    example = torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        traced = torch.jit.trace(model, example)
    mlmodel = ct.convert(traced, inputs=[ct.TensorType(name=INPUT_NAME,
                                                       shape=(ct.RangeDim(1, 64), channels, height, width))],
                         outputs=[ct.TensorType(name=OUTPUT_NAME)], convert_to="mlprogram",
                         compute_precision=ct.precision.FLOAT32)
    mlmodel.user_defined_metadata.update(card.to_props(version))
    mlmodel.short_description = f"{card.model_name} classifier of {len(card.class_names)} classes (lit-convnext)"
    mlmodel.save(str(output))


def read_card(path: Path) -> ModelCard:
    """The model card from a ``.mlpackage``'s user-defined metadata (readable on any OS)."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    return ModelCard.from_props(dict(spec.description.metadata.userDefined), str(path))
