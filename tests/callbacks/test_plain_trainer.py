"""A plain Lightning Trainer runs what ``lit-convnext fit`` runs: the app's callbacks come from the model."""

from __future__ import annotations

import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from lit_convnext.callbacks.batch_size import AutoBatchSize
from lit_convnext.callbacks.exact_resume import ExactResume
from lit_convnext.callbacks.time_budget import TimeBudget
from lit_convnext.callbacks import DataWaitMonitor, FiniteLossGuard, ResumableModelCheckpoint
from lit_convnext.callbacks.checkpointing import AtomicCheckpointIO
from lit_convnext.callbacks.run import missing_run_callbacks
from lit_convnext.cli.entry import main
from lit_convnext.cli.trainer import ConvNeXtTrainer
from lit_convnext.evaluation.class_report import PerClassReport
from lit_convnext.evaluation.end_of_fit import EvaluationReport
from tests.helpers import FAST, TINY_MODEL

#: What the end of a fit leaves in the run directory, whichever way it was started.
EXPECTED = {"checkpoints/best-*.ckpt", "checkpoints/last.ckpt", "report.html", "val_predictions.csv",
            "val_per_class.csv", "val_confusion_matrix.csv", "val_confusion_matrix.png", "val_calibration.json",
            "val_confused_pairs.csv", "train_batch_mosaic.png"}


def _run_files(run: Path) -> set[str]:
    """The run directory's files, relative, with the names that hold a score, an epoch or a time made generic."""
    names = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    names = {re.sub(r"best-epoch\d+-acc[\d.]+\.ckpt$", "best-*.ckpt", name) for name in names}
    return {re.sub(r"^events\.out\.tfevents\..*", "events.out.tfevents.*", name) for name in names}


def test_a_plain_trainer_writes_what_the_command_writes(image_root: Path, tmp_path: Path) -> None:
    main(["fit", "--data.root", str(image_root), "--trainer.max_epochs", "2", *FAST,
          "--trainer.default_root_dir", str(tmp_path / "D1")])
    [cli_run] = (tmp_path / "D1").glob("*/version_0")

    from lit_convnext import ConvNeXtClassifier, ImageFolderDataModule

    dm = ImageFolderDataModule(root=image_root, batch_size=8, num_workers=0)
    assert dm.class_names == ["blue", "green", "red"] and dm.class_counts == [8, 8, 8]  # before any setup
    pl.seed_everything(42)
    model = ConvNeXtClassifier(TINY_MODEL, pretrained=False, image_size=32, class_names=dm.class_names,
                               class_counts=dm.class_counts)
    trainer = pl.Trainer(default_root_dir=tmp_path / "D2", max_epochs=2, accelerator="cpu",
                         enable_progress_bar=False, log_every_n_steps=1)
    trainer.fit(model, datamodule=dm)
    [plain_run] = (tmp_path / "D2").glob("*/version_0")

    plain = _run_files(plain_run)
    assert EXPECTED <= plain
    assert plain == _run_files(cli_run) - {"config.yaml"}  # config.yaml: the command line's own record
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    [best] = (plain_run / "checkpoints").glob("best-*.ckpt")
    assert "temperature" in torch.load(best, map_location="cpu", weights_only=True)["calibration"]
    assert list(Path.cwd().iterdir()) == []  # everything went under default_root_dir

    # predict returns Lightning's per-batch outputs and writes no file; so does the command's Trainer class
    # without an output.
    images = ImageFolderDataModule(predict_dir=image_root / "val", batch_size=8, num_workers=0)
    for predictor in (trainer, ConvNeXtTrainer(accelerator="cpu", logger=False, enable_progress_bar=False)):
        batches = predictor.predict(model, datamodule=images)
        assert [len(batch["indices"]) for batch in batches] == [8, 4]
        assert batches[0]["probabilities"].shape == (8, 3)
    assert list(Path.cwd().iterdir()) == []
    # The command keeps its default file.
    main(["predict", "--ckpt_path", str(best), "--data.predict_dir", str(image_root / "val"),
          "--data.num_workers", "0", "--progress_bar.refresh_rate", "0"])
    assert [p.name for p in Path.cwd().iterdir()] == ["predictions.csv"]
    assert len(Path("predictions.csv").read_text().splitlines()) == 1 + 12


def _trainer(stage: TrainerFn, **options: object) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, **options)
    trainer.state.fn = stage  # what Trainer.fit/validate/... set before Lightning asks the model for callbacks
    return trainer


def _types(callbacks: list) -> set[str]:
    return {type(callback).__name__ for callback in callbacks}


def test_the_model_adds_only_the_callbacks_the_trainer_lacks(tmp_path: Path) -> None:
    fit = _trainer(TrainerFn.FITTING, default_root_dir=tmp_path)
    added = missing_run_callbacks(fit)
    assert _types(added) == {"FiniteLossGuard", "PretrainedLoadReport", "TimeBudget", "AutoBatchSize", "ExactResume",
                             "EvaluationReport", "PerClassReport", "DataWaitMonitor", "OldClassAccuracy",
                             "LearningRateMonitor", "ResumableModelCheckpoint"}
    [checkpoint] = [c for c in added if isinstance(c, ModelCheckpoint)]  # replaces Lightning's default one
    assert (checkpoint.monitor, checkpoint.mode, checkpoint.save_last) == ("val/acc1", "max", True)
    assert next(c for c in added if isinstance(c, LearningRateMonitor)).logging_interval == "step"
    [multilabel] = [c for c in missing_run_callbacks(fit, "multilabel") if isinstance(c, ModelCheckpoint)]
    assert multilabel.monitor == "val/map" and "{val/map" in multilabel.filename

    # Instances given to the Trainer (as the command line's are) stay; a user's own checkpoint callback too.
    given = [PerClassReport(plot=False), EvaluationReport(enabled=False), ModelCheckpoint(monitor="val/loss")]
    added = missing_run_callbacks(_trainer(TrainerFn.FITTING, logger=False, callbacks=given))
    assert _types(added) == {"FiniteLossGuard", "PretrainedLoadReport", "TimeBudget", "AutoBatchSize", "ExactResume",
                             "DataWaitMonitor", "OldClassAccuracy"}  # no logger: no lr monitor

    unchecked = missing_run_callbacks(_trainer(TrainerFn.FITTING, logger=False, enable_checkpointing=False))
    assert not [c for c in unchecked if isinstance(c, ModelCheckpoint)]
    barebones = _trainer(TrainerFn.FITTING, barebones=True)
    assert _types(missing_run_callbacks(barebones)) == {"FiniteLossGuard", "PretrainedLoadReport", "TimeBudget",
                                                         "AutoBatchSize", "ExactResume"}
    for stage in (TrainerFn.VALIDATING, TrainerFn.TESTING):
        assert _types(missing_run_callbacks(_trainer(stage, logger=False))) == {"EvaluationReport", "PerClassReport"}
    assert missing_run_callbacks(_trainer(TrainerFn.PREDICTING, logger=False)) == []


def test_the_command_line_callbacks_are_not_doubled(image_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line's configured callbacks stay as they are; the model adds only the loss guard."""
    seen: list[pl.Trainer] = []
    monkeypatch.setattr(FiniteLossGuard, "on_fit_end", lambda self, trainer, module: seen.append(trainer),
                        raising=False)
    main(["fit", "--data.root", str(image_root), "--trainer.max_epochs", "1", *FAST, "--trainer.limit_train_batches",
          "1", "--evaluation.enabled", "false", "--class_report.enabled", "false"])
    [trainer] = seen
    kinds = [type(c) for c in trainer.callbacks]
    for kind in (FiniteLossGuard, EvaluationReport, PerClassReport, DataWaitMonitor, ResumableModelCheckpoint,
                 LearningRateMonitor, TimeBudget, AutoBatchSize, ExactResume):
        assert kinds.count(kind) == 1, kind
    assert next(c for c in trainer.callbacks if isinstance(c, EvaluationReport)).enabled is False
    assert not [c for c in trainer.callbacks if type(c) is ModelCheckpoint]
