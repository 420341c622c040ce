"""Every weight layout this app reads, renamed to timm's ConvNeXt keys, in one place.

Like timm's own ``checkpoint_filter_fn`` beside its model, each converter is a pure function
``(state_dict, shapes) -> state_dict`` that only renames (and, for FCMAE, densifies) tensors.
:func:`convert_to_timm` picks the converter for a detected layout and then fits size-1 dimensions to
the model's shapes once (a pointwise layer is ``(out, in)`` as ``nn.Linear`` but ``(out, in, 1, 1)`` in
timm's ``conv_mlp`` models, layer scale ``(C, 1, 1)`` in torchvision, GRN ``(1, 1, 1, C)`` officially).

* official facebookresearch ConvNeXt / ConvNeXt-V2: timm's ``checkpoint_filter_fn`` does the renaming;
  an FCMAE pre-training checkpoint's sparse (MinkowskiEngine) encoder is densified first, its decoder dropped;
* torchvision: ``features`` alternates stem/downsample (even) and stages (odd), each block a ``Sequential``
  (0 dwconv, 2 norm, 3/5 linears) with ``layer_scale``; ``classifier`` is (LayerNorm2d, Flatten, Linear);
* Hugging Face transformers ``ConvNext(V2)ForImageClassification`` (prefix ``convnext.`` / ``convnextv2.``)
  and the bare ``ConvNext(V2)Model``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

import torch

from lit_convnext.errors import UserError
from lit_convnext.private_api import timm_official_filter
from lit_convnext.weights import layouts
from lit_convnext.weights.shapes import Shape, fit_shapes

Converter = Callable[[Mapping[str, torch.Tensor], Mapping[str, Shape]], dict[str, torch.Tensor]]


def convert_to_timm(state_dict: Mapping[str, torch.Tensor], layout: str,
                    shapes: Mapping[str, Shape]) -> dict[str, torch.Tensor]:
    """Convert ``state_dict`` written in ``layout`` to timm keys, with shapes fitted to ``shapes`` (the model's)."""
    return fit_shapes(CONVERTERS[layout](state_dict, shapes), shapes)


def timm_to_timm(state_dict: Mapping[str, torch.Tensor], shapes: Mapping[str, Shape]) -> dict[str, torch.Tensor]:
    """timm layout already: nothing to rename."""
    return dict(state_dict)


# ------------------------------------------------------------------------------------------ official
def official_to_timm(state_dict: Mapping[str, torch.Tensor], shapes: Mapping[str, Shape]) -> dict[str, torch.Tensor]:
    """Rename an official ConvNeXt (V1 or fine-tuned V2) state dict to timm keys via timm's filter.

    timm's filter reshapes 2-D tensors by indexing ``model.state_dict()[key]``, which fails on keys the
    model lacks (e.g. weights of a deeper model). Feeding it one tensor at a time with a shape oracle
    keeps such mismatches for our own, clearer architecture check.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        out.update(timm_official_filter(key, value, shapes))
    return out


def fcmae_to_timm(state_dict: Mapping[str, torch.Tensor], shapes: Mapping[str, Shape]) -> dict[str, torch.Tensor]:
    """Convert an FCMAE pre-training checkpoint: keep the densified encoder, drop the decoder."""
    return official_to_timm(densify_fcmae_encoder(state_dict), shapes)


def densify_fcmae_encoder(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn ``encoder.*`` sparse-conv weights into the dense official ConvNeXt-V2 layout.

    MinkowskiEngine wraps layers (``norm.ln.*``, ``pwconv1.linear.*``), stores conv weights as
    ``kernel`` of shape (kernel volume, in, out) or (kernel volume, C) for depthwise convs, biases
    as (1, C), and enumerates kernel offsets with the first spatial axis (height) fastest.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith("encoder."):
            continue  # decoder, mask_token, proj, pred: pre-training only
        parts = key[len("encoder."):].split(".")
        if parts[-1] == "kernel":
            out[".".join(parts[:-1] + ["weight"])] = _dense_kernel(value, key)
            continue
        if len(parts) >= 2 and parts[-2] in ("ln", "linear"):
            del parts[-2]
        if parts[-1] == "bias" and value.ndim == 2 and "grn" not in parts:
            value = value.reshape(-1)
        out[".".join(parts)] = value
    return out


def _dense_kernel(kernel: torch.Tensor, key: str) -> torch.Tensor:
    """Dense (out, in, k, k) conv weight from a Minkowski kernel (K, in, out) or depthwise (K, C)."""
    if kernel.ndim == 3:
        per_offset = kernel.permute(2, 1, 0)  # (out, in, K)
    elif kernel.ndim == 2:
        per_offset = kernel.t().unsqueeze(1)  # (C, 1, K)
    else:
        raise UserError(f"FCMAE tensor {key} has shape {tuple(kernel.shape)}; expected a 2-D or 3-D sparse kernel")
    size = math.isqrt(per_offset.shape[-1])
    if size * size != per_offset.shape[-1]:
        raise UserError(f"FCMAE tensor {key} has {per_offset.shape[-1]} kernel offsets, not a square kernel")
    # offset index = w * size + h (height fastest), so the reshaped grid is (w, h): swap to (h, w)
    return per_offset.reshape(*per_offset.shape[:2], size, size).transpose(2, 3).contiguous()


# --------------------------------------------------------------------------------------- torchvision
_TV_BLOCK_PARTS: dict[str, str] = {"block.0": "conv_dw", "block.2": "norm", "block.3": "mlp.fc1", "block.5": "mlp.fc2"}
_TV_FEATURE = re.compile(r"^features\.(\d+)\.(\d+)\.(.+)$")


def torchvision_to_timm(state_dict: Mapping[str, torch.Tensor], shapes: Mapping[str, Shape]) -> dict[str, torch.Tensor]:
    """Rename a torchvision ConvNeXt state dict to timm keys; unknown keys pass through unchanged."""
    return {_torchvision_key(key): value for key, value in state_dict.items()}


def _torchvision_key(key: str) -> str:
    """The timm name of one torchvision key."""
    if key.startswith("classifier.0."):
        return "head.norm." + key[len("classifier.0."):]
    if key.startswith("classifier.2."):
        return "head.fc." + key[len("classifier.2."):]
    match = _TV_FEATURE.match(key)
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
    for part, timm_part in _TV_BLOCK_PARTS.items():
        if rest.startswith(part + "."):
            return f"{block}.{timm_part}{rest[len(part):]}"
    return key


# ------------------------------------------------------------------------------ Hugging Face transformers
_HF_PREFIXES: tuple[str, ...] = ("convnextv2.", "convnext.")
_HF_LAYER_PARTS: dict[str, str] = {
    "dwconv": "conv_dw",
    "layernorm": "norm",
    "pwconv1": "mlp.fc1",
    "pwconv2": "mlp.fc2",
    "grn": "mlp.grn",
}
_HF_STAGE = re.compile(r"^encoder\.stages\.(\d+)\.(downsampling_layer|layers)\.(\d+)\.(.+)$")


def hf_to_timm(state_dict: Mapping[str, torch.Tensor], shapes: Mapping[str, Shape]) -> dict[str, torch.Tensor]:
    """Rename a transformers ConvNeXt(V2) state dict to timm keys; unknown keys pass through unchanged."""
    return {_hf_key(key): value for key, value in state_dict.items()}


def _hf_key(key: str) -> str:
    """The timm name of one transformers key."""
    if key.startswith("classifier."):
        return "head.fc." + key[len("classifier."):]
    for prefix in _HF_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    if key.startswith("embeddings.patch_embeddings."):
        return "stem.0." + key[len("embeddings.patch_embeddings."):]
    if key.startswith("embeddings.layernorm."):
        return "stem.1." + key[len("embeddings.layernorm."):]
    if key.startswith("layernorm."):
        return "head.norm." + key[len("layernorm."):]
    match = _HF_STAGE.match(key)
    if not match:
        return key
    stage, kind, index, rest = match.groups()
    if kind == "downsampling_layer":
        return f"stages.{stage}.downsample.{index}.{rest}"
    block = f"stages.{stage}.blocks.{index}"
    if rest == "layer_scale_parameter":
        return f"{block}.gamma"
    part, _, param = rest.partition(".")
    return f"{block}.{_HF_LAYER_PARTS.get(part, part)}.{param}"


CONVERTERS: dict[str, Converter] = {
    layouts.TIMM: timm_to_timm,
    layouts.OFFICIAL_V1: official_to_timm,
    layouts.OFFICIAL_V2: official_to_timm,
    layouts.OFFICIAL_V2_FCMAE: fcmae_to_timm,
    layouts.TORCHVISION: torchvision_to_timm,
    layouts.HF_V1: hf_to_timm,
    layouts.HF_V2: hf_to_timm,
}
