"""Convert facebookresearch ConvNeXt / ConvNeXt-V2 checkpoints (incl. FCMAE pre-training) to timm keys.

The renaming of the dense official layouts is timm's own ``checkpoint_filter_fn``; this module only
adapts how it is called and adds what timm lacks: densifying the sparse (MinkowskiEngine) encoder
of an FCMAE pre-training checkpoint, whose decoder is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace

import torch
from timm.models.convnext import checkpoint_filter_fn
from torch import nn

from lit_convnext.errors import UserError
from lit_convnext.weights.shapes import Shape, model_shapes


def official_to_timm(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an official ConvNeXt (V1 or fine-tuned V2) state dict to timm keys via timm's filter.

    timm's filter reshapes 2-D tensors by indexing ``model.state_dict()[key]``, which fails on keys the
    model lacks (e.g. weights of a deeper model). Feeding it one tensor at a time with a shape oracle
    keeps such mismatches for our own, clearer architecture check.
    """
    shapes = model_shapes(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        out.update(checkpoint_filter_fn({key: value}, _ShapeOracle(shapes, value)))  # type: ignore[no-untyped-call]
    return out


def fcmae_to_timm(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert an FCMAE pre-training checkpoint: keep the densified encoder, drop the decoder."""
    return official_to_timm(densify_fcmae_encoder(state_dict), model)


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


class _ShapeOracle:
    """Stands in for the model in timm's filter: answers ``state_dict()[key].shape``.

    Returns the model's shape when the model has the key with the same number of elements,
    otherwise the tensor's own shape, so the filter never fails on a mismatch.
    """

    def __init__(self, shapes: Mapping[str, Shape], value: torch.Tensor) -> None:
        self._shapes = shapes
        self._value = value

    def state_dict(self) -> "_ShapeOracle":
        return self

    def __getitem__(self, key: str) -> SimpleNamespace:
        shape = self._shapes.get(key)
        if shape is None or math.prod(shape) != self._value.numel():
            shape = tuple(self._value.shape)
        return SimpleNamespace(shape=shape)
