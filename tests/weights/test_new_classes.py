"""A head matched to a folder's classes by name: old rows kept bit-identical in the folder's order, new rows fresh."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from lit_convnext.errors import UserError
from lit_convnext.weights import export_timm_weights, load_pretrained

OLD = ["cat", "dog", "fox"]


def _export(model: nn.Module, path: Path, classes: list[str] = OLD) -> Path:
    return export_timm_weights(model, path, model_name="convnext_atto", class_names=classes, pretrained_cfg={})


def _lightning_ckpt(model: nn.Module, path: Path, classes: list[str] = OLD, task: str = "multiclass") -> Path:
    """What a fit of this app stores: the network under ``net.`` and the class names in the hyper-parameters."""
    state = {f"net.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"class_names": classes, "task": task}}, path)
    return path


@pytest.mark.parametrize("kind", ["ckpt", "safetensors"])
def test_old_rows_are_kept_by_name_in_the_folders_order_and_new_rows_stay_fresh(
    tmp_path: Path, kind: str, make_timm: Callable[..., nn.Module], fresh_timm: Callable[..., nn.Module],
) -> None:
    source = make_timm("convnext_atto", num_classes=3)
    path = (_export(source, tmp_path / "old.safetensors") if kind == "safetensors"
            else _lightning_ckpt(source, tmp_path / "old.ckpt"))
    classes = ["ant", "cat", "dog", "eel", "fox"]  # sorted folder order: old classes between new ones
    model = fresh_timm("convnext_atto", num_classes=5)
    fresh_w, fresh_b = model.head.fc.weight.detach().clone(), model.head.fc.bias.detach().clone()

    report = load_pretrained(model, path, class_names=classes)

    assert report.head == "by_name" and report.classes_kept == {"cat": 0, "dog": 1, "fox": 2}
    assert report.classes_added == ["ant", "eel"]
    w, b = model.head.fc.weight, model.head.fc.bias
    for row, name in enumerate(classes):
        if name in OLD:  # bit-identical to the old head's row of the same class
            assert torch.equal(w[row], source.head.fc.weight[OLD.index(name)]), name
            assert torch.equal(b[row], source.head.fc.bias[OLD.index(name)]), name
        else:  # the model's own fresh initialisation, untouched
            assert torch.equal(w[row], fresh_w[row]) and torch.equal(b[row], fresh_b[row]), name
    assert torch.equal(model.stem[0].weight, source.stem[0].weight)
    data = report.to_dict()
    assert data["classes_kept"] == {"cat": 0, "dog": 1, "fox": 2} and data["classes_added"] == ["ant", "eel"]
    assert json.loads(json.dumps(data)) == data
    assert "3 classes' rows kept by name, 2 new classes' rows added at init (ant, eel)" in report.summary()
    with torch.no_grad():  # the old classes' logits of the new model are the old model's, for the same image
        image = torch.randn(1, 3, 32, 32)
        assert torch.allclose(model.eval()(image)[0, [1, 2, 4]], source.eval()(image)[0], atol=1e-5)


def test_the_same_classes_in_another_order_are_reordered(tmp_path: Path, make_timm: Callable[..., nn.Module],
                                                         fresh_timm: Callable[..., nn.Module]) -> None:
    source = make_timm("convnext_atto", num_classes=3)
    model = fresh_timm("convnext_atto", num_classes=3)
    report = load_pretrained(model, _lightning_ckpt(source, tmp_path / "old.ckpt"), class_names=["fox", "dog", "cat"])
    assert report.head == "by_name" and report.classes_added == []
    assert torch.equal(model.head.fc.weight, source.head.fc.weight.flip(0))


def test_classes_the_folder_lacks_are_one_line_naming_the_differences(
    tmp_path: Path, make_timm: Callable[..., nn.Module], fresh_timm: Callable[..., nn.Module],
) -> None:
    path = _lightning_ckpt(make_timm("convnext_atto", num_classes=3), tmp_path / "old.ckpt")
    with pytest.raises(UserError) as error:
        load_pretrained(fresh_timm("convnext_atto", num_classes=3), path, class_names=["cat", "dog", "wolf"])
    message = str(error.value)
    assert "\n" not in message and "old.ckpt" in message
    assert "1 of them are not in the folder: [fox]" in message and "not in the file: [wolf]" in message
    assert "--model.pretrained_head new" in message
    report = load_pretrained(fresh_timm("convnext_atto", num_classes=3), path, class_names=["cat", "dog", "wolf"],
                             new_head=True)  # the way out the message names: the backbone alone
    assert report.head == "reset" and report.classes_kept == {}


def test_unrelated_classes_get_a_new_head(tmp_path: Path, make_timm: Callable[..., nn.Module],
                                          fresh_timm: Callable[..., nn.Module]) -> None:
    source = make_timm("convnext_atto", num_classes=3)
    model = fresh_timm("convnext_atto", num_classes=3)  # same count: the head fits by shape, not by meaning
    fresh = model.head.fc.weight.detach().clone()
    report = load_pretrained(model, _lightning_ckpt(source, tmp_path / "old.ckpt"), class_names=["a", "b", "c"])
    assert report.head == "reset" and "none of the folder's" in report.head_reason
    assert torch.equal(model.head.fc.weight, fresh)


def test_a_multilabel_checkpoint_is_matched_by_name_in_the_model(tmp_path: Path,
                                                                 make_timm: Callable[..., nn.Module]) -> None:
    from lit_convnext.model.classifier import ConvNeXtClassifier

    source = make_timm("convnext_atto", num_classes=3)
    path = _lightning_ckpt(source, tmp_path / "old.ckpt", task="multilabel")
    model = ConvNeXtClassifier("convnext_atto", pretrained=str(path), class_names=["cat", "dog", "fox", "owl"],
                               task="multilabel", image_size=32)
    assert model.load_report["head"] == "by_name" and model.load_report["classes_added"] == ["owl"]
    assert torch.equal(model.net.head.fc.weight[:3], source.head.fc.weight)


def test_a_sidecar_that_is_not_json_is_one_line(tmp_path: Path, make_timm: Callable[..., nn.Module],
                                                fresh_timm: Callable[..., nn.Module]) -> None:
    path = _export(make_timm("convnext_atto", num_classes=3), tmp_path / "old.safetensors")
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(UserError, match=r"old.json, the sidecar of .*old.safetensors, is not the JSON object"):
        load_pretrained(fresh_timm("convnext_atto", num_classes=3), path, class_names=OLD)
