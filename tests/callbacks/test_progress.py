"""The progress bar reads the displayed training metrics (a wait for the accelerator) only when it redraws."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lightning.pytorch.callbacks import ProgressBar
from tests.helpers import FAST

from lit_convnext.callbacks.progress import CompactProgressBar
from lit_convnext.cli.entry import main

READ_METRICS = ProgressBar.get_metrics  # the real read of the logged values (what waits for the accelerator)


def _fit(image_root: Path, *extra: str) -> None:
    """One 6-step epoch with one validation batch and no sanity check; ``extra`` last (it overrides FAST)."""
    main(["fit", "--data.root", str(image_root), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "6",
          "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0", *FAST, "--data.batch_size", "2",
          *extra])


def _metric_reads(image_root: Path, monkeypatch: pytest.MonkeyPatch, refresh_rate: int) -> int:
    """How often the bar read the logged metrics during a 6-step epoch."""
    reads: list[int] = []

    def counting(self, trainer, pl_module):
        reads.append(trainer.global_step)
        return READ_METRICS(self, trainer, pl_module)

    monkeypatch.setattr(ProgressBar, "get_metrics", counting)
    _fit(image_root, "--progress_bar.refresh_rate", str(refresh_rate))
    return len(reads)


@pytest.mark.slow  # a few seconds: kept out of the quick tier
def test_training_metrics_are_read_at_the_redraws_not_every_batch(image_root: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    every_batch = _metric_reads(image_root, monkeypatch, 1)
    every_third = _metric_reads(image_root, monkeypatch, 3)
    assert every_batch - every_third == 6 - 2  # batches 3 and 6 instead of all six; epoch and validation ends alike
    assert _metric_reads(image_root, monkeypatch, 0) < every_third  # no bar: no reads at its redraws


def test_a_bad_refresh_rate_is_a_one_line_error(image_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for option, value in (("--progress_bar.refresh_rate", "-1"), ("--data_wait.threshold", "1.5")):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--data.root", str(image_root), *FAST, option, value])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"lit-convnext: error: {option}") and value in err[0]


def test_the_bar_shows_a_few_short_metrics_on_one_line(image_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    shown: list[dict] = []
    bars_metrics = CompactProgressBar.get_metrics  # what the bar displays (short names)

    def recording(self, trainer, pl_module):
        shown.append(bars_metrics(self, trainer, pl_module))
        return shown[-1]

    monkeypatch.setattr(CompactProgressBar, "get_metrics", recording)
    main(["fit", "--data.root", str(image_root), "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
          "--trainer.limit_val_batches", "1", *FAST, "--data.batch_size", "4", "--progress_bar.refresh_rate", "1"])
    assert set(shown[-1]) == {"loss", "val_acc1"}  # not every logged metric, nor the version number
    line = " ".join(f"{name}={value:.3f}" for name, value in shown[-1].items())  # as tqdm's postfix renders
    assert len(line) < 40
    drawn = capsys.readouterr()
    assert "Epoch 1" in drawn.out + drawn.err and "loss=" in drawn.out + drawn.err


def test_the_progress_bar_options_of_an_earlier_config_still_load(image_root: Path, tmp_path: Path) -> None:
    """A config.yaml saved when the bar was Rich's names its theme and metrics_interval: it runs, with a warning."""
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump({"progress_bar": {
        "refresh_rate": 0, "leave": False, "metrics_interval": 1.0, "console_kwargs": None,
        "theme": {"description": "", "progress_bar": "#6206E0", "metrics": "italic", "metrics_format": ".3f"}}}))
    with pytest.warns(UserWarning, match=r"--progress_bar.metrics_interval, --progress_bar.theme: no longer used"):
        _fit(image_root, "--config", str(saved))
    assert list(Path("runs").rglob("last.ckpt"))
