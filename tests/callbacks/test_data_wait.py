"""The data-wait warning fires for a slow loader and stays quiet for a fast one."""

from __future__ import annotations

import time

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lit_convnext.cli.entry import main
from lit_convnext.callbacks.data_wait import DataWaitMonitor


class _Images(Dataset):
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        time.sleep(self.delay)
        return torch.randn(8), index % 2


class _Linear(pl.LightningModule):
    def __init__(self, step_time: float = 0.0) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 2)
        self.step_time = step_time

    def training_step(self, batch, batch_idx):
        time.sleep(self.step_time)
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(delay: float, step_time: float) -> DataWaitMonitor:
    monitor = DataWaitMonitor(threshold=0.3, min_steps=5)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[monitor])
    trainer.fit(_Linear(step_time), DataLoader(_Images(delay), batch_size=2))
    return monitor


def test_slow_loader_gets_a_warning_with_advice() -> None:
    with pytest.warns(UserWarning, match=r"waited for data \d+% .*--data.num_workers \(now 0\)"):
        monitor = _fit(delay=0.1, step_time=0.0)
    assert monitor.warned and monitor.wait_share > 0.5


def test_fast_loader_gets_no_warning(recwarn: pytest.WarningsRecorder) -> None:
    monitor = _fit(delay=0.0, step_time=0.1)
    assert not monitor.warned and monitor.wait_share < 0.3
    assert not [w for w in recwarn if "waited for data" in str(w.message)]


def test_cli_registers_the_monitor_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--print_config"])
    assert "data_wait:\n  threshold: 0.3" in capsys.readouterr().out


def test_each_epoch_is_judged_on_its_own_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fast epoch, then one whose steps wait half the time: the second warns, named. Counted over both epochs the
    share would stay at a third, under the threshold."""
    from types import SimpleNamespace

    from lit_convnext.callbacks import data_wait

    clock = [0.0]
    monkeypatch.setattr(data_wait, "time", SimpleNamespace(perf_counter=lambda: clock[0]))  # this module's clock only
    monitor = DataWaitMonitor(threshold=0.4, min_steps=5)
    trainer = SimpleNamespace(train_dataloader=None, datamodule=None, current_epoch=0)
    for epoch, wait in ((0, 0.0), (1, 1.0)):
        trainer.current_epoch = epoch
        monitor.on_train_epoch_start(trainer, None)
        for step in range(11):
            clock[0] += wait  # waiting for the batch
            monitor.on_train_batch_start(trainer, None, None, step)
            clock[0] += 1.0  # the step
            if epoch == 1 and step == 5:
                with pytest.warns(UserWarning, match=r"waited for data 50% of the time over the first 5 steps of "
                                                     r"epoch 1"):
                    monitor.on_train_batch_end(trainer, None, None, None, step)
            else:
                monitor.on_train_batch_end(trainer, None, None, None, step)
        assert monitor.warned == (epoch == 1)
    assert monitor.steps == 10 and monitor.wait_share == pytest.approx(0.5)  # the epoch's first batch not counted
