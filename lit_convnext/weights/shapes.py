"""Shape helpers shared by the converters: read a model's tensor shapes and fit file tensors to them.

The same ConvNeXt weight is stored with different singleton dimensions by different code bases:
a pointwise layer is ``(out, in)`` as ``nn.Linear`` but ``(out, in, 1, 1)`` in timm's ``conv_mlp`` models,
layer scale is ``(C, 1, 1)`` in torchvision, GRN parameters are ``(1, 1, 1, C)`` in the official code.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

Shape = tuple[int, ...]


def model_shapes(model: nn.Module) -> dict[str, Shape]:
    """Map every state-dict key of ``model`` to its tensor shape."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def fit_shapes(state_dict: Mapping[str, torch.Tensor], shapes: Mapping[str, Shape]) -> dict[str, torch.Tensor]:
    """Reshape tensors that differ from the model only by size-1 dimensions; leave all others untouched.

    Real mismatches (other sizes) are kept as they are so the caller can report them.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        target = shapes.get(key)
        if target is not None and tuple(value.shape) != target and _squeezed(value.shape) == _squeezed(target):
            value = value.reshape(target)
        out[key] = value
    return out


def _squeezed(shape: tuple[int, ...] | torch.Size) -> Shape:
    """The shape without its size-1 dimensions."""
    return tuple(d for d in shape if d != 1)
