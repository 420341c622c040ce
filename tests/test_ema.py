"""EMA of the weights: the decay warm-up, and which weights are validated and saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.helpers import FAST

from lit_convnext.cli import main
from lit_convnext.callbacks.ema import WarmupEMADecay


def test_decay_warms_up_from_a_tenth_and_settles_at_the_configured_decay() -> None:
    schedule = WarmupEMADecay(decay=0.999)
    values = [float(schedule.decay_at(n)) for n in (0, 1, 10, 100, 10_000)]
    assert values[0] == pytest.approx(0.1)
    assert values == sorted(values)
    assert values[2] == pytest.approx(11 / 20)
    assert values[-1] == pytest.approx(0.999)
    assert WarmupEMADecay(decay=0.999, warmup=False).decay_at(0) == 0.999


@pytest.mark.parametrize("warmup", [False, True])
def test_average_moves_towards_the_model_by_one_minus_decay(warmup: bool) -> None:
    averaged, current = [torch.zeros(3), torch.zeros(2, 2)], [torch.ones(3), torch.full((2, 2), 2.0)]
    WarmupEMADecay(decay=0.9, warmup=warmup)(averaged, current, torch.tensor(5))
    share = 1 - (6 / 15 if warmup else 0.9)  # warm-up decay after 5 updates: (1 + 5) / (10 + 5)
    torch.testing.assert_close(averaged[0], torch.full((3,), share))
    torch.testing.assert_close(averaged[1], torch.full((2, 2), 2 * share))
    counters = [torch.tensor(3)]
    WarmupEMADecay(decay=0.9)(counters, [torch.tensor(7)], torch.tensor(5))
    assert counters[0].item() == 7


def test_fit_with_ema_saves_ema_weights_and_keeps_the_raw_ones(image_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    main(["fit", "--data.root", str(image_root), *FAST, "--trainer.max_epochs", "2",
          "--trainer.callbacks+=lit_convnext.callbacks.ema.EMA", "--trainer.callbacks.decay", "0.99",
          "--model.lr", "0.05"])
    assert "validation metrics and the checkpoints' state_dict are the EMA weights" in caplog.text
    last = Path.cwd() / "runs" / "convnext" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True, map_location="cpu")
    ema, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert ema.keys() == raw.keys()
    assert not torch.equal(ema["net.head.fc.weight"], raw["net.head.fc.weight"])  # the average lags the model
