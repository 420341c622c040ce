"""New classes on a trained model through the command line: rows kept by name, old classes replayed and measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.helpers import FAST, lightning_info_lines, make_folder

from lit_convnext.cli.entry import main

OLD = {"red": (220, 30, 30), "blue": (30, 40, 220)}
NEW = {"green": (30, 200, 40)}


def _fit(root: Path, *extra: str) -> Path:
    runs = sorted(Path("runs/convnext").glob("version_*"))
    main(["fit", "--data.root", str(root), *FAST, "--trainer.max_epochs", "3", *extra])
    [run] = [r for r in sorted(Path("runs/convnext").glob("version_*")) if r not in runs]
    return run


@pytest.mark.slow  # two fits of a few epochs each (about 20 s on 2 CPU cores)
def test_a_model_trained_on_a_b_learns_c_and_keeps_a_b(tmp_path: Path) -> None:
    old_root, new_root = tmp_path / "ab", tmp_path / "abc"
    make_folder(old_root / "train", 16, OLD)
    make_folder(old_root / "val", 8, OLD, seed=500)
    first = _fit(old_root)
    old_ckpt = next((first / "checkpoints").glob("best-*.ckpt"))

    make_folder(new_root / "train", 16, {**OLD, **NEW}, seed=2000)  # the old classes' images are in the folder
    make_folder(new_root / "val", 8, {**OLD, **NEW}, seed=3000)
    with lightning_info_lines() as lines:
        second = _fit(new_root, "--model.pretrained", str(old_ckpt))

    report = json.loads((second / "pretrained_load_report.json").read_text())
    assert report["head"] == "by_name"
    # Folder order blue, green, red: red's row moves from 1 to 2, green's is new.
    assert report["classes_kept"] == {"blue": 0, "red": 1} and report["classes_added"] == ["green"]
    assert any(line.startswith("Replaying old classes: 32 old-class and 16 new-class") for line in lines), lines
    figures = json.loads((second / "old_classes.json").read_text())
    assert figures["old_classes"] == ["blue", "red"] and figures["new_classes"] == ["green"]
    before, after = figures["before"]["accuracy"], figures["after"]["accuracy"]
    # Measured on these colours: 1.00 before and after (the run whose figures were read); 0.07 is one image of 16.
    assert before >= 0.9 and after >= before - 0.07, figures
    assert figures["after"]["new_accuracy"] >= 0.8, figures
    [summary] = [line for line in lines if line.startswith("old classes: acc before")]
    assert f"acc before {before:.4f}, after {after:.4f}" in summary
    assert "old classes (2): accuracy before, after" in (second / "report.html").read_text()
    last = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["hyper_parameters"]["class_names"] == ["blue", "green", "red"]

    # A resumed fit reads no pretrained file: the checkpoint says which classes were added, so it replays and
    # reports as the run it continues.
    with lightning_info_lines() as lines:
        main(["fit", "--data.root", str(new_root), *FAST, "--trainer.max_epochs", "4", "--model.pretrained",
              str(old_ckpt), "--ckpt_path", "last"])
    assert any(line.startswith("Replaying old classes: 32 old-class") for line in lines), lines
    assert any(line.startswith(f"old classes: acc before {before:.4f}") for line in lines), lines
