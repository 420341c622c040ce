"""Numerical parity: weights written by torchvision and Hugging Face give the same logits in timm."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from lit_convnext.weights import load_pretrained

transformers = pytest.importorskip("transformers")

TOL = 1e-4
ATTO = dict(depths=[2, 2, 6, 2], hidden_sizes=[40, 80, 160, 320])


def _logits(model: nn.Module, seed: int = 5) -> torch.Tensor:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model.eval()(x)
    return out.logits if hasattr(out, "logits") else out


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return (_logits(a) - _logits(b)).abs().max().item()


def test_torchvision_convnext_tiny_parity(
    tmp_path: Path, fresh_timm: Callable[..., nn.Module], randomize: Callable[..., nn.Module]
) -> None:
    reference = randomize(lambda: torchvision.models.convnext_tiny(weights=None, num_classes=10))
    path = tmp_path / "tv_convnext_tiny.pth"
    torch.save(reference.state_dict(), path)

    model = fresh_timm("convnext_tiny", num_classes=10)
    report = load_pretrained(model, path)

    assert report.layout == "torchvision" and report.head == "kept"
    assert report.tensors_loaded == len(model.state_dict())
    assert _max_diff(model, reference) <= TOL


def _hf_model(version: str, randomize: Callable[..., nn.Module]) -> nn.Module:
    """Tiny HF ConvNeXt(V2) with the convnext(v2)_atto shape; default eps/layer-scale settings kept."""
    if version == "v1":
        config = transformers.ConvNextConfig(num_labels=10, **ATTO)
        return randomize(lambda: transformers.ConvNextForImageClassification(config))
    config = transformers.ConvNextV2Config(num_labels=10, **ATTO)
    return randomize(lambda: transformers.ConvNextV2ForImageClassification(config))


@pytest.mark.parametrize("version, timm_name", [("v1", "convnext_atto"), ("v2", "convnextv2_atto")])
@pytest.mark.parametrize("form", ["folder", "bin_file"])
def test_hf_transformers_parity(
    tmp_path: Path,
    fresh_timm: Callable[..., nn.Module],
    randomize: Callable[..., nn.Module],
    version: str,
    timm_name: str,
    form: str,
) -> None:
    reference = _hf_model(version, randomize)
    folder = tmp_path / f"hf_{version}"
    if form == "bin_file":
        folder.mkdir()
        torch.save(reference.state_dict(), folder / "pytorch_model.bin")
        source: Path = folder / "pytorch_model.bin"
    else:
        reference.save_pretrained(folder)  # writes model.safetensors + config.json
        source = folder

    model = fresh_timm(timm_name, num_classes=10)
    report = load_pretrained(model, source)

    assert report.layout == f"hf-transformers-convnext{'v2' if version == 'v2' else ''}"
    assert report.head == "kept" and not report.missing and not report.unexpected
    assert report.tensors_loaded == len(model.state_dict())
    assert _max_diff(model, reference) <= TOL
