"""Convert torchvision ``convnext_*`` state dicts to timm keys.

torchvision numbers its modules: ``features`` alternates stem/downsample (even) and stages (odd),
each block is a ``Sequential`` (0 dwconv, 2 norm, 3/5 linears) with a ``layer_scale`` of shape (C, 1, 1),
and ``classifier`` is (LayerNorm2d, Flatten, Linear).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from lit_convnext.weights.shapes import fit_shapes, model_shapes

_BLOCK_PARTS: dict[str, str] = {"block.0": "conv_dw", "block.2": "norm", "block.3": "mlp.fc1", "block.5": "mlp.fc2"}
_FEATURE = re.compile(r"^features\.(\d+)\.(\d+)\.(.+)$")


def torchvision_to_timm(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a torchvision ConvNeXt state dict to timm keys; unknown keys pass through unchanged."""
    out = {_rename(key): value for key, value in state_dict.items()}
    return fit_shapes(out, model_shapes(model))


def _rename(key: str) -> str:
    """The timm name of one torchvision key."""
    if key.startswith("classifier.0."):
        return "head.norm." + key[len("classifier.0."):]
    if key.startswith("classifier.2."):
        return "head.fc." + key[len("classifier.2."):]
    match = _FEATURE.match(key)
    if not match:
        return key
    feature, index, rest = int(match.group(1)), match.group(2), match.group(3)
    if feature == 0:
        return f"stem.{index}.{rest}"
    stage = feature // 2
    if feature % 2 == 0:
        return f"stages.{stage}.downsample.{index}.{rest}"
    block = f"stages.{stage}.blocks.{index}"
    if rest == "layer_scale":
        return f"{block}.gamma"
    for part, timm_part in _BLOCK_PARTS.items():
        if rest.startswith(part + "."):
            return f"{block}.{timm_part}{rest[len(part):]}"
    return key
