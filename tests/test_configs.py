"""Every YAML in configs/ parses and instantiates, so shipped configs cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.helpers import TINY_MODEL
from lightning.pytorch.callbacks import WeightAveraging

from lit_convnext.cli import build_cli

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
BASE = CONFIGS / "finetune.yaml"
OVERLAYS = sorted((CONFIGS / "models").glob("*.yaml"))


def test_every_config_file_is_covered() -> None:
    covered = {BASE, CONFIGS / "quickstart.yaml", CONFIGS / "gpu.yaml", CONFIGS / "ema.yaml",
               CONFIGS / "multilabel_quickstart.yaml", *OVERLAYS}
    assert set(CONFIGS.rglob("*.yaml")) == covered


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.stem)
def test_base_plus_model_overlay_instantiates(overlay: Path, image_root: Path) -> None:
    # pretrained false: the hub weights cannot be downloaded here; the config's name and tag are still checked.
    cli = build_cli(["--config", str(BASE), "--config", str(overlay), "--data.root", str(image_root),
                     "--model.pretrained", "false", "--data.num_workers", "0"], run=False)
    expected_name = overlay.read_text().split("model_name:")[1].split()[0]
    assert cli.model.hparams.model_name == expected_name
    assert cli.model.class_names == ["blue", "green", "red"]
    assert cli.model.hparams.layer_decay == cli.config.model.layer_decay
    assert cli.trainer.max_epochs == 30


def test_quickstart_instantiates_on_the_shipped_digits() -> None:
    cli = build_cli(["--config", str(CONFIGS / "quickstart.yaml"), "--data.root", str(REPO / "data" / "digits"),
                     "--data.num_workers", "0"], run=False)
    assert cli.model.class_names == [str(d) for d in range(10)]
    assert cli.model.preprocessing["input_size"] == [3, 64, 64]


def test_gpu_and_ema_overlays_instantiate(image_root: Path) -> None:
    # The GPU overlay is checked for what it sets; the accelerator is overridden because CI has no GPU.
    cli = build_cli(["--config", str(BASE), "--config", str(CONFIGS / "gpu.yaml"), "--config", str(CONFIGS / "ema.yaml"),
                     "--data.root", str(image_root), "--model.model_name", TINY_MODEL, "--model.pretrained", "false",
                     "--trainer.accelerator", "cpu", "--data.num_workers", "0"], run=False)
    assert cli.config.trainer.precision == "bf16-mixed"
    assert cli.datamodule.batch_size == 64
    assert any(isinstance(c, WeightAveraging) for c in cli.trainer.callbacks)


def test_multilabel_quickstart_instantiates_on_generated_digits(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_multilabel_digits", REPO / "data" / "make_multilabel_digits.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    labels = generator.main(tmp_path / "ml", {"train": 40, "val": 10})  # a small copy of the sample task
    cli = build_cli(["--config", str(CONFIGS / "multilabel_quickstart.yaml"), "--data.labels", str(labels),
                     "--data.num_workers", "0"], run=False)
    assert cli.model.hparams.task == "multilabel"  # chosen by the file's labels column
    assert cli.model.class_names == [str(d) for d in range(10)]
    assert cli.config.checkpoint.monitor == "val/map"
    assert cli.model.preprocessing["input_size"] == [3, 32, 32]
