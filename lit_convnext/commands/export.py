"""``lit-convnext export``: a checkpoint's fine-tuned model as timm ``.safetensors`` (+ JSON) or as ONNX.

The format follows the output's suffix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from torch import nn

from lit_convnext.errors import UserError
from lit_convnext.weights import export_timm_weights, load_pretrained, read_checkpoint, sidecar_path

SUFFIXES = (".safetensors", ".onnx")


def export(ckpt_path: Path, output: Path, use_ema: bool = True, fp16: bool = False) -> Path:
    """Write the model of a lit-convnext checkpoint for use without this app.

    Args:
        ckpt_path: A ``.ckpt`` written by ``lit-convnext fit``.
        output: ``.safetensors``: the weights in timm layout, with ``<stem>.json`` beside it (model name, class
            names, preprocessing). ``.onnx``: an ONNX model (dynamic batch, calibration temperature applied) with
            class names and preprocessing in its metadata, checked against PyTorch with ONNX Runtime before it
            is written (needs ``pip install "lit-convnext[onnx]"``).
        use_ema: Export the EMA weights when the run had EMA on (they are what was validated); ``false`` exports
            the raw weights.
        fp16: ONNX only: store the weights in float16 (half the file; inputs and outputs stay float32).
    """
    output = Path(output)
    if output.suffix not in SUFFIXES:
        raise UserError(f"cannot tell the export format of {output}: name it .safetensors (timm weights) "
                        "or .onnx (ONNX model)")
    if fp16 and output.suffix != ".onnx":
        raise UserError(f"--fp16 applies to ONNX exports only; {output} is a .safetensors file")
    checkpoint = read_checkpoint(ckpt_path)
    hparams = checkpoint.get("hyper_parameters") or {}
    class_names = hparams.get("class_names")
    if not hparams.get("model_name") or not class_names:
        raise UserError(f"{ckpt_path} is not a lit-convnext checkpoint (no model name and class names in it)")
    net, ema_used, tensors = _network(ckpt_path, hparams, use_ema)
    kind = "EMA" if ema_used else "raw"
    if output.suffix == ".onnx":
        return _export_onnx(net, output, hparams, dict(checkpoint.get("calibration") or {}), fp16, kind)
    path = export_timm_weights(net, output, model_name=hparams["model_name"], class_names=list(class_names),
                               pretrained_cfg=dict(hparams.get("preprocessing") or {}))
    print(f"Wrote {tensors} tensors ({kind} weights) to {path}, class names and preprocessing to "
          f"{sidecar_path(path)}")
    return path


def _network(ckpt_path: Path, hparams: dict[str, Any], use_ema: bool) -> tuple[nn.Module, bool, int]:
    """The plain timm network with the checkpoint's (EMA) weights."""
    options = {}
    if hparams.get("layer_scale_init_value") is not None:
        options["ls_init_value"] = hparams["layer_scale_init_value"]
    net = timm.create_model(hparams["model_name"], pretrained=False, num_classes=len(hparams["class_names"]),
                            **options)
    report = load_pretrained(net, ckpt_path, use_ema=use_ema)
    return net.eval(), report.ema_used, report.tensors_loaded


def _export_onnx(net: nn.Module, output: Path, hparams: dict[str, Any], calibration: dict[str, Any], fp16: bool,
                 kind: str) -> Path:
    try:
        from lit_convnext.inference.onnx_export import export_onnx
    except ImportError as err:
        raise UserError(f"ONNX export needs {err.name}: pip install \"lit-convnext[onnx]\"") from err
    from lit_convnext import __version__
    from lit_convnext.inference.metadata import ModelCard

    temperature = float(calibration.pop("temperature", 1.0))
    card = ModelCard(model_name=hparams["model_name"], class_names=list(hparams["class_names"]),
                     preprocessing=dict(hparams["preprocessing"]), temperature=temperature,
                     task=hparams.get("task", "multiclass"), calibration=calibration)
    check = export_onnx(net, output, card, __version__, fp16=fp16)
    calibrated = f", temperature {temperature:g} applied" if temperature != 1.0 else ""
    print(f"Wrote {output} ({kind} weights{', fp16' if fp16 else ''}{calibrated}; ONNX Runtime matches PyTorch: "
          f"max logit difference {check.max_abs_diff:.2g} <= {check.tolerance:.2g})")
    return output
