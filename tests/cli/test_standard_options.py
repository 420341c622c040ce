"""Lightning's standard options work as users know them: the run directory and switching defaults off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.helpers import FAST, fit_args

from lit_convnext.cli.entry import main

FIT_LIMITS = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]


def test_run_directory_follows_default_root_dir(image_root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"  # neither the repository nor the current directory
    elsewhere.mkdir()
    os.chdir(elsewhere)
    target = tmp_path / "scratch" / "my_runs"
    main(fit_args(image_root, "--trainer.default_root_dir", str(target), *FIT_LIMITS,
                  "--data.val_fraction", "0.25"))
    run = target / "convnext" / "version_0"
    for name in ("checkpoints/last.ckpt", "config.yaml", "hparams.yaml"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))
    assert not (elsewhere / "runs").exists() and not list(elsewhere.iterdir())

    # --ckpt_path last looks there too and continues that run in place
    main(fit_args(image_root, "--trainer.default_root_dir", str(target), *FIT_LIMITS,
                  "--trainer.max_epochs", "2", "--ckpt_path", "last"))
    assert sorted(p.name for p in (target / "convnext").iterdir()) == ["version_0"]
    assert not list(elsewhere.iterdir())


def test_split_manifest_and_load_report_follow_default_root_dir(tmp_path: Path) -> None:
    from tests.helpers import make_folder

    root = make_folder(tmp_path / "flat", 5)  # no val/: the held-out split is written as a manifest
    target = tmp_path / "out"
    main(fit_args(root, "--trainer.default_root_dir", str(target), *FIT_LIMITS, "--data.batch_size", "4"))
    assert (target / "convnext" / "version_0" / "split_manifest.csv").is_file()
    assert not Path("runs").exists()


@pytest.mark.slow
def test_an_explicit_logger_save_dir_wins(image_root: Path, tmp_path: Path) -> None:
    main(fit_args(image_root, "--trainer.default_root_dir", str(tmp_path / "root"),
                  "--trainer.logger.save_dir", str(tmp_path / "logs"), *FIT_LIMITS))
    assert (tmp_path / "logs" / "convnext" / "version_0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("switch", ["logger", "enable_checkpointing", "enable_progress_bar", "enable_model_summary"])
def test_switching_a_default_off_never_crashes(switch: str, fitted: dict[str, Path], tmp_path: Path) -> None:
    off = [f"--trainer.{switch}", "false"]
    root = fitted["root"]
    main(fit_args(root, *off, *FIT_LIMITS))
    if switch == "logger":  # no logger: the run is <default_root_dir>/version_N, its checkpoints in it
        assert (Path("runs") / "version_0" / "checkpoints" / "last.ckpt").is_file()
    if switch == "enable_checkpointing":
        assert not list(Path("runs").rglob("*.ckpt"))
    _evaluate_and_predict(fitted, tmp_path, off)


def _evaluate_and_predict(fitted: dict[str, Path], tmp_path: Path, options: list[str]) -> None:
    """``validate``, ``test`` and ``predict`` of the fitted checkpoint with ``options``; predict writes every row."""
    root = fitted["root"]
    for command in ("validate", "test"):
        main([command, "--ckpt_path", str(fitted["best"]), "--data.root", str(root), *FAST, *options])
    out = tmp_path / "preds.csv"
    main(["predict", "--ckpt_path", str(fitted["best"]), "--data.predict_dir", str(root / "val"),
          "--output", str(out), *FAST, *options])
    assert len(out.read_text().splitlines()) == 1 + 12


def test_barebones_runs_every_command_without_the_features_it_turns_off(fitted: dict[str, Path], tmp_path: Path,
                                                                       recwarn: pytest.WarningsRecorder) -> None:
    """``--trainer.barebones true`` (Lightning's loop alone, for timing it) refuses a logger, checkpointing, a
    progress bar and a log interval: the app's defaults of those and its reports follow it off."""
    root, barebones = fitted["root"], ["--trainer.barebones", "true"]
    main(fit_args(root, *barebones, *FIT_LIMITS))
    assert not list(Path("runs").rglob("*.ckpt")) and not list(Path("runs").rglob("events.out.tfevents*"))
    assert not list(Path("runs").rglob("val_*.csv"))  # no per-class files, no end-of-fit analysis
    _evaluate_and_predict(fitted, tmp_path, barebones)
    dropped_logs = "You are trying to `self.log()` but `Trainer(barebones=True)`"  # Lightning, at every dropped log
    assert not [w for w in recwarn if dropped_logs in str(w.message)]


def test_barebones_with_a_feature_it_turns_off_is_one_line(image_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers import one_line_error

    line = one_line_error(capsys, fit_args(image_root, "--trainer.barebones", "true",
                                           "--trainer.enable_checkpointing", "true"))
    assert "barebones=True, enable_checkpointing=True" in line and "Leave that option out" in line


def test_a_fit_in_bfloat16_weights_runs_to_its_report(image_root: Path) -> None:
    """``--trainer.precision bf16-true`` (weights in bfloat16, not mixed precision) through the model summary, the
    training steps and the end-of-fit analysis."""
    main(fit_args(image_root, "--trainer.precision", "bf16-true", *FIT_LIMITS))
    run = next(Path("runs/convnext").iterdir())
    assert list((run / "checkpoints").glob("best-*.ckpt")) and (run / "report.html").is_file()
