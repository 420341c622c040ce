"""``--trainer.max_time``: the run ends annealed, validated and analysed within the budget (``TimeBudget``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from lit_convnext.callbacks.time_budget import TimeBudget
from lit_convnext.cli.entry import main
from tests.helpers import fit_args, one_line_error

BUDGET_S = 40
MIN_LR = 1e-5


class _Keep(Callback):
    """Keeps the Trainer (and the lr of each step), to read them after ``main`` returns."""

    seen: dict = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _Keep.seen["trainer"] = trainer
        _Keep.seen.setdefault("lrs", []).append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.slow  # trains for the whole budget: about 50 s
def test_a_time_budget_ends_annealed_with_a_best_checkpoint_and_report(image_root: Path) -> None:
    _Keep.seen = {}
    start = time.monotonic()
    main(fit_args(image_root, "--trainer.max_time", f'{{"seconds": {BUDGET_S}}}', "--trainer.max_epochs", "1000",
                  "--model.layer_decay", "null", "--model.lr", "0.04", "--model.min_lr", str(MIN_LR), "--model.warmup_epochs", "1",
                  "--trainer.callbacks+", "tests.callbacks.test_time_budget._Keep"))
    wall = time.monotonic() - start
    trainer, lrs = _Keep.seen["trainer"], _Keep.seen["lrs"]
    # Ended by the plan after whole epochs (not by the Timer mid-epoch), and then annealed to min_lr.
    assert 2 < trainer.current_epoch < 1000
    assert trainer.global_step == len(lrs) and lrs[-1] == pytest.approx(MIN_LR, rel=1e-3)
    assert max(lrs) > 20 * MIN_LR  # it did warm up and decay, not sit at min_lr
    run = next(Path("runs/convnext").iterdir())
    assert list((run / "checkpoints").glob("best-*.ckpt")) and (run / "report.html").is_file()
    # The budget counts from the training loop's start (as Lightning's Timer); start-up before it is a few seconds.
    assert wall < BUDGET_S + 15, wall
    timer = TimeBudget.timer(trainer)
    assert timer.time_elapsed() <= BUDGET_S


def test_a_time_budget_without_an_epoch_limit_is_one_line(image_root: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, fit_args(image_root, "--trainer.max_time", "00:00:01:00",
                                           "--trainer.max_epochs", "-1"))
    assert "--trainer.max_time with --trainer.max_epochs -1" in line and "--trainer.max_epochs N" in line


def test_without_max_time_the_run_keeps_its_epochs(image_root: Path) -> None:
    """Inert without a budget: the fit loop's epochs and the schedule are the configured ones."""
    from lightning.pytorch import Trainer

    assert TimeBudget.timer(Trainer(logger=False, enable_checkpointing=False)) is None


class SlowSteps(Callback):
    """Each training step takes at least 0.2 s more, so an epoch's length does not depend on the machine's load."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(0.2)


#: 24 images one at a time: an epoch of 24 steps, at least 4.8 s with SlowSteps.
ONE_IMAGE_STEPS = ["--data.batch_size", "1", "--trainer.callbacks+", "tests.callbacks.test_time_budget.SlowSteps"]


@pytest.mark.slow  # a fit's start-up and four steps (~5 s)
def test_a_budget_shorter_than_one_epoch_is_one_line_after_a_few_steps(image_root: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    line = one_line_error(capsys, fit_args(image_root, "--trainer.max_time", "00:00:00:03", "--trainer.max_epochs", "5",
                                           *ONE_IMAGE_STEPS))
    assert "--trainer.max_time 3 s is shorter than one epoch" in line and "its 24 steps need about" in line, line
    assert "give at least" in line
    epoch = float(line.split("need about ")[1].split(" s")[0])
    assert epoch >= 4.8  # the measured steps' rate, times the epoch's steps
    assert not list(Path("runs").rglob("best-*.ckpt"))  # it stopped in the first epoch, nothing validated
    assert time.monotonic() - start < 60
