"""The end-of-fit analysis reuses the logits of the validation the best checkpoint was saved from."""

from __future__ import annotations

import csv
import functools
import json
import os
from pathlib import Path

import pytest
import torch

from lit_convnext.evaluation import class_report
from lit_convnext.callbacks.checkpointing import AtomicCheckpointIO
from lit_convnext.cli.entry import main
from lit_convnext.cli.trainer import ConvNeXtTrainer
from tests.helpers import FAST, fit_args, lightning_info_lines, make_folder


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _count_validations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    validate = ConvNeXtTrainer.validate

    @functools.wraps(validate)  # LightningCLI builds the `validate` options from this signature
    def counted(self, *args, **kwargs):
        calls.append(str(kwargs.get("ckpt_path")))
        return validate(self, *args, **kwargs)

    monkeypatch.setattr(ConvNeXtTrainer, "validate", counted)
    return calls


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    make_folder(root / "train", 4)
    make_folder(root / "val", 3, seed=500)
    return root


#: EMA on: validation and the checkpoint's weights are the average (3 steps at batch 4, spanning half of them).
EMA = ["--data.batch_size", "4", "--trainer.callbacks+=lit_convnext.callbacks.ema.EMA",
       "--trainer.callbacks.horizon", "0.5"]


@pytest.mark.parametrize("extra", [[], pytest.param(EMA, marks=pytest.mark.slow)], ids=["raw", "ema"])
def test_best_checkpoint_from_the_last_validation_is_not_validated_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str]) -> None:
    root = _folder(tmp_path)
    calls = _count_validations(monkeypatch)
    reads: list[str] = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda path, *a, **k: reads.append(str(path)) or load(path, *a, **k))
    writes = _count_writes(monkeypatch)
    main(fit_args(root, *extra))  # one epoch: its validation is the best checkpoint's
    monkeypatch.setattr(torch, "load", load)
    assert calls == []
    # The best checkpoint is read once, for its weights, and written once: the temperature was fitted on its
    # validation before it was saved, so last.ckpt, a link to it, holds the temperature too.
    assert len([r for r in reads if Path(r).name.startswith("best-")]) == 1
    assert [Path(w).name for w in writes] == [Path(next(Path("runs").rglob("best-*.ckpt"))).name]
    folder = Path("runs/convnext/version_0/checkpoints")
    assert os.path.samefile(folder / "last.ckpt", next(folder.glob("best-*.ckpt")))
    _assert_fit_wrote_what_validating_the_best_gives(root)


def _count_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of every checkpoint file written (linked ones are not written)."""
    writes: list[str] = []
    save = AtomicCheckpointIO.save_checkpoint

    def counted(self, checkpoint, path, storage_options=None):
        writes.append(str(path))
        return save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", counted)
    return writes


def _assert_fit_wrote_what_validating_the_best_gives(root: Path) -> None:
    """What validating the best checkpoint gives (it reads the stored temperature) is what fit wrote."""
    run = Path("runs/convnext/version_0")
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    fitted = _rows(run / "val_predictions.csv")
    temperature = torch.load(best, map_location="cpu", weights_only=True)["calibration"]["temperature"]
    assert temperature == json.loads((run / "val_calibration.json").read_text())["temperature"]
    options = [option for option in FAST if option not in ("--model.pretrained", "false")]
    main(["validate", "--data.root", str(root), "--ckpt_path", str(best), *options,
          "--trainer.default_root_dir", "again"])
    again = _rows(next(Path("again").rglob("val_predictions.csv")))
    assert temperature != 1.0
    assert [r["path"] for r in fitted] == [r["path"] for r in again] and len(fitted) == 9
    for mine, theirs in zip(fitted, again):
        assert mine["predicted"] == theirs["predicted"]
        assert float(mine["probability_1"]) == pytest.approx(float(theirs["probability_1"]), abs=1e-4)


@pytest.mark.slow  # a few seconds: kept out of the quick tier
def test_best_checkpoint_from_an_earlier_epoch_is_not_validated_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The logits of the validation the best checkpoint was saved from are kept, not only the last ones."""
    root = _folder(tmp_path)
    calls = _count_validations(monkeypatch)
    # The highest validation loss is the best here: the first epoch's, and later epochs change the weights.
    writes = _count_writes(monkeypatch)
    plots: list[str] = []
    plot = class_report.plot_confusion
    monkeypatch.setattr(class_report, "plot_confusion", lambda *a, **k: plots.append(str(a[2])) or plot(*a, **k))
    main(fit_args(root, "--trainer.max_epochs", "3", "--checkpoint.monitor", "val/loss", "--checkpoint.mode", "max"))
    # The confusion PNG is drawn once, after the analysis put the best checkpoint's matrix in place.
    assert [Path(p).name for p in plots] == ["val_confusion_matrix.png"]
    folder = Path("runs/convnext/version_0/checkpoints")
    best = next(folder.glob("best-*.ckpt"))
    assert "epoch000" in best.name
    assert calls == []
    # The best file was written once, with the temperature of its own validation; last.ckpt holds epoch 2's.
    assert [Path(w).name for w in writes].count(best.name) == 1
    temperatures = [torch.load(p, weights_only=True)["calibration"]["temperature"] for p in (best, folder / "last.ckpt")]
    assert temperatures[0] != temperatures[1]
    _assert_fit_wrote_what_validating_the_best_gives(root)
    # The per-class files (and the report's table read from them) describe the best checkpoint too, not the last
    # validation: what validating the best checkpoint writes.
    run = folder.parent
    for name in ("val_per_class.csv", "val_confusion_matrix.csv"):
        assert _rows(run / name) == _rows(next(Path("again").rglob(name))), name


def test_best_checkpoint_from_before_a_resume_is_validated_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path)
    # As above, the first epoch's checkpoint stays the best; it is saved before the resume, so the resumed process
    # never saw its validation's logits.
    highest_loss = ["--checkpoint.monitor", "val/loss", "--checkpoint.mode", "max"]
    main(fit_args(root, *highest_loss))
    calls = _count_validations(monkeypatch)
    with lightning_info_lines() as logged:
        main(fit_args(root, "--trainer.max_epochs", "2", "--ckpt_path", "last", *highest_loss))
    best = next(Path("runs/convnext/version_0/checkpoints").glob("best-*.ckpt"))
    assert "epoch000" in best.name
    assert calls == [str(best)]
    assert len(_rows(best.parent.parent / "val_predictions.csv")) == 9
    # Said in the app's words, not as Lightning's "Restoring states ...", which would read as a restart.
    assert f"Validating the best checkpoint again for the end-of-fit analysis: {best}" in logged
    # (The resume itself says "Restoring states from the checkpoint path at .../last.ckpt": that one is true.)
    assert not [line for line in logged if line.startswith(("Restoring states", "Loaded model weights"))
                and str(best) in line]
