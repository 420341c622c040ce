"""Every YAML in configs/ parses, sets exactly what it says, and names a model timm has, so configs cannot rot.

Parsing goes through the real CLI parser (types and ranges included) but stops before anything is built, so
no full-size network is created; one base config is instantiated end to end on the smallest model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lightning.pytorch.callbacks import WeightAveraging

from lit_convnext.model.backbone import check_model_name
from lit_convnext.cli.lightning_cli import ConvNeXtCLI, build_cli
from tests.helpers import REPO, TINY_MODEL

CONFIGS = REPO / "configs"
BASE = CONFIGS / "finetune.yaml"
QUICKSTART = CONFIGS / "quickstart.yaml"
MULTILABEL_QUICKSTART = CONFIGS / "multilabel_quickstart.yaml"
#: Overlays: everything that is combined with the base recipe (the quickstarts stand alone).
OVERLAYS = sorted(p for p in CONFIGS.rglob("*.yaml") if p not in (BASE, QUICKSTART, MULTILABEL_QUICKSTART))


def parsed(monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    """The CLI's parsed config for ``args``, without instantiating model, data or trainer."""
    monkeypatch.setattr(ConvNeXtCLI, "instantiate_classes", lambda self: None)
    return build_cli(list(args), run=False).config


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model.lr": 4e-4, ...}`` for the plain values of a YAML tree (lists of class configs are kept whole)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def assert_config_matches(config: Any, files: list[Path], overridden: tuple[str, ...] = ()) -> None:
    """Each value a file sets (later files win, ``overridden`` keys were given on the command line) is parsed."""
    expected: dict[str, Any] = {}
    for path in files:
        expected.update(leaves(yaml.safe_load(path.read_text())))
    for key, value in expected.items():
        if key in overridden:
            continue
        if key == "trainer.callbacks":  # class configs: compare what they name and set
            assert [c.class_path for c in config[key]] == [c["class_path"] for c in value], key
            for parsed_callback, written in zip(config[key], value):
                for name, setting in written.get("init_args", {}).items():
                    assert parsed_callback.init_args[name] == setting, f"{key}: {name}"
            continue
        got = config[key]
        if isinstance(value, list):
            got, value = list(got), list(value)
        if isinstance(got, Path):
            got = str(got)
        assert got == value, f"{key}: parsed {got!r}, file says {value!r}"


def test_every_config_file_is_covered() -> None:
    assert set(CONFIGS.rglob("*.yaml")) == {BASE, QUICKSTART, MULTILABEL_QUICKSTART, *OVERLAYS}
    assert OVERLAYS, "no overlays found"


def test_base_recipe_parses_to_its_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = parsed(monkeypatch, "--config", str(BASE), "--data.root", str(tmp_path))
    assert_config_matches(config, [BASE])
    check_model_name(config.model.model_name)


def test_without_a_config_fit_runs_the_base_recipe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The signatures' defaults are the base recipe's values (not Lightning's 1000 epochs)."""
    assert_config_matches(parsed(monkeypatch, "--data.root", str(tmp_path)), [BASE])


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_base_plus_overlay_parses_to_the_overlay_values(overlay: Path, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    config = parsed(monkeypatch, "--config", str(BASE), "--config", str(overlay), "--data.root", str(tmp_path))
    assert_config_matches(config, [BASE, overlay])
    check_model_name(config.model.model_name)  # the architecture and the pretrained tag exist in timm


def test_quickstart_parses_to_its_values_and_instantiates_on_the_shipped_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parsed(monkeypatch, "--config", str(QUICKSTART))
    assert_config_matches(config, [QUICKSTART])
    monkeypatch.undo()
    cli = build_cli(["--config", str(QUICKSTART), "--data.num_workers", "0"], run=False)
    assert cli.model.class_names == [str(d) for d in range(10)]
    assert cli.model.preprocessing["input_size"] == [3, 64, 64]


def test_base_with_gpu_and_ema_overlays_instantiates(image_root: Path) -> None:
    # Built for real on the smallest model; the accelerator is overridden because CI has no GPU.
    cli = build_cli(["--config", str(BASE), "--config", str(CONFIGS / "gpu.yaml"), "--config", str(CONFIGS / "ema.yaml"),
                     "--data.root", str(image_root), "--model.model_name", TINY_MODEL, "--model.pretrained", "false",
                     "--trainer.accelerator", "cpu", "--data.num_workers", "0"], run=False)
    assert cli.config.trainer.precision == "bf16-mixed"
    assert cli.datamodule.batch_size == yaml.safe_load((CONFIGS / "gpu.yaml").read_text())["data"]["batch_size"]
    assert cli.model.class_names == ["blue", "green", "red"]
    assert any(isinstance(c, WeightAveraging) for c in cli.trainer.callbacks)


def test_multilabel_quickstart_parses_and_instantiates_on_generated_digits(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_multilabel_digits", REPO / "data" / "make_multilabel_digits.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    labels = generator.main(tmp_path / "ml", {"train": 40, "val": 10})  # a small copy of the sample task
    config = parsed(monkeypatch, "--config", str(MULTILABEL_QUICKSTART), "--data.labels", str(labels))
    assert_config_matches(config, [MULTILABEL_QUICKSTART], overridden=("data.labels",))
    monkeypatch.undo()
    cli = build_cli(["--config", str(MULTILABEL_QUICKSTART), "--data.labels", str(labels),
                     "--data.num_workers", "0"], run=False)
    assert cli.model.hparams.task == "multilabel"  # chosen by the file's labels column
    assert cli.model.class_names == [str(d) for d in range(10)]
    assert cli.config.checkpoint.monitor == "val/map"
    assert cli.model.preprocessing["input_size"] == [3, 32, 32]
