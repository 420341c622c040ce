"""``lit-convnext tune``: the space and the command line's split (pure functions), the one-line refusals before any
training, and whole searches on a tiny folder: SQLite, a failed trial, resume of a killed search, best.yaml."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import FAST, REPO, one_line_error

optuna = pytest.importorskip("optuna", reason="the `tune` extra (optuna) is not installed")

from lit_convnext.commands.tune import split_arguments  # noqa: E402
from lit_convnext.errors import UserError  # noqa: E402
from lit_convnext.tuning import space as spaces  # noqa: E402
from lit_convnext.tuning.search import hidden_password, parse_duration  # noqa: E402

#: A search's fit options: the fast tiny model, two epochs (a pruner needs more than one report).
def tune_args(root: Path, *extra: str) -> list[str]:
    return ["tune", "--data.root", str(root), "--trainer.max_epochs", "2", *FAST, "--evaluation.enabled", "false",
            *extra]


def test_split_keeps_fit_options_and_takes_tune_ones() -> None:
    tune, fit = split_arguments(["--data.root", "d", "--tune.trials", "3", "--tune.study_name=s", "--model.lr", "1"])
    assert tune == ["--tune.trials", "3", "--tune.study_name=s"]
    assert fit == ["--data.root", "d", "--model.lr", "1"]


def test_durations_and_hidden_password() -> None:
    assert parse_duration("90") == 90 and parse_duration("00:01:30:00") == 5400 and parse_duration(None) is None
    with pytest.raises(UserError, match="DD:HH:MM:SS"):
        parse_duration("soon")
    assert hidden_password("postgresql://me:secret@db/x") == "postgresql://me:***@db/x"


def test_default_space_is_centred_on_the_recipe_and_yaml_overrides_it() -> None:
    config = {"model": {"lr": 4e-3, "layer_decay": None}, "trainer": {"max_epochs": 12}}
    default = spaces.default_space(config)
    assert default["model.lr"]["low"] == pytest.approx(1e-3) and default["model.lr"]["high"] == pytest.approx(1.6e-2)
    assert "model.layer_decay" not in default  # nothing pretrained: no layer decay to search
    merged = spaces.merge_space(default, spaces.read_space("{model.lr: {low: 0.01, high: 0.1}, model.mixup_alpha: null}"))
    assert merged["model.lr"] == {"low": 0.01, "high": 0.1, "log": False} and "model.mixup_alpha" not in merged
    with pytest.raises(UserError, match="no range"):
        spaces.merge_space(default, {"model.lr": 3})
    assert spaces.missing_options({"model.lr": {}, "model.nope": {}}, {"model": {"lr": 1}}) == ["model.nope"]
    assert spaces.as_arguments({"model.lr": 0.001, "model.mixup_alpha": 0.0}) == ["--model.lr", "0.001",
                                                                                  "--model.mixup_alpha", "0.0"]


def test_pruning_stops_a_trial_before_its_last_epoch_only() -> None:
    import torch
    from types import SimpleNamespace

    from lit_convnext.tuning.search import pruning_callback

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    trial = study.ask()
    callback = pruning_callback(trial, "val/acc1")
    trainer = SimpleNamespace(max_epochs=3, sanity_checking=False, callback_metrics={"val/acc1": torch.tensor(0.1)})
    callback.on_validation_end(trainer, SimpleNamespace(current_epoch=2))  # last epoch: reported, kept
    assert study.trials[0].intermediate_values == {2: pytest.approx(0.1)}
    with pytest.raises(optuna.TrialPruned):
        callback.on_validation_end(trainer, SimpleNamespace(current_epoch=1))


@pytest.mark.slow  # a CLI parse (~2 s on 2 cores, torch and Lightning imported)
def test_a_space_naming_no_option_is_one_line(capsys: pytest.CaptureFixture[str], image_root: Path) -> None:
    line = one_line_error(capsys, tune_args(image_root, "--tune.space", "{model.lr_typo: {low: 1, high: 2}}"))
    assert "model.lr_typo" in line and "no option of `fit`" in line
    assert not Path("runs/tune/study/study.db").exists() or not list(Path("runs/tune/study").glob("trial_*"))


@pytest.mark.slow  # three CLI parses (~1 s each on 2 cores)
def test_bad_space_values_and_unreachable_storage_are_one_line(capsys: pytest.CaptureFixture[str],
                                                               image_root: Path) -> None:
    line = one_line_error(capsys, tune_args(image_root, "--tune.space", "{model.drop_path_rate: {low: 0, high: 2}}"))
    assert "--model.drop_path_rate 2" in line, line
    line = one_line_error(capsys, tune_args(image_root, "--tune.storage", "postgresql://u:pw@127.0.0.1:9/db"))
    assert "cannot open the study's database" in line and "pw" not in line, line
    assert not list(Path("runs").rglob("trial_*"))  # nothing trained


def read_trials(root: Path) -> list[dict[str, str]]:
    with (root / "trials.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # three short trials and a fit (~30 s on 2 cores)
def test_tune_on_sqlite_writes_trials_best_yaml_that_reproduces_the_best(image_root: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from lit_convnext.cli.entry import main

    with pytest.raises(SystemExit) as ended:
        main(tune_args(image_root, "--tune.trials", "3"))
    assert ended.value.code == 0
    out = capsys.readouterr().out
    root = Path("runs/tune/study")
    best_line = [line for line in out.splitlines() if line.startswith("Best val/acc1")]
    assert best_line and f"lit-convnext fit --config {root / 'best.yaml'}" in best_line[0]
    rows = read_trials(root)
    assert len(rows) == 3 and rows[0]["recipe"] == "True"
    assert all(Path(row["run_dir"]).is_dir() for row in rows if row["state"] == "COMPLETE")
    assert (root / "study.db").is_file() and (root / "tune_report.html").is_file() and (root / "tune.png").is_file()
    best_config = yaml.safe_load((root / "best.yaml").read_text(encoding="utf-8"))
    assert "tune" not in best_config and best_config["data"]["root"] == str(image_root)
    best = max((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: float(r["value"]))
    for name, value in best.items():
        if name.startswith("model.") and value != "":
            section, key = name.split(".", 1)
            assert best_config[section][key] == pytest.approx(float(value))
    # The best trial again, from best.yaml alone: the same score.
    from lit_convnext.cli.lightning_cli import build_cli

    cli = build_cli(["fit", "--config", str(root / "best.yaml"), "--trainer.default_root_dir", "again"])
    assert float(cli.trainer.checkpoint_callback.best_model_score) == pytest.approx(float(best["value"]))


@pytest.mark.slow  # three trials, each stopped by a non-finite loss (~15 s)
def test_failed_trials_are_recorded_and_the_search_goes_on(image_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lit_convnext.cli.entry import main

    with pytest.raises(SystemExit) as ended:
        main(tune_args(image_root, "--tune.trials", "3", "--trainer.max_epochs", "1",
                       "--tune.space", "{model.lr: {choices: [1.0e+12]}, model.head_init_scale: {choices: [1.0e+6]}}"))
    assert ended.value.code == 2
    captured = capsys.readouterr()
    assert captured.out.count("failed: ") == 3, captured.out
    assert "no trial of study study completed" in captured.err
    rows = read_trials(Path("runs/tune/study"))
    assert [row["state"] for row in rows] == ["FAIL"] * 3 and all(row["error"] for row in rows)


def study_states(db: Path) -> list[str]:
    with sqlite3.connect(db) as connection:
        return [state for (state,) in connection.execute("SELECT state FROM trials ORDER BY number")]


@pytest.mark.slow  # a killed search process and its continuation (~40 s)
def test_a_killed_search_continues_with_its_study_name(image_root: Path, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "lit_convnext", *tune_args(image_root, "--tune.trials", "3",
                                                              "--tune.study_name", "kept")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    db = Path("runs/tune/kept/study.db")
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (db.is_file() and "COMPLETE" in study_states(db)):
            time.sleep(0.5)
        assert "COMPLETE" in study_states(db), "the first trial did not finish"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    before = study_states(db)
    assert before.count("COMPLETE") + before.count("PRUNED") < 3
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    after = study_states(db)
    assert after[: len(before)][0] == "COMPLETE"  # the first process's trial is kept
    assert sum(state in ("COMPLETE", "PRUNED", "FAIL") for state in after) == 3  # the budget counts both processes
    assert "Best val/acc1" in done.stdout


@pytest.mark.slow  # a search's start-up and four steps of its first trial (~8 s)
def test_a_new_study_with_a_budget_shorter_than_one_epoch_is_one_line(image_root: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, tune_args(image_root, "--tune.max_time", "3", "--tune.trials", "5",
                                            "--data.batch_size", "1", "--trainer.callbacks+",
                                            "tests.callbacks.test_time_budget.SlowSteps"))
    assert "--tune.max_time 3 s is shorter than one epoch" in line and "its 24 steps need about" in line, line
    # One trial was started and stopped a few steps in; no other was tried.
    with sqlite3.connect("runs/tune/study/study.db") as connection:
        assert connection.execute("SELECT COUNT(*) FROM trials").fetchone() == (1,)


def _search_whose_trials_run_out_of_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    """A search over an in-memory study whose trials' fits stop on a budget that holds no epoch (no training)."""
    from lit_convnext.callbacks.time_budget import BudgetTooShort
    from lit_convnext.cli import lightning_cli
    from lit_convnext.tuning.search import MlflowParent, Search

    def too_short(args, callbacks=None):
        raise BudgetTooShort(40, 90.0, 30)

    monkeypatch.setattr(lightning_cli, "lightning_command", too_short)
    search = Search.__new__(Search)  # the attributes __init__ sets from a parsed command line
    search.study = optuna.create_study(direction="maximize")
    search.fit_args, search.space, search.root, search.monitor = [], {}, tmp_path, "val/acc1"
    search.trials, search.max_time, search.config = 5, 100.0, {"trainer": {}}
    search.mlflow, search.too_short, search.study_name = MlflowParent(), None, "study"
    return search


@pytest.mark.slow  # imports the CLI's modules (~2 s on 2 cores)
def test_a_budget_holding_no_epoch_ends_the_search_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # A new study: its first trial's measured epoch does not fit --tune.max_time, which is one line.
    search = _search_whose_trials_run_out_of_time(tmp_path, monkeypatch)
    with pytest.raises(UserError, match=r"^--tune.max_time 100 s is shorter than one epoch: .* about 90 s"):
        search.run()
    trials = search.study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL"] and trials[0].user_attrs["epoch_seconds"] == 90.0
    # A study with a trained epoch: a late trial finding no room left ends the search without an error.
    search = _search_whose_trials_run_out_of_time(tmp_path, monkeypatch)
    search.study.add_trial(optuna.trial.create_trial(value=0.5, intermediate_values={0: 0.5}))
    search.run()
    assert [t.state.name for t in search.study.get_trials()] == ["COMPLETE", "FAIL"]
    assert "hold no epoch (90 s); the search ends" in capsys.readouterr().out
