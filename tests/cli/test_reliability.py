"""Failing loudly: bad options before any data is read, NaN losses, CUDA OOM advice, atomic checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lit_convnext.model.classifier import ConvNeXtClassifier
from lit_convnext.callbacks.checkpointing import AtomicCheckpointIO
from tests.helpers import fit_args, one_line_error


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--model.lr", "0", "--model.lr 0: must be greater than 0"),
        ("--model.lr", "-1e-3", "--model.lr -1e-3: must be greater than 0"),
        ("--data.batch_size", "0", "--data.batch_size 0: must be an integer >= 1, or one of auto"),
        ("--model.image_size", "100", "--model.image_size 100: must be an integer >= 32 and a multiple of 32, or null"),
        ("--model.layer_decay", "1.5", "--model.layer_decay 1.5: must be a number > 0 and <= 1, or null"),
        ("--model.layer_decay", "0", "--model.layer_decay 0: must be a number > 0 and <= 1, or null"),
        ("--model.drop_path_rate", "1", "--model.drop_path_rate 1: must be less than 1"),
        ("--data.val_fraction", "1.2", "--data.val_fraction 1.2: must be less than 1"),
        ("--data.sampler", "random", "--data.sampler random: must be one of auto, shuffle, balanced, replay"),
        ("--model.class_weights", "often", "--model.class_weights often: must be one of none, auto, or a mapping"),
        ("--trainer.callbacks+=lit_convnext.callbacks.EMA --trainer.callbacks.decay", "1.5",
         "--trainer.callbacks.decay 1.5: must be a number > 0 and < 1, or null"),
        ("--model.model_name", "convnext_tiyn", "did you mean convnext_tiny"),
    ],
)
def test_bad_option_is_rejected_before_the_folder_is_read(capsys, tmp_path, option, value, expected) -> None:
    # The folder does not exist: an error about the option (not the folder) proves nothing was scanned.
    *before, last = option.split()
    line = one_line_error(capsys, fit_args(tmp_path / "missing", *before, f"{last}={value}"))
    assert expected in line
    assert "missing" not in line


def test_non_finite_loss_stops_at_that_step_and_keeps_the_last_good_checkpoint(capsys, image_root, monkeypatch) -> None:
    original = ConvNeXtClassifier.training_step

    def nan_at_step_4(self, batch, batch_idx):  # 3 steps per epoch: epoch 1, batch 1
        loss = original(self, batch, batch_idx)
        return loss * math.nan if self.global_step == 4 else loss

    monkeypatch.setattr(ConvNeXtClassifier, "training_step", nan_at_step_4)
    line = one_line_error(capsys, fit_args(image_root, "--trainer.max_epochs", "3"))
    assert "loss is nan at step 4 (epoch 1, batch 1)" in line
    assert "learning rate too high" in line and "bf16-mixed" in line
    last = next(Path("runs").glob("convnext/version_*/checkpoints/last.ckpt"))
    assert str(last) in line
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3  # written after epoch 0's validation, never overwritten with NaN weights
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point())


def test_cuda_out_of_memory_suggests_gradient_accumulation(capsys, image_root, monkeypatch) -> None:
    def out_of_memory(self, batch, batch_idx):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(ConvNeXtClassifier, "training_step", out_of_memory)
    line = one_line_error(capsys, fit_args(image_root))
    assert "out of memory at --data.batch_size 8" in line
    assert "--data.batch_size 4 --trainer.accumulate_grad_batches 2" in line


def test_checkpoint_write_interrupted_midway_leaves_the_previous_file_intact(tmp_path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError, match="killed mid-save"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(1000), "x": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind
