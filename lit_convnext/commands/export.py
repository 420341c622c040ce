"""``lit-convnext export``: a checkpoint's fine-tuned weights as plain timm ``.safetensors`` + JSON sidecar."""

from __future__ import annotations

from pathlib import Path

import timm

from lit_convnext.errors import UserError
from lit_convnext.weights import export_timm_weights, load_pretrained, read_checkpoint, sidecar_path


def export(ckpt_path: Path, output: Path, use_ema: bool = True) -> Path:
    """Write the weights of a lit-convnext checkpoint in timm layout, loadable without this app.

    Args:
        ckpt_path: A ``.ckpt`` written by ``lit-convnext fit``.
        output: The ``.safetensors`` file to write; ``<stem>.json`` beside it gets the model name, class names
            and preprocessing.
        use_ema: Export the EMA weights when the run had EMA on (they are what was validated); ``false`` exports
            the raw weights.
    """
    hparams = read_checkpoint(ckpt_path).get("hyper_parameters") or {}
    class_names = hparams.get("class_names")
    if not hparams.get("model_name") or not class_names:
        raise UserError(f"{ckpt_path} is not a lit-convnext checkpoint (no model name and class names in it)")
    options = {}
    if hparams.get("layer_scale_init_value") is not None:
        options["ls_init_value"] = hparams["layer_scale_init_value"]
    net = timm.create_model(hparams["model_name"], pretrained=False, num_classes=len(class_names), **options)
    report = load_pretrained(net, ckpt_path, use_ema=use_ema)
    path = export_timm_weights(net, output, model_name=hparams["model_name"], class_names=list(class_names),
                               pretrained_cfg=dict(hparams.get("preprocessing") or {}))
    kind = "EMA" if report.ema_used else "raw"
    print(f"Wrote {report.tensors_loaded} tensors ({kind} weights) to {path}, class names and preprocessing to "
          f"{sidecar_path(path)}")
    return path
