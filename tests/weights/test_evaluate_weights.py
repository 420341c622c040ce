"""`validate` and `test` on --model.pretrained weights whose head fits the folder's classes; refused otherwise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.helpers import FAST, make_folder, one_line_error

from lit_convnext.cli.entry import main
from lit_convnext.commands.export import export

EVAL = [*FAST[:2], *FAST[4:]]  # FAST without --model.pretrained false


def _evaluate(command: str, root: Path, weights: Path | str) -> list[str]:
    return [command, "--data.root", str(root), "--model.pretrained", str(weights), *EVAL]


@pytest.mark.slow  # a few seconds: kept out of the quick tier
def test_validate_and_test_take_a_checkpoint_or_an_export(fitted: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    export(fitted["best"], tmp_path / "weights.safetensors")
    capsys.readouterr()
    for weights in (fitted["best"], tmp_path / "weights.safetensors"):
        main(_evaluate("validate", fitted["root"], weights))
        assert "val/acc1" in capsys.readouterr().out
        main(_evaluate("test", fitted["root"], weights))
        assert "test/acc1" in capsys.readouterr().out


def test_weights_whose_head_does_not_fit_are_refused(fitted: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    export(fitted["best"], tmp_path / "weights.safetensors")
    capsys.readouterr()
    other = tmp_path / "two_classes"  # a new head would be needed
    make_folder(other / "train", 2, {"cat": (200, 0, 0), "dog": (0, 0, 200)})
    make_folder(other / "val", 1, {"cat": (200, 0, 0), "dog": (0, 0, 200)})
    line = one_line_error(capsys, _evaluate("validate", other, fitted["best"]))
    assert "no head for the 2 classes" in line and "untrained head" in line

    sidecar = json.loads((tmp_path / "weights.json").read_text())
    sidecar["class_names"] = ["blue", "green", "purple"]  # a class the folder lacks: no row for "red"
    (tmp_path / "weights.json").write_text(json.dumps(sidecar))
    line = one_line_error(capsys, _evaluate("test", fitted["root"], tmp_path / "weights.safetensors"))
    assert "1 of them are not in the folder: [purple]" in line and "not in the file: [red]" in line

    shutil.copy(tmp_path / "weights.safetensors", tmp_path / "bare.safetensors")  # no sidecar: no names
    line = one_line_error(capsys, _evaluate("validate", fitted["root"], tmp_path / "bare.safetensors"))
    assert "carries no class names" in line


def test_validate_without_any_weights_says_how(fitted: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, ["validate", "--data.root", str(fitted["root"]), *FAST])
    assert "--ckpt_path" in line and "--model.pretrained" in line


def test_validate_on_hub_weights_is_refused_before_any_download(fitted: dict[str, Path],
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The default ``--model.pretrained true`` is ImageNet's head: say so at once instead of fetching it first."""
    import lit_convnext.model.backbone

    monkeypatch.setattr(lit_convnext.model.backbone, "hub_weights_file", lambda name: pytest.fail("weights were fetched"))
    args = ["--data.root", str(fitted["root"]), *[a if a != "false" else "true" for a in FAST]]
    for subcommand in ("validate", "test"):
        line = one_line_error(capsys, [subcommand, *args])
        assert f"`{subcommand}` needs a model trained on the folder's classes" in line
        assert "--ckpt_path" in line and "ImageNet" in line
