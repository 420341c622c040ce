"""Export a fine-tuned network to ONNX with its classes and preprocessing, and check it before writing it.

torch's ``torch.export``-based exporter (``dynamo=True``, onnxscript) writes the graph with a dynamic batch
dimension; the temperature of a calibrated model is divided into the logits inside the graph, so any runtime
gets calibrated probabilities from a plain softmax. The file is only written once ONNX Runtime reproduces the
PyTorch logits on sample inputs.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lit_convnext.errors import UserError
from lit_convnext.inference.metadata import INPUT_NAME, OUTPUT_NAME, ModelCard
from lit_convnext.private_api import uncompiled

#: Largest allowed max absolute logit difference between ONNX Runtime and PyTorch.
FP32_TOLERANCE = 1e-4
#: fp16 keeps about 3 significant digits and the error grows with depth: checked relative to the logit range.
FP16_RELATIVE_TOLERANCE = 2e-2


class Calibrated(nn.Module):
    """The network with its logits divided by the fitted temperature (a constant in the graph)."""

    def __init__(self, net: nn.Module, temperature: float) -> None:
        super().__init__()
        self.net = net
        self.temperature = temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.net(images)
        return logits / self.temperature if self.temperature != 1.0 else logits


@dataclass(frozen=True)
class OnnxCheck:
    """Outcome of the self-check: the largest logit difference seen and the tolerance it was held to."""

    max_abs_diff: float
    tolerance: float
    fp16: bool


def export_onnx(net: nn.Module, output: Path, card: ModelCard, version: str, fp16: bool = False,
                opset: int | None = None) -> OnnxCheck:
    """Write ``net`` (eval mode, fp32) to ``output`` as ONNX with ``card`` in its metadata, after checking it.

    Raises ``UserError`` (and writes nothing) when ONNX Runtime's logits differ from PyTorch's by more than
    :data:`FP32_TOLERANCE` (fp32) or :data:`FP16_RELATIVE_TOLERANCE` of the logit range (fp16).
    """
    import onnx

    output = Path(output).expanduser()
    model = Calibrated(uncompiled(net).float().eval(), card.temperature).eval()
    channels, height, width = card.preprocessing["input_size"]
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, channels, height, width, generator=generator)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet():  # the exporter prints its progress; the command prints one summary instead
        program = torch.onnx.export(
            model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},), opset_version=opset, verbose=False,
        )
    proto = program.model_proto
    if fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # Inputs and outputs stay float32, so callers feed and read the same arrays as the fp32 model.
        proto = convert_float_to_float16(proto, keep_io_types=True)
    onnx.helper.set_model_props(proto, card.to_props(version))
    # Checked as a temporary file next to the target, renamed only when it passes.
    partial = output.with_name(f".{output.name}.partial")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(proto, str(partial))  # one self-contained file (weights inline; fine below 2 GB)
        check = _check(model, partial, torch.randn(3, channels, height, width, generator=generator), fp16)
        if check.max_abs_diff > check.tolerance:
            raise UserError(
                f"the ONNX export of {card.model_name} does not reproduce the PyTorch model: max absolute logit "
                f"difference {check.max_abs_diff:.3g} > {check.tolerance:.3g}{' (fp16)' if fp16 else ''}; "
                f"{output} was not written (try without --fp16, or another --opset)"
            )
        os.replace(partial, output)
    except OSError as err:
        raise UserError(f"cannot write {output}: {err.strerror or err}; check the folder") from err
    finally:
        partial.unlink(missing_ok=True)
    return check


def _check(model: nn.Module, path: Path, images: torch.Tensor, fp16: bool) -> OnnxCheck:
    """Compare ONNX Runtime with PyTorch on a batch of 3 and on a single image (both differ from the export's 2)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = model(images).numpy()
    diffs = []
    for batch in (images, images[:1]):
        got = session.run(None, {INPUT_NAME: batch.numpy()})[0]
        diffs.append(float(abs(got - expected[: len(batch)]).max()))
    span = float(abs(expected).max())
    tolerance = FP16_RELATIVE_TOLERANCE * max(span, 1.0) if fp16 else FP32_TOLERANCE
    return OnnxCheck(max(diffs), tolerance, fp16)


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def build(net: nn.Module, output: Path, card: ModelCard, version: str, calibration: torch.Tensor | None = None,
          fp16: bool = False) -> OnnxCheck:
    """Write ``net`` to ``output`` as ONNX (checked against PyTorch on random inputs), then, with ``calibration``
    images, quantize it in place to INT8 (ONNX Runtime static QDQ, :mod:`lit_convnext.inference.quantize`)."""
    check = export_onnx(net, output, card, version, fp16=fp16)
    if calibration is not None:
        import onnx

        from lit_convnext.inference.quantize import quantize_onnx

        float_path = output.with_name(f"{output.stem}.fp32.onnx")
        os.replace(output, float_path)
        quantize_onnx(str(float_path), str(output), calibration, keep_float=None)
        float_path.unlink()
        proto = onnx.load(str(output))
        onnx.helper.set_model_props(proto, card.to_props(version))  # the quantizer adds its own entries
        onnx.save_model(proto, str(output))
    return check
