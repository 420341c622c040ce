"""Convert Hugging Face transformers ConvNeXt / ConvNeXt-V2 state dicts to timm keys.

Covers ``ConvNextForImageClassification`` and ``ConvNextV2ForImageClassification`` (prefix
``convnext.`` / ``convnextv2.``) and the bare ``ConvNextModel`` / ``ConvNextV2Model`` (no prefix).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from lit_convnext.weights.shapes import fit_shapes, model_shapes

_PREFIXES: tuple[str, ...] = ("convnextv2.", "convnext.")
_LAYER_PARTS: dict[str, str] = {
    "dwconv": "conv_dw",
    "layernorm": "norm",
    "pwconv1": "mlp.fc1",
    "pwconv2": "mlp.fc2",
    "grn": "mlp.grn",
}
_STAGE = re.compile(r"^encoder\.stages\.(\d+)\.(downsampling_layer|layers)\.(\d+)\.(.+)$")


def hf_to_timm(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a transformers ConvNeXt(V2) state dict to timm keys; unknown keys pass through unchanged."""
    out = {_rename(key): value for key, value in state_dict.items()}
    return fit_shapes(out, model_shapes(model))


def _rename(key: str) -> str:
    """The timm name of one transformers key."""
    if key.startswith("classifier."):
        return "head.fc." + key[len("classifier."):]
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    if key.startswith("embeddings.patch_embeddings."):
        return "stem.0." + key[len("embeddings.patch_embeddings."):]
    if key.startswith("embeddings.layernorm."):
        return "stem.1." + key[len("embeddings.layernorm."):]
    if key.startswith("layernorm."):
        return "head.norm." + key[len("layernorm."):]
    match = _STAGE.match(key)
    if not match:
        return key
    stage, kind, index, rest = match.groups()
    if kind == "downsampling_layer":
        return f"stages.{stage}.downsample.{index}.{rest}"
    block = f"stages.{stage}.blocks.{index}"
    if rest == "layer_scale_parameter":
        return f"{block}.gamma"
    part, _, param = rest.partition(".")
    return f"{block}.{_LAYER_PARTS.get(part, part)}.{param}"
