"""The whole job through the CLI, in-process: fit -> checkpoint -> predict, and one-line errors."""

from __future__ import annotations

import csv
import json
import logging
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from tests.helpers import FAST, TINY_MODEL, fit_args, lightning_info_lines, make_folder, one_line_error

from lit_convnext.cli.entry import main
from lit_convnext.cli.lightning_cli import ConvNeXtCLI


def test_fit_writes_best_and_last_checkpoints_with_class_names(fitted: dict[str, Path]) -> None:
    run = fitted["run"]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file()
    checkpoint = torch.load(fitted["best"], weights_only=True, map_location="cpu")  # plain types only
    hparams = checkpoint["hyper_parameters"]
    assert hparams["class_names"] == ["blue", "green", "red"]  # natural order of the folder names
    assert hparams["preprocessing"]["input_size"] == [3, 32, 32]
    assert checkpoint["state_dict"]["net.head.fc.weight"].shape[0] == 3
    assert sorted(p.name for p in fitted["base"].iterdir()) == ["images", "runs"]  # nothing stray


def test_predict_needs_only_the_checkpoint_and_a_folder(fitted: dict[str, Path], tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    new_images = make_folder(tmp_path / "new" / "nested", 2, seed=77)
    out = tmp_path / "preds.csv"
    main(["predict", "--ckpt_path", str(fitted["best"]), "--data.predict_dir", str(tmp_path / "new"),
          "--output", str(out), "--top_k", "2", "--data.num_workers", "0", "--progress_bar.refresh_rate", "0"])
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6
    assert set(rows[0]) == {"path", "class_1", "probability_1", "class_2", "probability_2", "error"}
    assert not any(r["error"] for r in rows)
    assert {r["class_1"] for r in rows} <= {"red", "green", "blue"}
    assert all(float(r["probability_1"]) >= float(r["probability_2"]) for r in rows)
    assert {Path(r["path"]).name for r in rows} == {p.name for p in new_images.rglob("*.png")}
    assert f"Wrote 6 predictions to {out}" in caplog.text  # says where it wrote
    assert not (Path.cwd() / "runs").exists()  # predict makes no run directory


def test_predict_writes_json_lines(fitted: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "preds.jsonl"
    main(["predict", "--ckpt_path", str(fitted["best"]), "--data.predict_dir", str(fitted["root"] / "val"),
          "--output", str(out), "--data.num_workers", "0", "--progress_bar.refresh_rate", "0"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 12
    assert len(records[0]["top_k"]) == 3  # top_k 5 capped at the 3 classes
    assert {c["class"] for c in records[0]["top_k"]} == {"red", "green", "blue"}


def test_validate_and_test_use_the_checkpoint(fitted: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                             recwarn: pytest.WarningsRecorder) -> None:
    for command, stage, images in (("validate", "val", 12), ("test", "test", 6)):
        with lightning_info_lines() as logged:
            main([command, "--ckpt_path", str(fitted["best"]), "--data.root", str(fitted["root"]),
                  "--data.num_workers", "0", "--progress_bar.refresh_rate", "0"])
        assert f"{stage}/acc1" in capsys.readouterr().out
        # One line says which weights are evaluated; "Restoring states" would read as a resumed run.
        assert f"Loaded model weights from the checkpoint at {fitted['best']}" in logged
        assert not [line for line in logged if line.startswith("Restoring states")]
        run_dir = max(Path("runs/convnext").iterdir(), key=lambda p: p.stat().st_mtime)
        matrix = (run_dir / f"{stage}_confusion_matrix.csv").read_text().splitlines()
        assert sum(int(v) for row in matrix[1:] for v in row.split(",")[1:]) == images
        assert (run_dir / f"{stage}_confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"  # drawn right away
        assert not list(run_dir.rglob("*.ckpt"))
    noise = [str(w.message) for w in recwarn
             if any(text in str(w.message) for text in ("dirpath has changed", "LeafSpec", "when using `ckpt_path`"))]
    assert not noise


@pytest.mark.slow  # a few seconds: kept out of the quick tier
def test_a_small_fit_and_its_resume_get_no_lightning_advice_that_does_not_apply(
        image_root: Path, recwarn: pytest.WarningsRecorder) -> None:
    """24 images make 3 batches, fewer than the 10-step log interval (the app logs per epoch too), and a
    resume writes into its own run's checkpoint folder: neither is worth a warning to the user. Lightning's note
    that it loads the data early to count the steps is not shown either (the app's line gives the count)."""
    with lightning_info_lines() as logged:
        main(fit_args(image_root, "--trainer.limit_val_batches", "1"))
        main(fit_args(image_root, "--trainer.limit_val_batches", "1", "--trainer.max_epochs", "2", "--ckpt_path", "last"))
    assert len(list(Path("runs/convnext").iterdir())) == 1  # resumed in place
    shown = [str(w.message) for w in recwarn]
    assert not [m for m in shown if "logging interval" in m or "exists and is not empty" in m], shown
    assert any(m.startswith("Effective batch") for m in logged), logged
    assert not [m for m in logged if "to estimate number of stepping batches" in m or "litlogger" in m]


def test_rerunning_the_same_command_makes_a_new_version(image_root: Path) -> None:
    args = ["fit", "--data.root", str(image_root), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", *FAST]
    main(args)
    main(args)
    versions = sorted(p.name for p in (Path.cwd() / "runs" / "convnext").iterdir())
    assert versions == ["version_0", "version_1"]


def test_a_fit_that_stops_before_validation_says_so_instead_of_lightnings_hint(
        image_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """max_steps 1 of a 3-step epoch: no validation, nothing to rank, and no advice to call log('val/acc1')."""
    with warnings.catch_warnings(record=True) as shown, caplog.at_level(logging.INFO, "lit_convnext"):
        warnings.simplefilter("always")
        main(["fit", "--data.root", str(image_root), "--trainer.max_steps", "1", *FAST])
    assert not [w for w in shown if "could not find the monitored key" in str(w.message)]
    last = next(Path("runs").rglob("last.ckpt"))
    config = last.parent.parent / "config.yaml"
    command = f"lit-convnext validate --config {config} --ckpt_path {last}"
    assert ("No best checkpoint: no validation ran before training stopped at step 1, so there was no val/acc1 to "
            f"rank by; `{command}` measures the last weights") in caplog.text
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]
    main(command.split()[1:] + ["--progress_bar.refresh_rate", "0"])  # the command it gives runs
    with open("runs/convnext/version_1/val_predictions.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 12  # every validation image, measured with the last weights


def test_progress_bar_and_checkpointing_can_be_turned_off_the_lightning_way(image_root: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    main(["fit", "--data.root", str(image_root), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
          *FAST, "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false"])
    assert "Epoch 0" not in capsys.readouterr().out  # no progress bar
    assert (Path("runs/convnext/version_0/config.yaml")).is_file() and not list(Path("runs").rglob("*.ckpt"))


def test_printed_config_runs_again_unchanged(image_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["fit", "--data.root", str(image_root), "--trainer.fast_dev_run", "1", *FAST]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config["model"]["model_name"] == TINY_MODEL and config["data"]["root"] == str(image_root)
    Path("printed.yaml").write_text(printed)
    main(["fit", "--config", "printed.yaml"])


def test_only_the_named_subcommand_gets_a_parser(image_root: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each subcommand's parser takes a fraction of a second to build; a wrong name still lists every choice."""
    built: list[str] = []
    original = ConvNeXtCLI.subcommands  # LightningCLI builds one parser for each subcommand this returns

    def recorded(self) -> dict[str, set[str]]:
        chosen = original(self)
        built.extend(chosen)
        return chosen

    monkeypatch.setattr(ConvNeXtCLI, "subcommands", recorded)
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "--help"])
    assert exit_.value.code == 0 and set(built) == {"validate"} and "--ckpt_path" in capsys.readouterr().out
    line = one_line_error(capsys, ["fitt", "--data.root", str(image_root)])
    assert "invalid choice: 'fitt'" in line and all(name in line for name in ("fit", "validate", "test", "predict"))


def test_a_folder_error_reaches_the_user_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The folder's own errors (missing root, empty class folder, class only in val) are tested in test_folders;
    through the CLI each is one line that names the path and the option to fix."""
    line = one_line_error(capsys, ["fit", "--data.root", str(tmp_path / "missing"), *FAST])
    assert f"{tmp_path / 'missing'} does not exist" in line and "--data.root" in line


def test_missing_checkpoint_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, ["predict", "--ckpt_path", str(tmp_path / "nope.ckpt"),
                                    "--data.predict_dir", str(tmp_path)])
    assert "nope.ckpt" in line and "does not exist" in line


def test_predict_folder_without_images_is_a_one_line_error(fitted: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here")
    line = one_line_error(capsys, ["predict", "--ckpt_path", str(fitted["best"]), "--data.predict_dir", str(empty),
                                    "--data.num_workers", "0"])
    assert str(empty) in line and "no images" in line


def test_checkpoint_with_other_classes_is_refused(fitted: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other"
    make_folder(other / "train", 2, {"cat": (1, 1, 1), "dog": (2, 2, 2), "eel": (3, 3, 3)})
    make_folder(other / "val", 1, {"cat": (1, 1, 1), "dog": (2, 2, 2), "eel": (3, 3, 3)})
    line = one_line_error(capsys, ["validate", "--ckpt_path", str(fitted["best"]), "--data.root", str(other),
                                    "--data.num_workers", "0"])
    assert "red" in line and "cat" in line


def test_bf16_falls_back_to_16_mixed_on_a_gpu_without_bfloat16(image_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from lit_convnext.cli.lightning_cli import ConvNeXtCLI

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    seen: list[str] = []

    def stop(self: ConvNeXtCLI) -> None:  # the precision is decided before anything is built
        seen.append(self.config.fit.trainer.precision)
        raise SystemExit(0)

    monkeypatch.setattr(ConvNeXtCLI, "instantiate_classes", stop)
    with pytest.warns(UserWarning, match="does not support bfloat16: using 16-mixed instead of bf16-mixed"):
        with pytest.raises(SystemExit):
            main(["fit", "--data.root", str(image_root), *FAST, "--trainer.precision", "bf16-mixed"])
    assert seen == ["16-mixed"]


def test_mixup_with_an_odd_batch_is_a_one_line_error(image_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, ["fit", "--data.root", str(image_root), *FAST, "--trainer.max_epochs", "1",
                                   "--model.mixup_alpha", "0.8", "--data.batch_size", "3"])
    assert "use an even --data.batch_size, got 3" in line


def test_an_error_inside_a_loader_worker_reaches_the_user_as_one_line(image_root: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    broken = image_root / "train" / "red" / "img3.png"
    broken.write_bytes(broken.read_bytes()[:60])  # a truncated PNG that the (skipped) file check would catch
    line = one_line_error(capsys, ["fit", "--data.root", str(image_root), *FAST, "--trainer.max_epochs", "1",
                                   "--data.num_workers", "1", "--data.check_files", "false"])
    assert str(broken) in line


@pytest.mark.slow
def test_adamw_runs_fused_and_unfused_where_lightning_clips_mixed_precision_gradients(
        image_root: Path, recwarn: pytest.WarningsRecorder) -> None:
    """Lightning refuses gradient clipping with a fused optimizer under mixed precision (the fused step unscales the
    gradients itself, after the clipping); that run gets the unfused AdamW and trains. The model summary's note
    that it counts mixed-precision weights at 32 bits (which they are) is not shown."""
    with lightning_info_lines() as lines:
        main(fit_args(image_root, "--trainer.max_steps", "2", "--model.layer_decay", "null"))
    assert any("fused AdamW over 2 parameter groups, no layer decay," in line for line in lines), lines
    with lightning_info_lines() as lines:
        main(fit_args(image_root, "--trainer.max_steps", "2", "--trainer.precision", "bf16-mixed",
                      "--trainer.gradient_clip_val", "1.0"))
    assert any(" AdamW over" in line and "fused" not in line for line in lines), lines
    assert not [w for w in recwarn if "not supported by the model summary" in str(w.message)]
