"""Foundation ConvNeXt weights (DINOv3, CLIP) end to end, offline, from randomly initialised weights saved in the
hub layout: their preprocessing, a new head where they have none (or a projection), layer decay for their depths.

timm registers these tags only on full-size architectures (convnext_base), so each test builds one: slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN

from tests.helpers import make_folder
from tests.model.test_hub_weights import run_python, write_hub_repo

FAMILIES = {
    # tag: (the hub file's classifier rows, the mean the tag's pretrained config gives)
    "convnext_base.dinov3_lvd1689m": (None, list(IMAGENET_DEFAULT_MEAN)),
    "convnext_base.clip_laion2b_augreg": (640, [0.48145466, 0.4578275, 0.40821073]),
}


@pytest.mark.slow
@pytest.mark.parametrize("tag", list(FAMILIES))
def test_foundation_weights_fit_end_to_end_with_their_preprocessing(tag: str, tmp_path: Path) -> None:
    head_rows, mean = FAMILIES[tag]
    torch.manual_seed(0)
    hub = timm.create_model(tag)  # the tag's own head: none (DINOv3) or CLIP's projection
    assert (hub.num_classes or None) == head_rows
    state = {k: v.contiguous() for k, v in hub.state_dict().items()}
    cache = tmp_path / "hub"
    write_hub_repo(cache, f"timm/{tag}", state)
    del hub
    torch.save({k: v for k, v in state.items() if not k.startswith("head.fc.")}, tmp_path / "backbone.pt")
    root = tmp_path / "images"
    make_folder(root / "train", 4)
    make_folder(root / "val", 2, seed=500)
    result = run_python(
        f"""
        import glob, torch
        from lit_convnext.cli.entry import main
        from lit_convnext.model.optim import official_layer_decay_groups
        main(["fit", "--data.root", {str(root)!r}, "--model.model_name", {tag!r}, "--model.pretrained", "true",
              "--model.freeze_backbone", "true", "--data.augmentation.enabled", "false", "--model.image_size", "64",
              "--data.batch_size", "4", "--data.num_workers", "0", "--trainer.max_epochs", "1",
              "--trainer.accelerator", "cpu", "--progress_bar.refresh_rate", "0", "--evaluation.enabled", "false"])
        [last] = glob.glob("runs/**/last.ckpt", recursive=True)
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        pre = ckpt["hyper_parameters"]["preprocessing"]
        assert pre["mean"] == {mean!r} and pre["interpolation"] == "bicubic", pre
        state = {{k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()}}
        assert state["head.fc.weight"].shape == (3, 1024), state["head.fc.weight"].shape
        expected = torch.load("backbone.pt", weights_only=True)
        assert all(torch.equal(state[k], v) for k, v in expected.items()), "the frozen backbone moved"
        from lit_convnext.model.classifier import ConvNeXtClassifier
        net = ConvNeXtClassifier({tag!r}, pretrained=False, num_classes=3).net
        scales = {{g["lr_scale"] for g in official_layer_decay_groups(net, 0.05, 0.8, "group")}}
        print("OK", len(scales))
        """,
        cache,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK 14" in result.stdout  # the stem, the official 12 layers and the head: none empty for 3-3-27-3
