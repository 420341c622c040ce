"""OpenVINO IR (``.xml`` + ``.bin``): export with the model card in ``rt_info``, INT8 with NNCF, and the runner.

The weights are saved in float32 (OpenVINO's ``save_model`` compresses them to fp16 by default) and the CPU plugin
is compiled with ``INFERENCE_PRECISION_HINT=f32``: its default on CPUs with bf16/fp16 units runs ConvNeXt's
LayerNorm and GELU in reduced precision, which moves probabilities noticeably (see docs/deployment.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lit_convnext.errors import UserError
from lit_convnext.inference.metadata import INPUT_NAME, OUTPUT_NAME, ModelCard

#: The ``rt_info`` section that holds the model card's entries.
RT_INFO_SECTION = "lit_convnext"
#: CPU inference precision unless asked otherwise: f32 (see the module docstring).
INFERENCE_PRECISION = "f32"


def build(net: nn.Module, output: Path, card: ModelCard, version: str,
          calibration: torch.Tensor | None = None) -> None:
    """Write ``net`` (temperature applied, dynamic batch) to ``output`` (``.xml``, with its ``.bin``).

    ``calibration``: images to quantize to INT8 with (NNCF post-training quantization), ``None`` for float32.
    """
    import openvino as ov

    from lit_convnext.inference.onnx_export import Calibrated

    model = Calibrated(net.float().eval(), card.temperature).eval()
    channels, height, width = card.preprocessing["input_size"]
    example = torch.randn(2, channels, height, width, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ov_model = ov.convert_model(model, example_input=example, input=[(-1, channels, height, width)])
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    ov_model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    if calibration is not None:
        from lit_convnext.inference.quantize import quantize_openvino

        ov_model = quantize_openvino(ov_model, calibration)
    for key, value in card.to_props(version).items():
        ov_model.set_rt_info(value, [RT_INFO_SECTION, key])
    ov.save_model(ov_model, str(output), compress_to_fp16=False)


def read_card(model: Any, source: str) -> ModelCard:
    """The model card from an OpenVINO model's ``rt_info``."""
    props = {}
    if model.has_rt_info([RT_INFO_SECTION]):
        props = {key: value.astype(str) for key, value in model.get_rt_info()[RT_INFO_SECTION].items()}
    return ModelCard.from_props(props, source)


def open_runner(path: Path, device: str = "cpu", precision: str = INFERENCE_PRECISION) -> tuple[Any, ModelCard]:
    """``(images -> logits, card)`` for an ``.xml`` file, compiled for the CPU at ``precision``."""
    import openvino as ov

    path = Path(path).expanduser()
    if torch.device(device).type != "cpu":
        raise UserError(f"OpenVINO models run on cpu here, not {device}; pass device='cpu'")
    if not path.is_file() or not path.with_suffix(".bin").is_file():
        raise UserError(f"OpenVINO model {path} (with its {path.with_suffix('.bin').name}) does not exist; check "
                        "the path")
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load OpenVINO model {path}: {first}") from err
    card = read_card(model, str(path))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: images})[0], copy=True)

    return run, card
