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


def test_predictions_written_in_blocks_match_one_block(tmp_path: Path, monkeypatch) -> None:
    import torch

    from lit_convnext.evaluation import end_of_fit

    probabilities = torch.softmax(torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    paths = [f"img{i}.png" for i in range(8)]
    end_of_fit.write_predictions(tmp_path / "one.csv", paths, ["a", "b", "c"], probabilities, targets, 2)
    monkeypatch.setattr(end_of_fit, "ROWS_PER_BLOCK", 3)  # blocks of 3, 3 and 2 rows
    end_of_fit.write_predictions(tmp_path / "blocks.csv", paths, ["a", "b", "c"], probabilities, targets, 2)
    rows = (tmp_path / "blocks.csv").read_text().splitlines()
    assert rows == (tmp_path / "one.csv").read_text().splitlines() and len(rows) == 9
    assert [row.split(",")[0] for row in rows[1:]] == paths
