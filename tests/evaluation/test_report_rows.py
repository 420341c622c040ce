"""The report reads ``val_predictions.csv`` in one pass and keeps only the rows its gallery shows."""

from __future__ import annotations

import csv
from pathlib import Path

from lit_convnext.evaluation.report.html import _worst_errors, read_predictions


def write_rows(path: Path, losses: list[float], correct: list[int]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted", "confidence", "loss", "correct"])
        for i, (loss, ok) in enumerate(zip(losses, correct)):
            writer.writerow([f"img{i}.png", "cat", "cat" if ok else "dog", "0.5", f"{loss:.6f}", ok])
    return path


def test_worst_errors_are_the_highest_losses_ties_in_file_order(tmp_path: Path) -> None:
    losses = [0.1, 3.0, 2.0, 3.0, 5.0, 0.2, 2.0, 9.0]
    correct = [1, 0, 0, 0, 0, 1, 0, 1]  # the highest loss is a correct row: not an error
    results = read_predictions(write_rows(tmp_path / "val_predictions.csv", losses, correct), gallery_size=3)
    assert (results.images, results.correct, results.errors) == (8, 3, 5)
    assert [row["path"] for row in results.worst] == ["img4.png", "img1.png", "img3.png"]
    assert results.names == {"cat", "dog"}
    assert "3 of 5 misclassified images" in _worst_errors(results, ["cat", "dog"], model=None)


def test_only_the_gallery_rows_are_kept(tmp_path: Path) -> None:
    count = 5000
    results = read_predictions(write_rows(tmp_path / "val_predictions.csv", [i % 97 for i in range(count)],
                                          [0] * count), gallery_size=4)
    assert results.errors == count and len(results.worst) == 4
    assert [float(row["loss"]) for row in results.worst] == [96.0] * 4
    assert [row["path"] for row in results.worst] == [f"img{i}.png" for i in (96, 193, 290, 387)]


def test_no_errors_says_so(tmp_path: Path) -> None:
    results = read_predictions(write_rows(tmp_path / "val_predictions.csv", [0.1, 0.2], [1, 1]), gallery_size=0)
    assert results.worst == [] and results.errors == 0
    assert "No validation image was misclassified" in _worst_errors(results, ["cat"], model=None)
