"""The progress bar reads the displayed training metrics (a GPU sync) at most once per interval."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from tests.helpers import FAST

from lightning.pytorch.callbacks import ProgressBar

from lit_convnext.callbacks.progress import ThrottledRichProgressBar

from lit_convnext.cli.entry import main

READ_METRICS = ProgressBar.get_metrics  # the real read of the logged values (what syncs with the GPU)


def _metric_reads(image_root: Path, monkeypatch: pytest.MonkeyPatch, interval: str) -> list[bool]:
    """Whether each read of the bar's metrics happened inside a training batch, for a 6-step epoch."""
    reads: list[bool] = []

    def counting(self, trainer, pl_module):
        reads.append(self._in_train_batch)
        return READ_METRICS(self, trainer, pl_module)

    monkeypatch.setattr(ProgressBar, "get_metrics", counting)
    main(["fit", "--data.root", str(image_root), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "6",
          "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
          *FAST, "--data.batch_size", "2", "--progress_bar.refresh_rate", "1",
          "--progress_bar.metrics_interval", interval])
    return reads


def test_training_metrics_are_read_once_per_interval_not_every_batch(image_root: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    every_batch = _metric_reads(image_root, monkeypatch, "0")
    throttled = _metric_reads(image_root, monkeypatch, "3600")
    assert every_batch.count(True) == 6
    assert throttled.count(True) == 1  # the first batch only
    assert throttled.count(False) == every_batch.count(False) > 0  # epoch and validation ends still update


def test_bad_callback_options_are_one_line_errors(image_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for option, value in (("--progress_bar.metrics_interval", "-1"), ("--data_wait.threshold", "1.5")):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--data.root", str(image_root), *FAST, option, value])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"lit-convnext: error: {option}") and value in err[0]


def test_the_bar_shows_a_few_short_metrics_that_fit_80_columns(image_root: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[dict] = []
    bars_metrics = ThrottledRichProgressBar.get_metrics  # what the bar displays (short names)

    def recording(self, trainer, pl_module):
        shown.append(bars_metrics(self, trainer, pl_module))
        return shown[-1]

    monkeypatch.setattr(ThrottledRichProgressBar, "get_metrics", recording)
    main(["fit", "--data.root", str(image_root), "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
          "--trainer.limit_val_batches", "1", *FAST, "--data.batch_size", "4", "--progress_bar.refresh_rate", "1"])
    assert set(shown[-1]) == {"loss", "val_acc1"}
    line = " ".join(f"{name}: {value:.3f}" for name, value in shown[-1].items())  # as Lightning's column renders
    assert len(line) < 80


def test_the_bar_is_drawn_at_most_refresh_rate_times_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning asks for a redraw after every batch and hook; at 2 draws a second, 8 steps in 1 s draw twice, and a
    hard refresh (the end of a run) always draws."""
    from lit_convnext.callbacks import progress

    clock = [0.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: clock[0]))  # this module's clock only
    draws: list[float] = []
    bar = ThrottledRichProgressBar(refresh_rate=2)
    bar.progress = SimpleNamespace(refresh=lambda: draws.append(clock[0]))
    for _ in range(8):
        clock[0] += 0.125
        bar.refresh()
    assert draws == [0.125, 0.625]
    bar.refresh(hard=True)
    assert draws == [0.125, 0.625, 1.0]
    ThrottledRichProgressBar(refresh_rate=0).refresh()  # off: no bar, nothing drawn
    assert len(draws) == 3


def test_no_drawing_thread_runs_during_training_and_the_sanity_check_is_not_shown(
        image_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training thread draws the bar (Rich's drawing thread's wake-ups hold up the step's threads, and stopping
    it waited for its sleep); what the sanity check logged is not shown as if it were a validation's."""
    import threading

    from lit_convnext.cli import lightning_cli

    seen: dict[str, object] = {}

    class Watch(ThrottledRichProgressBar):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 0:
                seen["drawing threads"] = [t for t in threading.enumerate() if "Refresh" in type(t).__name__
                                           and not t.done.is_set()]  # a stopped one ends after its sleep
                seen["first"] = dict(self._shown or {})
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    monkeypatch.setattr(lightning_cli, "ThrottledRichProgressBar", Watch)
    main(["fit", "--data.root", str(image_root), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
          "--trainer.limit_val_batches", "1", *FAST, "--data.batch_size", "2", "--progress_bar.refresh_rate", "2"])
    assert seen["drawing threads"] == []
    assert "val_acc1" not in seen["first"]
