"""export_timm_weights: plain timm and load_pretrained both load the exported file back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from torch import nn

from lit_convnext.errors import UserError
from lit_convnext.weights import export_timm_weights, load_pretrained, sidecar_path

CLASSES = ["cat", "dog", "ferret"]


def _logits(model: nn.Module) -> torch.Tensor:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture
def exported(tmp_path: Path, make_timm: Callable[..., nn.Module]) -> tuple[nn.Module, Path]:
    model = make_timm("convnextv2_atto", num_classes=len(CLASSES))
    cfg = dict(model.pretrained_cfg, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=0.9,
               input_size=(3, 64, 64), interpolation="bilinear")
    path = export_timm_weights(model, tmp_path / "out" / "best.safetensors", model_name="convnextv2_atto",
                               class_names=CLASSES, pretrained_cfg=cfg)
    return model, path


def test_plain_timm_loads_export(exported: tuple[nn.Module, Path]) -> None:
    model, path = exported
    n = len(CLASSES)
    loaded = timm.create_model("convnextv2_atto", pretrained=True, num_classes=n,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=n))
    assert torch.equal(_logits(loaded), _logits(model))

    # the shorter call loads the backbone too; timm then re-initialises a head of a non-default size
    backbone_only = timm.create_model("convnextv2_atto", pretrained=True, num_classes=n,
                                      pretrained_cfg_overlay=dict(file=str(path)))
    ref = model.state_dict()
    for key, value in backbone_only.state_dict().items():
        if not key.startswith("head.fc."):
            assert torch.equal(value, ref[key]), key


def test_load_pretrained_reads_export(
    exported: tuple[nn.Module, Path], fresh_timm: Callable[..., nn.Module]
) -> None:
    model, path = exported
    target = fresh_timm("convnextv2_atto", num_classes=len(CLASSES))
    report = load_pretrained(target, path)
    assert report.layout == "timm" and report.head == "kept"
    assert torch.equal(_logits(target), _logits(model))


def test_sidecar_and_file_format(exported: tuple[nn.Module, Path]) -> None:
    model, path = exported
    sidecar = sidecar_path(path)
    assert sidecar == path.parent / "best.json" and sidecar.is_file()
    data = json.loads(sidecar.read_text())
    assert data["model_name"] == "convnextv2_atto" and data["class_names"] == CLASSES
    assert data["num_classes"] == 3 and data["weights"] == "best.safetensors"
    cfg = data["pretrained_cfg"]
    assert cfg["mean"] == [0.5, 0.5, 0.5] and cfg["std"] == [0.25, 0.25, 0.25]
    assert cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 0.9 and cfg["input_size"] == [3, 64, 64]
    assert cfg["num_classes"] == 3 and "url" not in cfg and "hf_hub_id" not in cfg
    assert "pretrained_cfg_overlay=dict(file='best.safetensors', num_classes=3)" in data["timm_usage"]
    with safe_open(str(path), framework="pt") as fh:
        assert set(fh.keys()) == set(model.state_dict())
        assert fh.metadata()["model_name"] == "convnextv2_atto"


def test_export_rejects_bad_arguments(tmp_path: Path, make_timm: Callable[..., nn.Module]) -> None:
    model = make_timm("convnext_atto", num_classes=3)
    with pytest.raises(UserError, match="model.pth must end with .safetensors"):
        export_timm_weights(model, tmp_path / "model.pth", model_name="convnext_atto", class_names=CLASSES,
                            pretrained_cfg={})
    with pytest.raises(UserError, match="3 classes but 2 class names"):
        export_timm_weights(model, tmp_path / "m.safetensors", model_name="convnext_atto", class_names=["a", "b"],
                            pretrained_cfg={})
