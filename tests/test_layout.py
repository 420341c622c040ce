"""The package's public surface survives the reorganisation (the private members it uses: test_private_api.py)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import yaml

from lit_convnext.cli.lightning_cli import build_cli
from tests.helpers import FAST


def test_the_old_ema_class_path_is_a_plain_module_with_the_same_class() -> None:
    import sys

    from lit_convnext.callbacks.ema import EMA

    assert importlib.import_module("lit_convnext.ema").EMA is EMA
    assert importlib.util.find_spec("lit_convnext.ema").origin.endswith("lit_convnext/ema.py")  # a file, no finder
    assert not any("lit_convnext" in type(finder).__module__ for finder in sys.meta_path)


def test_a_config_saved_with_the_old_ema_class_path_still_runs(image_root: Path, tmp_path: Path) -> None:
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "lit_convnext.ema.EMA", "init_args": {"decay": 0.9}}]}}))
    cli = build_cli(["--config", str(saved), "--data.root", str(image_root), *FAST, "--trainer.max_epochs", "1"],
                    run=False)
    from lit_convnext.callbacks import EMA

    assert [type(c) for c in cli.trainer.callbacks if isinstance(c, EMA)] == [EMA]
