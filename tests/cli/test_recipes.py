"""The official-recipe overlays hold every published fine-tuning value, and load as configured.

PUBLISHED is written from the official repositories' TRAINING.md commands (defaults from their main.py /
main_finetune.py where a flag is not given): facebookresearch/ConvNeXt "Fine-tune from ImageNet-22K pre-training"
at 224 px, and facebookresearch/ConvNeXt-V2 "ImageNet-1K Fine-Tuning". ``ema`` is the constant EMA decay, or
``None`` where the recipe has no EMA; ``lr`` is the lr at ``ref`` images (V1: absolute at its batch of 512;
V2: ``--blr`` per 256).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tests.helpers import REPO, TINY_MODEL

from lit_convnext.callbacks.ema import EMA
from lit_convnext.cli.lightning_cli import build_cli

OFFICIAL = REPO / "configs" / "official"
MODELS = REPO / "configs" / "models"

V1_22K = dict(ref=512, wd=1e-8, ld=0.8, grouping="group", smoothing=0.1, mixup=0.0, cutmix=0.0, warmup=0,
              epochs=30, lr=5e-5, crop=224, head_init_scale=0.001)
V2 = dict(ref=256, crop=224, head_init_scale=0.001, ema=0.9999, batch=32)
PUBLISHED = {
    "convnext_base": {**V1_22K, "weights": "convnext_base.fb_in22k", "drop_path": 0.2, "ema": None, "batch": 32},
    "convnext_large": {**V1_22K, "weights": "convnext_large.fb_in22k", "drop_path": 0.3, "ema": None, "batch": 32},
    "convnext_xlarge": {**V1_22K, "weights": "convnext_xlarge.fb_in22k", "drop_path": 0.4, "ema": 0.9999,
                        "batch": 16},
    "convnextv2_atto": {**V2, "weights": "convnextv2_atto.fcmae", "lr": 2e-4, "wd": 0.3, "ld": 0.9,
                        "grouping": "single", "drop_path": 0.1, "smoothing": 0.2, "mixup": 0.0, "cutmix": 0.0,
                        "warmup": 0, "epochs": 600},
    "convnextv2_tiny": {**V2, "weights": "convnextv2_tiny.fcmae", "lr": 8e-4, "wd": 0.05, "ld": 0.9,
                        "grouping": "single", "drop_path": 0.2, "smoothing": 0.1, "mixup": 0.8, "cutmix": 1.0,
                        "warmup": 40, "epochs": 300},
    "convnextv2_base": {**V2, "weights": "convnextv2_base.fcmae", "lr": 6.25e-4, "wd": 0.05, "ld": 0.6,
                        "grouping": "group", "drop_path": 0.1, "smoothing": 0.1, "mixup": 0.8, "cutmix": 1.0,
                        "warmup": 20, "epochs": 100},
}

#: Per-architecture overlays whose layer decay has a published value: that value in the official grouping.
PUBLISHED_LAYER_DECAY = {
    "convnext_base": (0.8, "group", 0.2), "convnext_large": (0.8, "group", 0.3),
    "convnextv2_atto": (0.9, "single", 0.1), "convnextv2_tiny": (0.9, "single", 0.2),
    "convnextv2_base": (0.6, "group", 0.1),
}


def test_there_is_one_official_overlay_per_published_recipe() -> None:
    assert sorted(p.stem for p in OFFICIAL.glob("*.yaml")) == sorted(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_official_overlay_holds_every_published_value(name: str) -> None:
    text = (OFFICIAL / f"{name}.yaml").read_text()
    config = yaml.safe_load(text)
    model, data, trainer, want = config["model"], config["data"], config["trainer"], PUBLISHED[name]
    assert model["model_name"] == want["weights"]
    assert (model["lr"], model["lr_reference_batch_size"]) == (want["lr"], want["ref"])
    assert model["weight_decay"] == want["wd"]
    assert (model["layer_decay"], model["layer_decay_grouping"]) == (want["ld"], want["grouping"])
    assert model["drop_path_rate"] == want["drop_path"]
    assert model["label_smoothing"] == want["smoothing"]
    assert (model["mixup_alpha"], model["cutmix_alpha"]) == (want["mixup"], want["cutmix"])
    assert model["warmup_epochs"] == want["warmup"]
    assert model["head_init_scale"] == want["head_init_scale"]
    assert model["image_size"] == want["crop"]
    assert trainer["max_epochs"] == want["epochs"]
    assert data["batch_size"] == want["batch"]
    assert data["augmentation"]["rand_augment"] == "rand-m9-mstd0.5-inc1"
    assert data["augmentation"]["random_erasing"] == 0.25
    callbacks = trainer.get("callbacks", [])
    if want["ema"] is None:
        assert not callbacks
    else:
        (ema,) = callbacks
        assert ema["init_args"] == {"decay": want["ema"], "warmup": False}  # constant, from the pre-trained start
    assert "facebookresearch/ConvNeXt" in text  # every file names its source


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_official_overlay_loads_with_its_values_in_the_model_and_the_ema(name: str, image_root: Path) -> None:
    # The architecture is swapped for the tiny one so nothing large is built; every other value is the file's.
    cli = build_cli(["--config", str(REPO / "configs" / "finetune.yaml"), "--config", str(OFFICIAL / f"{name}.yaml"),
                     "--data.root", str(image_root), "--model.model_name", TINY_MODEL, "--model.pretrained", "false",
                     "--data.num_workers", "0", "--trainer.accelerator", "cpu"], run=False)
    hp, want = cli.model.hparams, PUBLISHED[name]
    assert (hp.lr, hp.lr_reference_batch_size, hp.weight_decay) == (want["lr"], want["ref"], want["wd"])
    assert (hp.layer_decay, hp.layer_decay_grouping, hp.drop_path_rate) == (want["ld"], want["grouping"],
                                                                              want["drop_path"])
    assert (hp.label_smoothing, hp.mixup_alpha, hp.cutmix_alpha) == (want["smoothing"], want["mixup"], want["cutmix"])
    assert cli.model.preprocessing["input_size"] == [3, 224, 224]
    emas = [c for c in cli.trainer.callbacks if isinstance(c, EMA)]
    if want["ema"] is None:
        assert not emas
    else:
        assert [(e.schedule.decay, e.schedule.warmup) for e in emas] == [(want["ema"], False)]


@pytest.mark.parametrize("name", sorted(PUBLISHED_LAYER_DECAY))
def test_model_overlays_with_a_published_layer_decay_use_it_in_the_official_grouping(name: str) -> None:
    model = yaml.safe_load((MODELS / f"{name}.yaml").read_text())["model"]
    assert (model["layer_decay"], model["layer_decay_grouping"], model["drop_path_rate"]) == PUBLISHED_LAYER_DECAY[name]


@pytest.mark.parametrize("overlay", [p for p in sorted(MODELS.glob("*.yaml")) if p.stem not in PUBLISHED_LAYER_DECAY],
                         ids=lambda p: p.stem)
def test_model_overlays_without_a_published_value_say_so(overlay: Path) -> None:
    text = overlay.read_text()
    assert "No published" in text and "chosen" in text.lower()
