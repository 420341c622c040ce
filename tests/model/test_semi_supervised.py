"""Semi-supervised learning from unlabelled images: the FixMatch loss, its calibrated threshold, what a run writes."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lit_convnext.errors import UserError
from lit_convnext.model.semi_supervised import PseudoLabeler, check_semi_supervised
from tests.helpers import COLORS, fit_args, make_folder, one_line_error, write_image


class FixedLogits:
    """A stand-in model: the weak view's rows are the logits themselves, the strong view's too (for the loss)."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits / self.temperature).softmax(dim=-1)


def _batch(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"weak": logits, "strong": logits.clone(), "index": torch.arange(len(logits))}


def test_only_pseudo_labels_above_the_calibrated_threshold_are_learnt() -> None:
    # Row 0: softmax confidence 0.98; row 1: 0.73. A threshold of 0.9 keeps row 0 alone.
    logits = torch.tensor([[4.0, 0.0], [1.0, 0.0]])
    labeler = PseudoLabeler(0.9)
    loss = labeler.loss(FixedLogits(1.0), _batch(logits), epoch=0)
    assert loss == pytest.approx(float(F.cross_entropy(logits[:1], torch.tensor([0]))) / 2)  # over all rows
    index, label, confidence = labeler.used_rows(0)
    assert index.tolist() == [0] and label.tolist() == [0] and confidence[0] == pytest.approx(0.982, abs=1e-3)
    assert labeler.take_used_ratio() == 0.5
    # The same logits, calibrated with T = 4 (an over-confident model): 0.73 left, nothing reaches 0.9.
    calibrated = PseudoLabeler(0.9)
    assert calibrated.loss(FixedLogits(4.0), _batch(logits), epoch=0) == 0
    assert calibrated.used_rows(0)[0].numel() == 0


def test_multilabel_data_is_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="multiclass data"):
        check_semi_supervised("multilabel", tmp_path)
    check_semi_supervised("multiclass", tmp_path)
    check_semi_supervised("multilabel", None)


def _pool(folder: Path, count: int) -> Path:
    for i in range(count):
        name = list(COLORS)[i % len(COLORS)]
        write_image(folder / f"photo{i}.png", COLORS[name], seed=900 + i)
    return folder


@pytest.mark.slow  # about 3 s: two fits
def test_a_multilabel_run_with_unlabelled_images_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = make_folder(tmp_path / "data", per_class=4)
    line = one_line_error(capsys, fit_args(root, "--data.task", "multilabel", "--data.unlabeled_root",
                                           str(_pool(tmp_path / "pool", 4))))
    assert "--data.unlabeled_root" in line and "multiclass" in line


@pytest.mark.slow  # about 4 s: a short fit
def test_a_semi_supervised_fit_lists_its_pseudo_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lit_convnext.cli.entry import main

    monkeypatch.chdir(tmp_path)
    root = make_folder(tmp_path / "data", per_class=8)
    pool = _pool(tmp_path / "pool", 12)
    # Threshold 0: every pseudo-label is used, so the file lists every image drawn in the last epoch.
    main(fit_args(root, "--trainer.max_epochs", "2", "--data.unlabeled_root", str(pool),
                  "--model.pseudo_label_threshold", "0", "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                  "--trainer.logger.save_dir", "csv", "--trainer.logger.name", "run"))
    run = tmp_path / "csv" / "run" / "version_0"
    with (run / "pseudo_labels.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {row["epoch"] for row in rows} == {"1"}
    assert {row["pseudo_label"] for row in rows} <= set(COLORS)
    assert {os.path.dirname(row["path"]) for row in rows} == {str(pool)}
    confidences = [float(row["confidence"]) for row in rows]
    assert confidences == sorted(confidences, reverse=True) and all(0 < c <= 1 for c in confidences)
    with (run / "metrics.csv").open(encoding="utf-8") as handle:
        shares = [row["train/pseudo_labeled"] for row in csv.DictReader(handle) if row.get("train/pseudo_labeled")]
    assert [float(share) for share in shares] == [1.0, 1.0]



@pytest.mark.slow  # about 4 minutes: two 100-epoch fits on the digits, one with 1,357 unlabelled scans beside
def test_unlabelled_digits_lift_accuracy_over_the_labelled_ones_alone(tmp_path: Path) -> None:
    """The issue's task: 8 labelled scans a class, the other training scans unlabelled. Measured with
    ``benchmarks/semi_supervised.py --epochs 100 --ratio 3`` (docs/semi-supervised.md): +1.7 and +4.7 points over
    the labelled scans alone for seeds 0 and 1 (0.917 -> 0.933, 0.878 -> 0.925, 360 validation scans). This holds
    seed 1 to about half its gain, seven validation scans."""
    from benchmarks.semi_supervised import run, split_digits

    labelled, pool = split_digits(tmp_path / "digits", per_class=8, seed=1)
    alone = run(labelled, None, None, seed=1, epochs=100, batch_size=16, ratio=3, run_dir=tmp_path / "alone")
    semi = run(labelled, pool, {"pseudo_label_threshold": 0.8}, seed=1, epochs=100, batch_size=16, ratio=3,
               run_dir=tmp_path / "semi")
    assert semi["accuracy"] >= alone["accuracy"] + 0.02, (alone, semi)
    assert semi["pseudo_label_accuracy"] > 0.9  # what it taught itself was mostly right
