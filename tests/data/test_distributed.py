"""DDP on CPU (gloo, 2 processes): fit completes, metrics count each image once, predict writes one merged file.

Lightning launches DDP workers by re-running the command, so the CLI runs as a subprocess here.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_convnext.cli.entry import main
from lit_convnext.data.folders import iter_images
from tests.helpers import REPO, TINY_MODEL, make_folder

DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
COMMON = ["--model.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "0",
          "--progress_bar.refresh_rate", "0"]


def csv_logger(name: str) -> list[str]:
    return ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "runs",
            "--trainer.logger.name", name]


def run_cli(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # DDP_TEST_TIMEOUT lets a deadlock fail fast while debugging; the default leaves room for a slow machine.
    done = subprocess.run([sys.executable, "-m", "lit_convnext", *args], env=env, capture_output=True, text=True,
                          timeout=int(os.environ.get("DDP_TEST_TIMEOUT", "600")))
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def last_metrics(metrics_csv: Path) -> dict[str, float]:
    merged: dict[str, float] = {}
    with metrics_csv.open() as handle:
        for row in csv.DictReader(handle):
            merged.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return merged


def logged_lrs(metrics_csv: Path) -> list[float]:
    with metrics_csv.open() as handle:
        return [float(v) for row in csv.DictReader(handle) for k, v in row.items() if k.startswith("lr-") and v]


@pytest.mark.slow
def test_ddp_fit_validate_and_predict_count_each_image_once(tmp_path: Path) -> None:
    root = tmp_path / "images"
    make_folder(root / "train", 8)
    make_folder(root / "val", 3, seed=500)  # 9 images: 5 + 4 per rank, DistributedSampler would pad to 10

    out = run_cli("fit", "--model.model_name", TINY_MODEL, "--model.pretrained", "false", "--data.root", str(root),
                  "--model.warmup_epochs", "0", "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1", *COMMON, *DDP, *csv_logger("ddp"))
    assert "Effective batch 8 (4 per device x 2 device(s) x 1 accumulation): lr 1.25e-05" in out
    # No advice to synchronise the per-class values (torchmetrics has gathered them) and no torch deprecation.
    assert "sync_dist=True" not in out and "all_gather is deprecated" not in out
    ddp_csv = Path("runs/ddp/version_0/metrics.csv")
    assert max(logged_lrs(ddp_csv)) == pytest.approx(4e-4 * 8 / 256, rel=1e-6)  # lr scaled by both devices
    ddp = last_metrics(ddp_csv)
    checkpoint = Path("runs/ddp/version_0/checkpoints/last.ckpt")
    with open("runs/ddp/version_0/val_predictions.csv") as handle:  # the best checkpoint, gathered from both ranks
        assert [row["path"] for row in csv.DictReader(handle)] == [str(p) for p in iter_images(root / "val")]

    main(["validate", "--data.root", str(root), "--ckpt_path", str(checkpoint), "--trainer.accelerator", "cpu",
          "--trainer.devices", "1", *COMMON, *csv_logger("single")])
    single = last_metrics(Path("runs/single/version_0/metrics.csv"))
    for key in ("val/acc1", "val/f1", "val/loss"):
        # A padded sampler counts an image twice: that moved val/loss by 3e-5 on this untrained model.
        assert ddp[key] == pytest.approx(single[key], abs=2e-6), key

    run_cli("predict", "--ckpt_path", str(checkpoint), "--data.predict_dir", str(root / "val"),
            "--output", "preds.csv", *COMMON, *DDP)
    with open("preds.csv") as handle:
        paths = [row["path"] for row in csv.DictReader(handle)]
    assert paths == [str(p) for p in iter_images(root / "val")]  # every image once, in dataset order
    assert sorted(p.name for p in Path(".").iterdir() if "part" in p.name) == []


@pytest.mark.slow
def test_ddp_fit_writes_the_split_manifest_and_load_report_once(tmp_path: Path) -> None:
    """Rank-0-only writers must still let every rank take part in collectives (trainer.log_dir broadcasts)."""
    import timm
    from safetensors.torch import save_file

    root = make_folder(tmp_path / "flat", 6)  # class folders only: the validation split is drawn and written
    weights = tmp_path / "atto.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model(TINY_MODEL, num_classes=1000).state_dict().items()},
              str(weights))
    run_cli("fit", "--model.model_name", TINY_MODEL, "--model.pretrained", str(weights), "--data.root", str(root),
            "--trainer.max_epochs", "1", *COMMON, *DDP, *csv_logger("flat"))
    run_dir = Path("runs/flat/version_0")
    assert (run_dir / "split_manifest.csv").is_file()
    assert '"head": "reset"' in (run_dir / "pretrained_load_report.json").read_text()


@pytest.mark.slow
def test_ddp_multilabel_map_and_thresholds_match_a_single_process(tmp_path: Path) -> None:
    """mAP keeps every score and gathers them across ranks (each image on one rank): DDP equals one process."""
    from tests.data.test_labels import multilabel_images, write_rows

    root = tmp_path / "ml"
    labels = write_rows(root / "labels.csv", multilabel_images(root, 16, "train") + multilabel_images(root, 9, "val", 100))
    run_cli("fit", "--model.model_name", TINY_MODEL, "--model.pretrained", "false", "--data.labels", str(labels),
            "--trainer.max_epochs", "1", *COMMON, *DDP, *csv_logger("ddp"))
    ddp = last_metrics(Path("runs/ddp/version_0/metrics.csv"))
    checkpoint = Path("runs/ddp/version_0/checkpoints/last.ckpt")
    main(["validate", "--data.labels", str(labels), "--ckpt_path", str(checkpoint), "--trainer.accelerator", "cpu",
          "--trainer.devices", "1", *COMMON, *csv_logger("single")])
    single = last_metrics(Path("runs/single/version_0/metrics.csv"))
    for key in ("val/map", "val/loss"):
        assert ddp[key] == pytest.approx(single[key], abs=2e-6), key
    assert "val/ap/red" in single  # the per-class report's average precision


@pytest.mark.parametrize("world_size", [1, 2])
def test_under_ddp_each_machine_checks_the_files_once_before_every_process_does(
        image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world_size: int) -> None:
    """``prepare_data`` (each machine's first process, the others waiting) checks the run's splits; the check every
    process then runs in ``setup`` decodes nothing. A single process checks in ``setup`` only."""
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    from lit_convnext.data import ImageFolderDataModule
    from lit_convnext.checks import file_checks

    decoded: list[str] = []
    check = file_checks._check
    monkeypatch.setattr(file_checks, "_check", lambda path, *args: decoded.append(path) or check(path, *args))
    # image_root holds fewer files than two worker chunks: both checks run in this process, where calls are counted.
    data = ImageFolderDataModule(image_root, batch_size=4, num_workers=1)
    assert len(data.splits.train) + len(data.splits.val) < 2 * file_checks.CHUNK
    data.trainer = SimpleNamespace(world_size=world_size, state=SimpleNamespace(fn=TrainerFn.FITTING),
                                   log_dir=str(tmp_path), default_root_dir=str(tmp_path), is_global_zero=True)
    files = sorted(str(s.path) for s in data.splits.train + data.splits.val)
    data.prepare_data()
    assert sorted(decoded) == (files if world_size > 1 else [])
    decoded.clear()
    data._drop_bad_files(("train", "val"))  # what setup runs on every process
    assert sorted(decoded) == ([] if world_size > 1 else files)
