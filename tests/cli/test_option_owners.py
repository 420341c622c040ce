"""One owner per option, one direction: the data owns the batch size and the task and the CLI links them to the
model; the Mixup/CutMix batch rule, "pretrained off" and the out-of-memory advice are each defined once."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lit_convnext.cli.entry import main
from lit_convnext.cli.lightning_cli import build_cli
from lit_convnext.cli.messages import out_of_memory_message
from lit_convnext.data.datamodule import ImageFolderDataModule
from lit_convnext.data.labels import data_task
from lit_convnext.errors import UserError
from lit_convnext.model.backbone import build_convnext, pretrained_off
from lit_convnext.model.classifier import ConvNeXtClassifier, check_mixup_batch
from tests.helpers import FAST, TINY_MODEL, fit_args, one_line_error, write_image

NAMES = ["blue", "green", "red"]


def _label_file(path: Path, column: str, rows: int = 3) -> Path:
    """A label file with a ``label`` or ``labels`` column, its images beside it."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", column, "split"])
        for i in range(rows):
            write_image(path.parent / f"img{i}.png", (200, 30, 30), seed=i)
            writer.writerow([f"img{i}.png", "red;green" if column == "labels" else "red", "train" if i else "val"])
    return path


def _tiny(**options) -> ConvNeXtClassifier:
    return ConvNeXtClassifier(TINY_MODEL, pretrained=False, class_names=NAMES, image_size=32, **options)


def _quiet_trainer(**options) -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, limit_val_batches=0, **options)


# ------------------------------------------------------------------------------------------------ batch size
def test_the_batch_size_reaches_the_model_by_the_parse_time_link(image_root: Path) -> None:
    cli = build_cli(["--data.root", str(image_root), *FAST, "--data.batch_size", "6"], run=False)
    assert cli.model.hparams.batch_size == 6 == cli.datamodule.batch_size


def test_a_python_fit_reads_the_datamodules_batch_size(image_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _tiny()  # no batch_size: the datamodule has it
    with caplog.at_level(logging.INFO):
        # max_steps without max_epochs: the optimizer is configured before any training batch is loaded
        _quiet_trainer(max_steps=1).fit(model, ImageFolderDataModule(image_root, batch_size=6, num_workers=0))
    assert "Effective batch 6 (6 per device x 1 device(s) x 1 accumulation)" in caplog.text


def test_without_a_datamodule_the_models_batch_size_scales_the_lr(caplog: pytest.LogCaptureFixture) -> None:
    images = TensorDataset(torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    with caplog.at_level(logging.INFO):
        _quiet_trainer(max_steps=1).fit(_tiny(batch_size=4, lr=1e-3, lr_reference_batch_size=8),
                                        DataLoader(images, batch_size=4))
    assert "lr 0.0005 (= 0.001 x 4/8)" in caplog.text
    with pytest.raises(UserError, match="cannot tell the per-device batch size"):
        _quiet_trainer(max_steps=1).fit(_tiny(), DataLoader(images, batch_size=4))


def test_a_model_batch_size_that_contradicts_the_datamodule_is_refused(image_root: Path) -> None:
    with pytest.raises(UserError, match="batch_size=4 but the datamodule's batch_size is 6"):
        _quiet_trainer(max_steps=1).fit(_tiny(batch_size=4), ImageFolderDataModule(image_root, batch_size=6,
                                                                                    num_workers=0))


# ------------------------------------------------------------------------------------------------ Mixup rule
@pytest.mark.parametrize(("batch", "mixup", "cutmix", "refused"), [
    (3, 0.8, 0.0, True), (3, 0.0, 1.0, True), (4, 0.8, 1.0, False), (3, 0.0, 0.0, False)])
def test_the_mixup_batch_rule(batch: int, mixup: float, cutmix: float, refused: bool) -> None:
    if refused:
        with pytest.raises(UserError, match=f"use an even --data.batch_size, got {batch}"):
            check_mixup_batch(batch, mixup, cutmix)
    else:
        check_mixup_batch(batch, mixup, cutmix)


def test_an_odd_mixup_batch_is_refused_before_the_folder_is_read(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # The folder does not exist: reading it would end in a different error.
    line = one_line_error(capsys, fit_args(tmp_path / "missing", "--model.mixup_alpha", "0.8",
                                           "--data.batch_size", "3"))
    assert "use an even --data.batch_size, got 3" in line


def test_a_python_model_given_an_odd_mixup_batch_is_refused_at_construction() -> None:
    with pytest.raises(UserError, match="got 5"):
        _tiny(cutmix_alpha=1.0, batch_size=5)


@pytest.mark.slow  # a few seconds: kept out of the quick tier
def test_evaluating_a_mixup_checkpoint_takes_any_batch_size(image_root: Path) -> None:
    """The rule is about training: validate and predict of a Mixup-trained model run at an odd batch size."""
    main(fit_args(image_root, "--model.mixup_alpha", "0.8", "--data.batch_size", "4",
                  "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"))
    last = "runs/convnext/version_0/checkpoints/last.ckpt"
    main(["validate", "--ckpt_path", last, "--data.root", str(image_root), *FAST, "--data.batch_size", "3"])
    assert Path("runs/convnext/version_1/val_predictions.csv").is_file()


# ------------------------------------------------------------------------------------------------------ task
def test_the_data_decides_the_task(tmp_path: Path) -> None:
    multi, single = _label_file(tmp_path / "multi.csv", "labels"), _label_file(tmp_path / "single.csv", "label")
    assert data_task(multi) == "multilabel"
    assert data_task(single) == data_task(None) == "multiclass"
    assert data_task(None, "multilabel") == data_task(single, "multilabel") == "multilabel"
    with pytest.raises(UserError, match="has a 'labels' column .* but --data.task is multiclass"):
        data_task(multi, "multiclass")
    # Known right after construction, from the file's header: no scan, no setup, no model.
    assert ImageFolderDataModule(labels=multi).task == "multilabel"
    assert ImageFolderDataModule(tmp_path / "folders").task == "multiclass"


def test_the_task_reaches_the_model_by_a_link_and_sets_the_monitor_once(tmp_path: Path) -> None:
    labels = _label_file(tmp_path / "labels.csv", "labels", rows=6)
    cli = build_cli(["--data.labels", str(labels), *FAST], run=False)
    assert cli.datamodule.task == cli.model.hparams.task == "multilabel"
    assert cli.config.checkpoint.monitor == "val/map" and "map{val/map" in cli.config.checkpoint.filename
    with pytest.raises(UserError):  # the model's task is not an option of its own any more
        build_cli(["--data.labels", str(labels), *FAST, "--model.task", "multiclass"], run=False)


def test_a_python_model_of_another_task_than_the_data_is_refused(tmp_path: Path) -> None:
    labels = _label_file(tmp_path / "labels.csv", "labels", rows=6)
    data = ImageFolderDataModule(labels=labels, batch_size=2, num_workers=0, check_files=False)
    with pytest.raises(UserError, match="the data is multilabel but the model is multiclass"):
        _quiet_trainer(max_steps=1).fit(_tiny(), data)


# -------------------------------------------------------------------------------------------- pretrained off
@pytest.mark.parametrize("value", [False, None, "", "false", "False", " FALSE "])
def test_pretrained_off_is_one_definition(value: bool | str | None) -> None:
    assert pretrained_off(value)
    net, report = build_convnext(TINY_MODEL, 3, value, 0.0, None, 1.0)  # no file named "False" is looked for
    assert report is None and net.num_classes == 3


@pytest.mark.parametrize("value", [True, "weights.safetensors", "falsey.pt"])
def test_pretrained_on(value: bool | str) -> None:
    assert not pretrained_off(value)


@pytest.mark.parametrize("value", ["false", "False", ""])
def test_validate_without_weights_says_what_it_needs_for_every_spelling_of_off(
        image_root: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    options = [o for o in FAST if o not in ("--model.pretrained", "false")]
    line = one_line_error(capsys, ["validate", "--data.root", str(image_root), *options, "--model.pretrained", value])
    assert "`validate` needs a trained model: pass --ckpt_path" in line


# ------------------------------------------------------------------------------------------ out-of-memory advice
@pytest.mark.parametrize(("subcommand", "batch"), [("fit", 1), ("fit", 8), ("validate", 8), ("predict", 4)])
def test_the_out_of_memory_advice_names_options_that_exist(subcommand: str, batch: int,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import re

    advice = out_of_memory_message(subcommand, batch, 2)
    named = set(re.findall(r"--[\w.]+", advice))
    assert named
    with pytest.raises(SystemExit):
        main([subcommand, "--help"])
    options = set(re.findall(r"--[\w.]+", capsys.readouterr().out))
    assert named <= options, named - options
