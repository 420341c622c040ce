"""EMA of the weights: the decay that is configured is the decay that is applied; what is validated and saved."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from tests.helpers import FAST, TINY_MODEL, one_line_error
from torch.optim.swa_utils import AveragedModel

from lit_convnext.callbacks.ema import EMA, WarmupEMADecay, decay_for_horizon
from lit_convnext.cli.entry import main
from lit_convnext.data import ImageFolderDataModule
from lit_convnext.model.classifier import ConvNeXtClassifier


def test_warmup_is_a_plain_mean_until_the_configured_decay_then_exactly_that_decay() -> None:
    schedule = WarmupEMADecay(decay=0.9)
    # n models averaged so far -> n / (n + 1) (a plain mean) while that is below 0.9, i.e. for 9 updates.
    assert [schedule.decay_at(n) for n in (1, 2, 8)] == pytest.approx([1 / 2, 2 / 3, 8 / 9])
    assert [schedule.decay_at(n) for n in (9, 10, 500)] == [0.9, 0.9, 0.9]
    assert WarmupEMADecay(decay=0.9999, warmup=False).decay_at(1) == 0.9999


def test_horizon_is_converted_to_the_decay_whose_average_spans_that_share_of_the_run() -> None:
    assert decay_for_horizon(0.1, 500) == pytest.approx(1 - 1 / 50)
    assert decay_for_horizon(0.5, 40) == pytest.approx(0.95)


@pytest.mark.parametrize("warmup", [False, True])
def test_average_moves_towards_the_model_by_one_minus_decay(warmup: bool) -> None:
    averaged, current = [torch.zeros(3), torch.zeros(2, 2)], [torch.ones(3), torch.full((2, 2), 2.0)]
    WarmupEMADecay(decay=0.9, warmup=warmup)(averaged, current, torch.tensor(5))
    share = 1 - (5 / 6 if warmup else 0.9)  # warm-up after 5 averaged models: the mean of 6, share 1/6
    torch.testing.assert_close(averaged[0], torch.full((3,), share))
    torch.testing.assert_close(averaged[1], torch.full((2, 2), 2 * share))
    counters = [torch.tensor(3)]
    WarmupEMADecay(decay=0.9)(counters, [torch.tensor(7)], torch.tensor(5))
    assert counters[0].item() == 7


def test_warmup_average_is_the_mean_of_the_weights_then_an_ema_of_it() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    average = AveragedModel(model, multi_avg_fn=WarmupEMADecay(decay=0.75))
    for value in [4.0, 8.0, 0.0, 12.0, 4.0]:
        model.weight.data.fill_(value)
        average.update_parameters(model)
    # Updates 1-4 give the plain mean (6 after four; the 4th's weight 3/4 is the decay), the 5th the decay 0.75.
    assert average.module.weight.item() == pytest.approx(0.75 * 6.0 + 0.25 * 4.0)


def test_both_decay_and_horizon_is_a_one_line_error(capsys, image_root: Path) -> None:
    line = one_line_error(capsys, ["fit", "--data.root", str(image_root), *FAST,
                                   "--trainer.callbacks+=lit_convnext.callbacks.ema.EMA",
                                   "--trainer.callbacks.decay", "0.99", "--trainer.callbacks.horizon", "0.1"])
    assert "give either decay (0.99) or horizon (0.1), not both" in line


class _Steps:
    """What the EMA callback reads from a trainer before the fit."""

    def __init__(self, total: float) -> None:
        self.estimated_stepping_batches = total


@pytest.mark.parametrize(("options", "expected"), [
    ({"decay": 0.9998}, 0.9998),
    ({"decay": 0.9999}, 0.9999),
    ({"horizon": 0.2}, 1 - 1 / 100),
    ({}, 1 - 1 / 50),  # the default horizon, 0.1
])
def test_configured_decay_is_the_one_in_use_for_a_500_step_run(options: dict, expected: float) -> None:
    ema = EMA(**options)
    ema.on_fit_start(_Steps(500), None)
    assert ema.schedule.decay == pytest.approx(expected, rel=0, abs=1e-12)
    assert ema.schedule.decay_at(10_000) == pytest.approx(expected, rel=0, abs=1e-12)


def test_a_decay_too_slow_for_the_run_is_applied_as_given_and_warned_about(caplog) -> None:
    ema = EMA(decay=0.9999, warmup=False)
    with pytest.warns(UserWarning, match="averages over ~10000 steps but the run has 500"):
        ema.on_fit_start(_Steps(500), None)
    assert ema.schedule.decay_at(1) == 0.9999


def test_fit_applies_logs_and_saves_the_configured_average(image_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 24 training images / batch 8 = 3 steps per epoch, 6 in all; horizon 0.5 -> decay 1 - 1/3.
    main(["fit", "--data.root", str(image_root), *FAST, "--trainer.max_epochs", "2",
          "--trainer.callbacks+=lit_convnext.callbacks.ema.EMA", "--trainer.callbacks.horizon", "0.5",
          "--model.lr", "0.05", "--trainer.log_every_n_steps", "1"])
    assert "decay 0.666667 (horizon 0.5 of 6 steps" in caplog.text
    run = Path.cwd() / "runs" / "convnext" / "version_0"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run)).Reload()
    logged = [e.value for e in events.Scalars("ema/decay")]
    assert logged and logged[-1] == pytest.approx(2 / 3, rel=1e-6)  # the last update uses the configured decay
    # What is validated and saved: the EMA weights, with the raw ones beside them.
    assert "Validation metrics and the checkpoints' state_dict are the EMA weights" in caplog.text
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    ema, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert ema.keys() == raw.keys()
    assert not torch.equal(ema["net.head.fc.weight"], raw["net.head.fc.weight"])  # the average lags the model

    # Evaluating that run with its own config (the EMA callback in it) measures the average, without Lightning's
    # notice that the averaging state is not restored outside fit.
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        main(["validate", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert not [w for w in shown if "WeightAveraging callback" in str(w.message)]


class RecordWeights(Callback):
    """The raw weights after the last optimizer step (runs before the EMA callback's update)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights = copy.deepcopy(pl_module.state_dict())


def test_without_warmup_the_first_update_applies_the_decay_to_the_starting_weights(image_root: Path) -> None:
    model = ConvNeXtClassifier(model_name=TINY_MODEL, pretrained=False, class_names=["blue", "green", "red"],
                               image_size=32, lr=0.4)
    start = copy.deepcopy(model.state_dict())
    data = ImageFolderDataModule(image_root, batch_size=8, num_workers=0)
    ema, recorder = EMA(decay=0.5, warmup=False), RecordWeights()
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=[recorder, ema])
    trainer.fit(model, data)
    raw, averaged = recorder.weights, model.state_dict()  # the fit ends with the average copied into the model
    # One update at decay 0.5: halfway between the weights the fit started with and the model after one step.
    name = "net.stages.0.blocks.0.conv_dw.weight"
    assert not torch.equal(raw[name], start[name])
    torch.testing.assert_close(averaged[name], 0.5 * start[name] + 0.5 * raw[name])
