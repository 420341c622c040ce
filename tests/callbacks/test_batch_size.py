"""``--data.batch_size auto``: the largest batch that fits (searched where CUDA reports out of memory), the default
batch without a GPU, and the lr scaled by the batch found."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_convnext import ConvNeXtClassifier, ImageFolderDataModule
from lit_convnext.callbacks import batch_size as auto_batch
from lit_convnext.evaluation.class_report import PerClassReport
from lit_convnext.evaluation.end_of_fit import EvaluationReport
from tests.helpers import TINY_MODEL, fit_args, lightning_info_lines, make_folder, one_line_error

class RunsOutAbove(ConvNeXtClassifier):
    """A model whose training step runs out of (CUDA) memory above ``fits`` images, as a GPU would."""

    fits = 12

    def training_step(self, batch, batch_idx):
        if batch[0].shape[0] > self.fits:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {batch[0].shape[0]} images")
        return super().training_step(batch, batch_idx)


def _fit(root: Path, mixup: float = 0.0) -> tuple[ImageFolderDataModule, RunsOutAbove]:
    data = ImageFolderDataModule(root, batch_size="auto", num_workers=0)
    model = RunsOutAbove(TINY_MODEL, pretrained=False, class_names=data.class_names, image_size=32,
                         mixup_alpha=mixup)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         callbacks=[EvaluationReport(enabled=False), PerClassReport(enabled=False)])
    with lightning_info_lines() as lines:
        trainer.fit(model, datamodule=data)
    model.info_lines = lines
    return data, model


@pytest.mark.slow  # a dozen short trial fits: about 10 s
def test_auto_finds_the_largest_batch_that_fits_and_scales_the_lr(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    make_folder(tmp_path / "train", 16)  # 48 images: room above the size that fits
    make_folder(tmp_path / "val", 2, seed=500)
    monkeypatch.setattr(auto_batch, "searches_memory", lambda trainer: True)  # the CPU stands in for the GPU
    data, model = _fit(tmp_path)
    # Lightning's binary search, less its 5% safety margin.
    assert int(RunsOutAbove.fits * 0.9) <= data.batch_size <= RunsOutAbove.fits
    assert model.trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(
        model.hparams.lr * data.batch_size / model.hparams.lr_reference_batch_size)
    assert any(f"--data.batch_size auto: {data.batch_size} images per device" in line for line in model.info_lines)


@pytest.mark.slow  # the search under Mixup: about 10 s
def test_auto_under_mixup_is_even(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_folder(tmp_path / "train", 16)
    make_folder(tmp_path / "val", 2, seed=500)
    monkeypatch.setattr(auto_batch, "searches_memory", lambda trainer: True)
    monkeypatch.setattr(RunsOutAbove, "fits", 13)
    data, _ = _fit(tmp_path, mixup=0.2)
    assert data.batch_size % 2 == 0 and data.batch_size <= 13


def test_auto_on_the_cpu_uses_the_default_batch_and_says_so(image_root: Path) -> None:
    data, model = _fit(image_root)
    assert data.batch_size == auto_batch.CPU_BATCH_SIZE == 32
    assert any("no CUDA device to measure, so the default batch 32" in line for line in model.info_lines)


def test_auto_parses_and_validate_refuses_it(image_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lit_convnext.cli.lightning_cli import build_cli

    cli = build_cli(fit_args(image_root, "--data.batch_size", "auto", "--model.mixup_alpha", "0.2")[1:], run=False)
    assert cli.datamodule.batch_size == "auto" and cli.model.hparams.batch_size is None
    line = one_line_error(capsys, ["validate", "--data.root", str(image_root), "--data.batch_size", "auto",
                                   "--ckpt_path", "missing.ckpt"])
    assert "--data.batch_size auto searches a training batch" in line



@pytest.mark.slow  # two DDP processes on CPU (gloo): tens of seconds
def test_auto_under_ddp_on_the_cpu_takes_the_default_on_every_rank(image_root: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    done = subprocess.run([sys.executable, "-m", "lit_convnext", *fit_args(image_root, "--data.batch_size", "auto",
                                                                          "--trainer.strategy", "ddp",
                                                                          "--trainer.devices", "2")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "no CUDA device to measure, so the default batch 32" in out
    assert "Effective batch 64 (32 per device x 2 device(s)" in out


@pytest.mark.slow  # two DDP processes on CPU (gloo), each with its own binary search: about a minute
def test_auto_under_ddp_probes_every_rank_and_takes_the_smallest(image_root: Path) -> None:
    import os
    import re
    import subprocess
    import sys

    from tests.callbacks.ddp_memory_probe import FITS
    from tests.helpers import REPO

    make_folder(image_root / "train", 16)  # 48 images: room above the sizes that fit
    # The module stands in for a GPU on every rank (the launcher re-runs it): rank 1 runs out above 9 images, rank 0
    # above 20, so rank 0's own search alone would pick about twice the batch that rank 1 can hold.
    done = subprocess.run([sys.executable, "-m", "tests.callbacks.ddp_memory_probe",
                           *fit_args(image_root, "--data.batch_size", "auto", "--trainer.strategy", "ddp",
                                     "--trainer.devices", "2")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    found = int(re.search(r"--data.batch_size auto: (\d+) images per device", out).group(1))
    assert int(FITS[1] * 0.9) <= found <= FITS[1] < FITS[0]
    assert "on the fullest of the 2 devices" in out
    assert f"Effective batch {2 * found} ({found} per device x 2 device(s)" in out  # the lr is scaled by both
