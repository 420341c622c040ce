"""LiteRT (``.tflite``): export with ``litert-torch``, the model card as a flatbuffer metadata entry, and the runner.

The card is stored as one JSON object in the model's ``metadata`` list under the name ``lit_convnext`` (the
flatbuffer schema's own place for named data), so LiteRT's interpreter loads the file unchanged and any tool that
reads TFLite metadata finds it. The graph takes one image at a time (litert-torch cannot lower the global pooling
with a dynamic batch dimension); the runner feeds a batch image by image, as a phone app would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lit_convnext.errors import UserError
from lit_convnext.inference.metadata import ModelCard

#: Name of the metadata entry that holds the model card.
METADATA_NAME = "lit_convnext"


def build(net: nn.Module, output: Path, card: ModelCard, version: str,
          calibration: torch.Tensor | None = None) -> None:
    """Write ``net`` (temperature applied, one image per call) to ``output`` as LiteRT with the card in its metadata;
    with ``calibration`` images, quantized to INT8 (:func:`quantize`)."""
    import litert_torch

    from lit_convnext.inference.onnx_export import Calibrated

    model = Calibrated(net.float().eval(), card.temperature).eval()
    channels, height, width = card.preprocessing["input_size"]
    example = torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(0))
    edge = litert_torch.convert(model, (example,))
    edge.export(str(output))
    # The card goes in first: the quantizer keeps metadata, while re-packing its output (weights stored after the
    # flatbuffer at offsets) would break the file.
    write_metadata(Path(output), card.to_props(version))
    if calibration is not None:
        quantize(Path(output), calibration)


def quantize(path: Path, images: torch.Tensor) -> None:
    """Replace the float ``.tflite`` at ``path`` by its INT8 version: AI Edge Quantizer's static recipe (INT8
    weights and activations, min/max ranges calibrated on ``images``), so XNNPACK runs INT8 kernels.

    (litert-torch 0.10's own PT2E route kept float weights in our trial; the quantizer works on the converted file.)
    The recipe also makes the graph's input and output INT8: :func:`open_runner` (de)quantizes them with the
    scale and zero point stored in the file.
    """
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    signature, inputs = next(iter(Interpreter(model_path=str(path)).get_signature_list().items()))
    name = inputs["inputs"][0]
    data = {signature: [{name: images[i:i + 1].numpy()} for i in range(len(images))]}
    tool = quantizer.Quantizer(str(path), recipe.static_wi8_ai8())
    # torch's thread count: the quantizer's default (16 threads) oversubscribes small CPUs.
    ranges = tool.calibrate(data, num_threads=max(1, torch.get_num_threads()))
    partial = path.with_name(f".{path.name}.int8")
    tool.quantize(ranges, enable_progress_report=False).export_model(str(partial), overwrite=True)
    try:  # the quantizer can write a file LiteRT refuses (convnext_tiny with ai-edge-quantizer 0.10: docs)
        Interpreter(model_path=str(partial)).allocate_tensors()
    except ValueError as err:
        from importlib.metadata import version

        raise UserError(f"ai-edge-quantizer {version('ai-edge-quantizer')} wrote an INT8 .tflite that LiteRT cannot "
                        f"load ({str(err).splitlines()[0][:160]}); export --int8 to .onnx or .xml, or .tflite "
                        "without --int8") from err
    os.replace(partial, path)


def write_metadata(path: Path, props: dict[str, str]) -> None:
    """Add (or replace) the ``lit_convnext`` metadata entry of the ``.tflite`` file at ``path``."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(props, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)
    model.buffers = list(model.buffers or []) + [buffer]
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _name(m) != METADATA_NAME] + [entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    partial = path.with_name(f".{path.name}.meta")
    partial.write_bytes(builder.Output())
    os.replace(partial, path)


def read_card(path: Path) -> ModelCard:
    """The model card from a ``.tflite`` file's ``lit_convnext`` metadata entry."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    props: dict[str, str] = {}
    for entry in model.metadata or []:
        if _name(entry) == METADATA_NAME:
            props = json.loads(bytes(model.buffers[entry.buffer].data).decode("utf-8"))
    return ModelCard.from_props(props, str(path))


def _name(entry: Any) -> str:
    name = entry.name
    return name.decode() if isinstance(name, bytes) else str(name)


def open_runner(path: Path, device: str = "cpu", threads: int | None = None) -> tuple[Any, ModelCard]:
    """``(images -> logits, card)`` for a ``.tflite`` file, run by LiteRT's interpreter (XNNPACK on the CPU)."""
    from ai_edge_litert.interpreter import Interpreter

    path = Path(path).expanduser()
    if torch.device(device).type != "cpu":
        raise UserError(f"LiteRT models run on cpu here, not {device}; pass device='cpu'")
    if not path.is_file():
        raise UserError(f"LiteRT model {path} does not exist; check the path")
    card = read_card(path)
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads or torch.get_num_threads())
        interpreter.allocate_tensors()
    except ValueError as err:
        raise UserError(f"cannot load LiteRT model {path}: {str(err).splitlines()[0]}") from err
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    # An INT8 file (see quantize) takes and gives INT8 tensors: scale and zero point are in the file.
    in_scale, in_zero = source["quantization"] if source["dtype"] == np.int8 else (0.0, 0)
    out_scale, out_zero = target["quantization"] if target["dtype"] == np.int8 else (0.0, 0)

    def run(images: np.ndarray) -> np.ndarray:
        logits = []
        for image in images:  # the graph takes one image (see the module docstring)
            image = image[None]
            if in_scale:
                image = np.clip(np.round(image / in_scale) + in_zero, -128, 127).astype(np.int8)
            interpreter.set_tensor(source["index"], np.ascontiguousarray(image))
            interpreter.invoke()
            out = interpreter.get_tensor(target["index"])[0]
            logits.append((out.astype(np.float32) - out_zero) * out_scale if out_scale else out.copy())
        return np.stack(logits)

    return run, card
