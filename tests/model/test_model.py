"""What the model builds and how it trains: the options that reach timm's network, the lr schedule, metrics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tests.helpers import TINY_MODEL
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import Logger

from lit_convnext.data import ImageFolderDataModule, TrainAugmentation
from lit_convnext.errors import UserError
from lit_convnext.model.classifier import ConvNeXtClassifier


def classifier(**overrides) -> ConvNeXtClassifier:
    options = dict(model_name=TINY_MODEL, pretrained=False, class_names=["a", "b", "c"], image_size=32)
    options.update(overrides)
    return ConvNeXtClassifier(**options)


def blocks(model: ConvNeXtClassifier) -> list[torch.nn.Module]:
    return [block for stage in model.net.stages for block in stage.blocks]


def test_the_regularisation_and_head_options_reach_the_built_network() -> None:
    """drop_path_rate, layer_scale_init_value and head_init_scale are handed to timm (whose ramp and inits are
    timm's own): the last block drops at the rate, every block's layer scale starts at the value, and the head's
    weights are scaled by the factor."""
    torch.manual_seed(0)
    model = classifier(drop_path_rate=0.3, layer_scale_init_value=0.5, head_init_scale=0.001)
    torch.manual_seed(0)
    unscaled = classifier(drop_path_rate=0.3, layer_scale_init_value=0.5, head_init_scale=1.0)
    assert blocks(model)[-1].drop_path.drop_prob == pytest.approx(0.3)
    assert all(torch.all(b.gamma == 0.5) for b in blocks(model))
    assert model.net.head.fc.weight.shape == (3, 320)
    assert torch.allclose(model.net.head.fc.weight, unscaled.net.head.fc.weight * 0.001)


def test_unknown_model_name_suggests_close_names() -> None:
    with pytest.raises(UserError, match="convnext_tiny"):
        classifier(model_name="convnext_tinny")


class RecordLR(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx % trainer.accumulate_grad_batches == 0:
            head_group = max(trainer.optimizers[0].param_groups, key=lambda g: g["lr_scale"])
            self.lrs.append(head_group["lr"])


def test_lr_schedule_warms_up_then_follows_a_cosine_over_the_real_steps(image_root: Path) -> None:
    data = ImageFolderDataModule(image_root, batch_size=4, num_workers=0,
                                 augmentation=TrainAugmentation(rand_augment=None, random_erasing=0.0))
    model = classifier(lr=0.256, warmup_epochs=1.0, min_lr=1e-4)
    recorder = RecordLR()
    trainer = Trainer(max_epochs=4, accumulate_grad_batches=2, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(model, data)
    # 24 images / batch 4 = 6 batches per epoch, 2 accumulated -> 3 optimizer steps per epoch, 12 in all.
    lrs = recorder.lrs
    assert trainer.global_step == 12 and len(lrs) == 12
    peak = 0.256 * (4 * 1 * 2) / 256  # lr x effective batch / reference
    warmup = lrs[:3]
    assert warmup[0] < warmup[1] < warmup[2] and warmup[1] - warmup[0] == pytest.approx(warmup[2] - warmup[1])
    assert lrs[3] == pytest.approx(peak)
    cosine = lrs[3:]
    for step, lr in enumerate(cosine):
        expected = 1e-4 + 0.5 * (peak - 1e-4) * (1 + math.cos(math.pi * step / 9))
        assert lr == pytest.approx(expected, rel=1e-6)


def test_acc1_and_acc5_are_shares_of_all_images_and_f1_is_macro() -> None:
    """Top-1/top-5 as timm and the papers report them, not torchmetrics' default mean per-class recall."""
    model = classifier(class_names=[f"c{i}" for i in range(6)])
    metrics = model.metrics["val_metrics"]
    targets = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1])  # imbalanced: seven images of c0, one of c1
    logits = torch.zeros(8, 6)
    logits[:7, 0] = 1.0  # every c0 image right
    logits[7, 5] = 1.0  # the c1 image wrong at top-1 ...
    logits[7, 1] = 0.5  # ... but in the top 5
    logits[7, 0] = -1.0  # (c0 ranks last for it)
    metrics.update(logits, targets)
    result = metrics.compute()
    assert result["val/acc1"].item() == pytest.approx(7 / 8)  # the mean per-class recall would be 0.5
    assert result["val/acc5"].item() == pytest.approx(1.0)
    # Macro F1 over the classes that occur: c0 (1.0), c1 (missed: 0) and c5 (predicted once, wrongly: 0).
    assert result["val/f1"].item() == pytest.approx(1 / 3)


def test_training_accuracy_is_logged_once_per_epoch_over_all_its_images(image_root: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """train/acc1 and train/f1 are logged at each epoch's end, computed over every training image of that epoch,
    and the metrics start again for the next epoch."""
    from lit_convnext.model import classifier as model_module

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    loss = model_module.classification_loss

    def recording(logits, targets, *args, **kwargs):
        seen.append((logits.detach().argmax(dim=1), targets))
        return loss(logits, targets, *args, **kwargs)

    monkeypatch.setattr(model_module, "classification_loss", recording)

    class EpochEnd(Callback):
        def __init__(self) -> None:
            self.logged: list[tuple[float, int]] = []

        def on_train_end(self, trainer, pl_module) -> None:
            self.logged.append((float(trainer.callback_metrics["train/acc1"]), len(seen)))

    data = ImageFolderDataModule(image_root, batch_size=4, num_workers=0,
                                 augmentation=TrainAugmentation(rand_augment=None, random_erasing=0.0))
    end = EpochEnd()
    trainer = Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, callbacks=[end])
    trainer.fit(classifier(lr=0.5), data)
    per_epoch = len(seen) // 2  # 24 images / batch 4 = 6 steps per epoch
    assert per_epoch == 6
    predicted, targets = (torch.cat(t) for t in zip(*seen[per_epoch:]))  # the second epoch only
    assert len(targets) == 24
    accuracy = (predicted == targets).float().mean().item()
    assert end.logged == [(pytest.approx(accuracy), 12)]
    assert "train/f1" in trainer.callback_metrics and "train/acc1_step" not in trainer.callback_metrics


class RecordingLogger(Logger):
    """What Lightning writes to a logger: ``(step, metrics)`` per call."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.written.append((step, dict(metrics)))

    def values(self, key: str) -> list[tuple[int, float]]:
        return [(step, metrics[key]) for step, metrics in self.written if key in metrics]


def test_training_loss_is_written_as_the_mean_of_each_logging_window_and_of_each_epoch(
        image_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train/loss_step, written every log_every_n_steps, is the mean loss per image since the previous write (not
    one batch's loss), and train/loss_epoch the epoch's mean; training accuracy is unchanged by keeping the logits
    between metric updates."""
    from lit_convnext.model import classifier as model_module
    from lit_convnext.model.tally import TrainingTally

    losses: list[float] = []
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    loss_function = model_module.classification_loss

    def recording(logits, targets, *args, **kwargs):
        loss = loss_function(logits, targets, *args, **kwargs)
        losses.append(loss.item())
        seen.append((logits.detach().argmax(dim=1), targets))
        return loss

    monkeypatch.setattr(model_module, "classification_loss", recording)
    monkeypatch.setattr(TrainingTally, "BATCHES", 3)  # the metrics take kept logits mid-epoch and at its end
    data = ImageFolderDataModule(image_root, batch_size=5, num_workers=0,  # 24 images: 4 full batches an epoch
                                 augmentation=TrainAugmentation(rand_augment=None, random_erasing=0.0))
    logger = RecordingLogger()
    trainer = Trainer(max_epochs=2, accelerator="cpu", logger=logger, log_every_n_steps=2,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(classifier(lr=0.5), data)
    assert len(losses) == 8

    def mean(steps: range) -> float:
        return sum(losses[i] for i in steps) / len(steps)

    # Lightning writes step metrics after steps 1, 3, 5, 7 (0-based); each window starts after the previous write.
    expected = [(1, mean(range(0, 2))), (3, mean(range(2, 4))), (5, mean(range(4, 6))), (7, mean(range(6, 8)))]
    assert logger.values("train/loss_step") == [(step, pytest.approx(value)) for step, value in expected]
    epochs = [value for _, value in logger.values("train/loss_epoch")]
    assert epochs == [pytest.approx(mean(range(0, 4))), pytest.approx(mean(range(4, 8)))]
    predicted, targets = (torch.cat(t) for t in zip(*seen[4:]))  # the second epoch
    accuracy = [value for _, value in logger.values("train/acc1")]
    assert len(accuracy) == 2 and accuracy[-1] == pytest.approx((predicted == targets).float().mean().item())
    assert trainer.progress_bar_metrics["train/loss_step"] == pytest.approx(mean(range(6, 8)))


def test_the_training_tally_weights_batches_by_their_images_and_windows_by_step() -> None:
    """A short batch counts by its images; under gradient accumulation several batches share one step, and a
    window goes on until the step after the one it was ended at."""
    from lit_convnext.model.tally import TrainingTally

    tally = TrainingTally()
    assert tally.add_loss(torch.tensor(1.0), 4, step=0) is True  # the epoch's first batch
    assert tally.window_mean(0, end=False).item() == 1.0  # shown, not ended
    assert tally.add_loss(torch.tensor(4.0), 2, step=0) is False  # same step (accumulation)
    assert tally.window_mean(0).item() == pytest.approx(12 / 6)
    assert tally.add_loss(torch.tensor(3.0), 4, step=0) is False  # still step 0: the window is not over yet
    assert tally.window_mean(0).item() == pytest.approx(24 / 10)
    tally.add_loss(torch.tensor(5.0), 4, step=1)  # a new step: a new window
    assert tally.window_mean(1).item() == 5.0
    assert tally.take_epoch_loss().item() == pytest.approx(44 / 14)
    assert tally.take_epoch_loss() is None
    assert tally.take_logits() is None
    for _ in range(TrainingTally.BATCHES - 1):
        assert tally.keep(torch.ones(2, 3), torch.zeros(2, dtype=torch.long)) is False
    assert tally.keep(torch.ones(1, 3), torch.zeros(1, dtype=torch.long)) is True
    logits, targets = tally.take_logits()
    assert logits.shape == (2 * TrainingTally.BATCHES - 1, 3) and targets.shape == (2 * TrainingTally.BATCHES - 1,)
    assert tally.keep(torch.ones(TrainingTally.MAX_LOGITS, 1), torch.zeros(1)) is True  # many logits: at once


def test_validation_metrics_are_logged_once_over_all_images_of_each_validation(image_root: Path) -> None:
    """val/loss, val/acc1 and val/ece describe every validation image (computed directly here from the same
    weights), are written once per validation, and start again for the next one."""
    from lit_convnext.evaluation.calibration import calibration_error

    data = ImageFolderDataModule(image_root, batch_size=5, num_workers=0)  # 12 validation images: 5, 5, 2
    logger = RecordingLogger()
    model = classifier(lr=0.5)
    trainer = Trainer(max_epochs=2, accelerator="cpu", logger=logger, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_train_batches=2, log_every_n_steps=1)
    trainer.fit(model, data)
    written = logger.values("val/acc1")
    assert len(written) == 2  # one write per validation
    data.setup("validate")
    model.eval()
    with torch.no_grad():
        logits, targets = (torch.cat(t) for t in zip(*((model(x), y) for x, y in data.val_dataloader())))
    assert len(targets) == 12
    assert written[-1][1] == pytest.approx((logits.argmax(1) == targets).float().mean().item())
    assert logger.values("val/loss")[-1][1] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)
    # The logged ECE is the report's (val_calibration.json): the same bins, one constant.
    assert logger.values("val/ece")[-1][1] == pytest.approx(calibration_error(logits.softmax(-1), targets), rel=1e-5)
    results = trainer.validate(model, data, verbose=False)[0]  # the metrics were reset: the same values again
    assert results["val/acc1"] == pytest.approx(written[-1][1])
    assert results["val/loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)


def test_python_user_gets_the_image_size_given_to_the_model(image_root: Path) -> None:
    """The model owns preprocessing: the DataModule's tensors follow the model's image size."""
    data = ImageFolderDataModule(image_root, batch_size=4, num_workers=0)
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.strategy.connect(classifier(image_size=64))
    data.trainer = trainer
    data.setup("validate")
    images, _ = next(iter(data.val_dataloader()))
    assert tuple(images.shape[-2:]) == (64, 64)


@pytest.mark.parametrize(
    ("warmup_epochs", "total", "max_epochs", "per_epoch", "expected"),
    [
        (1.0, 120, 4, 30.0, 30),             # sized loader, bounded epochs: total / epochs
        (0.5, 120, -1, 30.0, 15),            # max_epochs=-1 (bounded by max_steps): the loader's batches per epoch
        (2.0, 50, None, float("inf"), 100),  # an iterable without a length: the whole run counts as one epoch
        (0.0, 50, 5, 10.0, 0),
    ],
)
def test_warmup_epochs_become_optimizer_steps(warmup_epochs, total, max_epochs, per_epoch, expected) -> None:
    from lit_convnext.model.optim import warmup_steps_for

    assert warmup_steps_for(warmup_epochs, total, max_epochs, per_epoch) == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_the_model_summary_measures_flops_with_an_input_in_the_weights_dtype(dtype: torch.dtype) -> None:
    """--trainer.precision bf16-true / 64-true convert the weights; the summary's example input follows them
    (a float32 input stopped those runs before the first step with a dtype mismatch)."""
    from lightning.pytorch.utilities.model_summary import summarize

    model = ConvNeXtClassifier(model_name=TINY_MODEL, pretrained=False, class_names=["a", "b"], image_size=32)
    model = model.to(dtype)
    assert model.example_input_array.dtype == dtype and model.example_input_array.shape == (1, 3, 32, 32)
    assert summarize(model, max_depth=1).total_flops > 0
