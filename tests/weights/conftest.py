"""Shared fixtures for the weights tests: tiny timm models with non-trivial weights, layout renamers.

The renamers write a timm state dict in another code base's layout (official ConvNeXt / V2 / FCMAE),
following the module structure of the official model files, so the loader can be checked against
a known source model without downloading anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import timm
import torch
from torch import nn

MakeModel = Callable[..., nn.Module]


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite every parameter with distinctive random values so a misplaced tensor changes the output.

    Fresh init has layer scale 1e-6 and GRN at zero, which would hide mistakes in the blocks. Values
    are scaled by fan-in so activations stay in a sane range through all blocks.
    """
    assert not list(model.buffers()), "randomize_ only fills parameters"
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("gamma", "layer_scale", "layer_scale_parameter"):
                param.uniform_(0.3, 0.7, generator=gen)
            elif "grn" in name:
                param.normal_(0.0, 0.2, generator=gen)
            elif param.ndim == 1 and leaf == "weight":  # norm scales
                param.normal_(1.0, 0.1, generator=gen)
            elif param.ndim == 1:
                param.normal_(0.0, 0.05, generator=gen)
            else:
                param.normal_(0.0, (param[0].numel()) ** -0.5, generator=gen)
    return model.eval()


def build(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """Build ``factory()`` without its (slow) default init, then fill it with ``randomize_``."""
    with torch.device("meta"):
        model = factory()
    return randomize_(model.to_empty(device="cpu"), seed)


@pytest.fixture
def randomize() -> Callable[..., nn.Module]:
    """``randomize(factory, seed=0)``: build a model from a zero-argument factory with random weights."""
    return build


@pytest.fixture
def make_timm() -> MakeModel:
    """Factory: ``make_timm(name, num_classes=10, seed=0)`` -> randomized timm model in eval mode."""

    def make(name: str, num_classes: int = 10, seed: int = 0, **kwargs: object) -> nn.Module:
        return build(lambda: timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs), seed)

    return make


@pytest.fixture
def fresh_timm() -> MakeModel:
    """Factory for the model that receives weights: same builder, a seed no source model uses."""

    def make(name: str, num_classes: int = 10, **kwargs: object) -> nn.Module:
        return build(lambda: timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs), 1234)

    return make


def timm_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm keys -> facebookresearch ConvNeXt / ConvNeXt-V2 keys (Linear pointwise layers, (1,1,1,C) GRN)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = key
        new = re.sub(r"^stem\.", "downsample_layers.0.", new)
        new = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", new)
        new = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", new)
        new = new.replace(".conv_dw.", ".dwconv.").replace(".mlp.fc1.", ".pwconv1.").replace(".mlp.fc2.", ".pwconv2.")
        if ".mlp.grn." in new:
            new = new.replace(".mlp.grn.weight", ".grn.gamma").replace(".mlp.grn.bias", ".grn.beta")
            value = value.reshape(1, 1, 1, -1)
        if ".pwconv" in new and new.endswith(".weight"):
            value = value.reshape(value.shape[0], value.shape[1])  # 1x1 conv (conv_mlp) -> Linear
        new = re.sub(r"^head\.norm\.", "norm.", new)
        new = re.sub(r"^head\.fc\.", "head.", new)
        out[new] = value.clone()
    return out


def official_v2_to_fcmae(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official dense V2 keys -> FCMAE pre-training checkpoint with a MinkowskiEngine sparse encoder.

    Kernels become (kernel volume, in, out) / (kernel volume, C) with offset index ``w * k + h``,
    biases (1, C), LayerNorm/Linear wrapped as ``.ln``/``.linear``; head and final norm are absent
    and decoder tensors are added.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in official.items():
        if key.startswith(("head.", "norm.")):
            continue
        if key.startswith("downsample_layers.0."):
            out["encoder." + key] = value.clone()  # stem stays a dense conv + LayerNorm
            continue
        parts = key.split(".")
        leaf = parts[-1]
        if key.startswith("downsample_layers.") and parts[2] == "0":
            out["encoder." + ".".join(parts[:-1] + ["ln", leaf])] = value.clone()
        elif key.startswith("downsample_layers.") and parts[2] == "1":
            if leaf == "weight":  # (out, in, k, k) -> (k*k, in, out)
                k = value.shape[-1]
                out["encoder." + ".".join(parts[:-1] + ["kernel"])] = (
                    value.transpose(2, 3).reshape(value.shape[0], value.shape[1], k * k).permute(2, 1, 0).clone()
                )
            else:
                out["encoder." + key] = value.reshape(1, -1).clone()
        elif parts[-2] == "dwconv":
            if leaf == "weight":  # (C, 1, k, k) -> (k*k, C)
                k = value.shape[-1]
                out["encoder." + ".".join(parts[:-1] + ["kernel"])] = (
                    value.transpose(2, 3).reshape(value.shape[0], k * k).t().clone()
                )
            else:
                out["encoder." + key] = value.reshape(1, -1).clone()
        elif parts[-2] == "norm":
            out["encoder." + ".".join(parts[:-1] + ["ln", leaf])] = value.clone()
        elif parts[-2] in ("pwconv1", "pwconv2"):
            out["encoder." + ".".join(parts[:-1] + ["linear", leaf])] = value.clone()
        elif parts[-2] == "grn":
            out["encoder." + key] = value.reshape(1, -1).clone()
        else:
            raise AssertionError(f"unhandled official key {key}")
    out["mask_token"] = torch.zeros(1, 64, 1, 1)
    out["proj.weight"] = torch.randn(64, 320, 1, 1)
    out["proj.bias"] = torch.zeros(64)
    out["decoder.0.dwconv.weight"] = torch.randn(64, 1, 7, 7)
    out["decoder.0.grn.gamma"] = torch.zeros(1, 1, 1, 256)
    out["pred.weight"] = torch.randn(32 * 32 * 3, 64, 1, 1)
    out["pred.bias"] = torch.zeros(32 * 32 * 3)
    return out


@pytest.fixture
def renamers() -> SimpleNamespace:
    """``renamers.official(sd)`` and ``renamers.fcmae(official_sd)``."""
    return SimpleNamespace(official=timm_to_official, fcmae=official_v2_to_fcmae)


def assert_same_tensors(model: nn.Module, reference: nn.Module, skip: tuple[str, ...] = ()) -> None:
    """Every state-dict tensor of ``model`` equals ``reference``'s exactly (except keys starting with ``skip``)."""
    ref = reference.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith(skip):
            continue
        assert torch.equal(value, ref[key]), key


@pytest.fixture
def same_tensors() -> Callable[..., None]:
    """``same_tensors(model, reference, skip=())`` asserts bit-identical weights."""
    return assert_same_tensors
