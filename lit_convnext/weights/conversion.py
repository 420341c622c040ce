"""Dispatch a detected layout to its converter, producing a state dict in timm's ConvNeXt key layout.

Every converter is a pure ``(state_dict, model) -> state_dict`` function, like timm's
``checkpoint_filter_fn``: the model is only consulted for target shapes, never modified.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from lit_convnext.weights import layouts
from lit_convnext.weights.convert_hf import hf_to_timm
from lit_convnext.weights.convert_official import fcmae_to_timm, official_to_timm
from lit_convnext.weights.convert_torchvision import torchvision_to_timm
from lit_convnext.weights.shapes import fit_shapes, model_shapes

Converter = Callable[[Mapping[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


def timm_to_timm(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm layout already: only fit singleton dimensions (e.g. Linear vs 1x1-conv MLP weights)."""
    return fit_shapes(state_dict, model_shapes(model))


CONVERTERS: dict[str, Converter] = {
    layouts.TIMM: timm_to_timm,
    layouts.OFFICIAL_V1: official_to_timm,
    layouts.OFFICIAL_V2: official_to_timm,
    layouts.OFFICIAL_V2_FCMAE: fcmae_to_timm,
    layouts.TORCHVISION: torchvision_to_timm,
    layouts.HF_V1: hf_to_timm,
    layouts.HF_V2: hf_to_timm,
}


def convert_to_timm(state_dict: Mapping[str, torch.Tensor], layout: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert ``state_dict`` written in ``layout`` to timm keys and shapes fitted to ``model``."""
    converted = CONVERTERS[layout](state_dict, model)
    return fit_shapes(converted, model_shapes(model))
