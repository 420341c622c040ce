"""load_pretrained policy: head reset, architecture mismatch, missing/unexpected keys, the report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from timm.models.convnext import ConvNeXt
from torch import nn

from lit_convnext.errors import UserError
from lit_convnext.weights import LoadReport, load_pretrained

SameTensors = Callable[..., None]


def _save(model_or_sd: nn.Module | dict[str, torch.Tensor], path: Path) -> Path:
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def test_head_reset_keeps_backbone_bit_identical(
    tmp_path: Path, make_timm: Callable[..., nn.Module], fresh_timm: Callable[..., nn.Module],
    renamers: SimpleNamespace, same_tensors: SameTensors,
) -> None:
    source = make_timm("convnext_atto", num_classes=1000)
    path = tmp_path / "in1k.pth"
    torch.save({"model": renamers.official(source.state_dict())}, path)

    model = fresh_timm("convnext_atto", num_classes=7)
    fresh_head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.fc.")}
    report = load_pretrained(model, path)

    assert report.head == "reset"
    assert report.head_reason == "the file has 1000 classes, the model 7"
    assert report.tensors_loaded == len(model.state_dict()) - 2
    same_tensors(model, source, skip=("head.fc.",))
    assert model.state_dict()["head.fc.weight"].shape == (7, 320)
    for key, value in fresh_head.items():
        assert torch.equal(model.state_dict()[key], value)
    assert "reset (the file has 1000 classes, the model 7)" in report.summary()


def test_model_without_classifier(
    tmp_path: Path, make_timm: Callable[..., nn.Module], fresh_timm: Callable[..., nn.Module],
    same_tensors: SameTensors,
) -> None:
    source = make_timm("convnext_atto")
    model = fresh_timm("convnext_atto", num_classes=0)
    report = load_pretrained(model, _save(source, tmp_path / "w.safetensors"))
    assert report.head == "none"
    same_tensors(model, source)


@pytest.mark.parametrize(
    "source_kind, expected",
    [
        ("convnext_nano", "convnext_nano"),  # deeper and wider
        ("convnext_femto", "convnext_femto"),  # same depths, wider
        ("deeper_atto", "depths (2, 2, 8, 2)"),  # extra stages.2.blocks.6+ keys, same widths
        ("convnextv2_atto", "convnextv2_atto"),  # V2 weights (GRN) into a V1 model
    ],
)
def test_architecture_mismatch_names_both(
    tmp_path: Path, fresh_timm: Callable[..., nn.Module], source_kind: str, expected: str
) -> None:
    if source_kind == "deeper_atto":
        source: nn.Module = ConvNeXt(depths=(2, 2, 8, 2), dims=(40, 80, 160, 320), conv_mlp=True, num_classes=10)
    else:
        import timm

        source = timm.create_model(source_kind, num_classes=10)
    path = _save(source, tmp_path / f"{source_kind}.safetensors")
    model = fresh_timm("convnext_atto")
    with pytest.raises(UserError, match="different architecture") as info:
        load_pretrained(model, path, allow_missing=True)  # never tolerated, even with allow_missing
    message = str(info.value)
    assert "convnext_atto" in message and expected in message and path.name in message
    if source_kind == "convnext_femto":
        assert "stem.0.weight: file (48, 3, 4, 4) vs model (40, 3, 4, 4)" in message
    if source_kind == "deeper_atto":
        assert "stages.2.blocks.6." in message


def test_official_weights_of_a_bigger_model(
    tmp_path: Path, fresh_timm: Callable[..., nn.Module], renamers: SimpleNamespace
) -> None:
    """timm's filter would KeyError on keys the model lacks; the user gets the architecture message."""
    import timm

    source = timm.create_model("convnext_nano", num_classes=1000)
    path = tmp_path / "convnext_nano_official.pth"
    torch.save({"model": renamers.official(source.state_dict())}, path)
    with pytest.raises(UserError, match=r"look like a different architecture \(convnext_nano.*model convnext_atto"):
        load_pretrained(fresh_timm("convnext_atto"), path)


def test_missing_backbone_key(
    tmp_path: Path, make_timm: Callable[..., nn.Module], fresh_timm: Callable[..., nn.Module],
    same_tensors: SameTensors,
) -> None:
    source = make_timm("convnext_atto")
    sd = dict(source.state_dict())
    del sd["stages.1.blocks.0.norm.weight"]
    sd["stages.1.blocks.0.extra_scale"] = torch.ones(80)
    path = _save(sd, tmp_path / "partial.safetensors")

    with pytest.raises(UserError) as info:
        load_pretrained(fresh_timm("convnext_atto"), path)
    message = str(info.value)
    assert "partial.safetensors" in message and "stages.1.blocks.0.norm.weight" in message
    assert "1 model keys missing" in message and "1 unexpected" in message
    assert "stages.1.blocks.0.extra_scale" in message

    model = fresh_timm("convnext_atto")
    init = model.state_dict()["stages.1.blocks.0.norm.weight"].clone()
    report = load_pretrained(model, path, allow_missing=True)
    assert report.missing == ["stages.1.blocks.0.norm.weight"]
    assert report.unexpected == ["stages.1.blocks.0.extra_scale"]
    assert torch.equal(model.state_dict()["stages.1.blocks.0.norm.weight"], init)
    same_tensors(model, source, skip=("stages.1.blocks.0.norm.weight",))
    assert "missing (left at init): 1: stages.1.blocks.0.norm.weight" in report.summary()


def test_report_is_json_safe(
    tmp_path: Path, make_timm: Callable[..., nn.Module], fresh_timm: Callable[..., nn.Module]
) -> None:
    path = _save(make_timm("convnext_atto", num_classes=1000), tmp_path / "w.safetensors")
    report = load_pretrained(fresh_timm("convnext_atto", num_classes=3), str(path))
    assert isinstance(report, LoadReport)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["source"] == str(path) and data["layout"] == "timm" and data["head"] == "reset"
    assert data["tensors_loaded"] == 126 and data["missing"] == [] and data["ema_used"] is False
    assert len(report.summary().splitlines()) >= 3


def test_non_convnext_weights_are_rejected(tmp_path: Path, fresh_timm: Callable[..., nn.Module]) -> None:
    """torchvision-style keys of another network (EfficientNet-like blocks) are not ConvNeXt weights."""
    sd = {
        "features.0.0.weight": torch.randn(32, 3, 3, 3),
        "features.1.0.block.0.0.weight": torch.randn(32, 1, 3, 3),
        "features.1.0.block.1.fc1.weight": torch.randn(8, 32, 1, 1),
        "classifier.1.weight": torch.randn(1000, 1280),
    }
    path = tmp_path / "efficientnet.pth"
    torch.save(sd, path)
    with pytest.raises(UserError, match="efficientnet.pth hold no ConvNeXt blocks"):
        load_pretrained(fresh_timm("convnext_atto"), path)


def test_torch_compiled_model(
    tmp_path: Path, make_timm: Callable[..., nn.Module], fresh_timm: Callable[..., nn.Module],
    same_tensors: SameTensors,
) -> None:
    source = make_timm("convnext_atto")
    model = fresh_timm("convnext_atto")
    report = load_pretrained(torch.compile(model), _save(source, tmp_path / "w.safetensors"))
    assert report.tensors_loaded == len(model.state_dict()) and report.head == "kept"
    same_tensors(model, source)
