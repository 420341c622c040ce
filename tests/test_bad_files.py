"""Undecodable files during fit (stop with a list, or skip with a summary) and predict (error rows)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from tests.bad_corpus import BAD, build_corpus
from tests.helpers import TINY_MODEL

from lit_convnext.cli import main


def _fit_args(root: Path, *extra: str) -> list[str]:
    return ["fit", "--model.model_name", TINY_MODEL, "--model.pretrained", "false", "--data.root", str(root),
            "--model.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "0",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
            "--trainer.accelerator", "cpu", "--progress_bar.refresh_rate", "0", *extra]


def test_fit_stops_with_the_list_of_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    build_corpus(root, structural_problems=False)
    with pytest.raises(SystemExit) as exit_info:
        main(_fit_args(root))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{len(BAD)} train file(s) cannot be decoded" in err
    for name in BAD:
        assert name in err
    assert "--data.skip_bad_files true" in err
    assert not list(Path("runs").rglob("*.ckpt"))  # stopped before the first step


def test_fit_skips_bad_files_then_predict_reports_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data"
    awkward = build_corpus(root, structural_problems=False)
    with caplog.at_level(logging.WARNING, logger="lit_convnext"):
        main(_fit_args(root, "--data.skip_bad_files", "true"))
    summary = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(summary) == 1 and f"skipping {len(BAD)} undecodable train file(s)" in summary[0]
    checkpoint = next(Path("runs").rglob("last.ckpt"))

    predict_dir = root / "train" / "red"
    for output in ("preds.csv", "preds.jsonl"):
        main(["predict", "--ckpt_path", str(checkpoint), "--data.predict_dir", str(predict_dir),
              "--data.num_workers", "0", "--data.batch_size", "4", "--trainer.accelerator", "cpu",
              "--progress_bar.refresh_rate", "0", "--output", output, "--top_k", "2"])
    with open("preds.csv", newline="", encoding="utf-8") as handle:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(handle)}
    records = {Path(r["path"]).name: r for r in map(json.loads, Path("preds.jsonl").read_text("utf-8").splitlines())}
    # Every image file gets a row: 6 plain ones, the awkward ones and the bad ones (hidden/.txt files are not images).
    assert len(rows) == len(records) == 6 + len(awkward) + len(BAD)
    for name in BAD:
        assert rows[name]["error"] and rows[name]["class_1"] == ""
        assert records[name]["error"] and records[name]["top_k"] == []
    for path in awkward.values():
        assert rows[path.name]["error"] == "" and rows[path.name]["class_1"] in ("red", "blue")
        assert records[path.name]["error"] is None
