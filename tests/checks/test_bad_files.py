"""Undecodable files during fit (stop with a list, or skip with a summary) and predict (error rows)."""

from __future__ import annotations

import csv
import json
import logging
import os
import warnings
from pathlib import Path

import pytest
import torch
from tests.bad_corpus import BAD, WARNED, build_corpus, write_bad_files
from tests.helpers import TINY_MODEL

from lit_convnext.cli.entry import main
from lit_convnext.data.folders import iter_images


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
    assert f"{len(BAD)} train file(s) cannot be decoded" in err and f"and {len(BAD) - 10} more" in err  # 10 named
    assert "--data.skip_bad_files true" in err
    assert "Traceback" not in err and "Fax4Decode" not in err  # libtiff's complaints are in the reason only
    assert not list(Path("runs").rglob("*.ckpt"))  # stopped before the first step
    listed = _bad_file_list()
    assert set(listed) == set(BAD)  # all of them, with their reasons, in the run directory
    for name, word in BAD.items():
        assert word in listed[name], (name, listed[name])


def _bad_file_list() -> dict[str, str]:
    with next(Path("runs").rglob("bad_files.csv")).open(newline="", encoding="utf-8") as handle:
        return {Path(row["path"]).name: row["reason"] for row in csv.DictReader(handle)}


def test_fit_skips_bad_files_then_predict_reports_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data"
    awkward = build_corpus(root, structural_problems=False)
    with caplog.at_level(logging.WARNING, logger="lit_convnext"), warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        main(_fit_args(root, "--data.skip_bad_files", "true"))
    summary = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(summary) == 1 and f"skipping {len(BAD)} undecodable train file(s)" in summary[0]
    # The files Pillow warns about are used, and named once before the first step with what Pillow said.
    noted = [r.getMessage() for r in caplog.records if "warnings from Pillow" in r.getMessage()]
    assert len(noted) == 1 and noted[0].startswith(f"{len(WARNED)} train file(s)")
    assert all(name in noted[0] and word in noted[0] for name, word in WARNED.items())
    checkpoint = next(Path("runs").rglob("last.ckpt"))

    predict_dir = root / "train" / "red"
    caplog.clear()
    with warnings.catch_warnings(record=True) as shown_by_predict, caplog.at_level(logging.INFO, "lit_convnext"):
        warnings.simplefilter("always")
        for output in ("preds.csv", "preds.jsonl"):
            main(["predict", "--ckpt_path", str(checkpoint), "--data.predict_dir", str(predict_dir),
                  "--data.num_workers", "0", "--data.batch_size", "4", "--trainer.accelerator", "cpu",
                  "--progress_bar.refresh_rate", "0", "--output", output, "--top_k", "2"])
    # Pillow's warnings about damaged files (corrupt EXIF, invalid APNG) are not printed as bare lines.
    assert [str(w.message) for w in shown + shown_by_predict if f"{os.sep}PIL{os.sep}" in w.filename] == []
    with open("preds.csv", newline="", encoding="utf-8") as handle:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(handle)}
    records = {Path(r["path"]).name: r for r in map(json.loads, Path("preds.jsonl").read_text("utf-8").splitlines())}
    # Every image file gets a row: 6 plain ones, the awkward ones and the bad ones (hidden/.txt files are not images).
    assert len(rows) == len(records) == 6 + len(awkward) + len(BAD)
    in_order = [path.name for path in iter_images(predict_dir)]
    with open("preds.csv", newline="", encoding="utf-8") as handle:
        assert [Path(row["path"]).name for row in csv.DictReader(handle)] == in_order
    assert "More samples per pixel than can be decoded" in rows["tiff_samples_per_pixel.tif"]["error"]
    # The closing line counts the rows that hold a reason instead of classes.
    total, read = len(rows), len(rows) - len(BAD)
    assert f"Wrote {total} rows to preds.csv: {read} predicted, {len(BAD)} file(s) that could not be read" in caplog.text
    for name in BAD:
        assert rows[name]["error"] and rows[name]["class_1"] == ""
        assert records[name]["error"] and records[name]["top_k"] == []
    for path in awkward.values():
        assert rows[path.name]["error"] == "" and rows[path.name]["class_1"] in ("red", "blue")
        assert records[path.name]["error"] is None


@pytest.mark.slow  # loader worker processes, each importing torch
def test_a_file_that_breaks_mid_run_is_the_loaders_to_handle(image_root: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The check before training cannot see a file that breaks later (simulated with check_files false)."""
    main(_fit_args(image_root))
    last = next(Path("runs").rglob("last.ckpt"))
    victim = image_root / "train" / "red" / "img3.png"
    good = victim.read_bytes()
    (tmp_path / "bomb").mkdir()
    write_bad_files(tmp_path / "bomb")
    victim.write_bytes((tmp_path / "bomb" / "bmp_palette_too_long.bmp").read_bytes())
    resume = ["--ckpt_path", "last", "--trainer.max_epochs", "2", "--data.check_files", "false",
              "--trainer.limit_train_batches", "6"]
    saved = last.read_bytes()
    with pytest.raises(SystemExit) as exit_info:  # default policy: stop cleanly, naming the file
        main(_fit_args(image_root, *resume))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    line = [row for row in err.splitlines() if row.startswith("lit-convnext: error:")]
    assert len(line) == 1 and str(victim) in line[0] and "--ckpt_path last" in line[0], err
    assert "Traceback" not in err
    assert last.read_bytes() == saved  # the last checkpoint is intact
    listed = _bad_file_list()
    assert listed == {victim.name: listed[victim.name]} and "palette" in listed[victim.name]

    # skip_bad_files: the same run carries on without the file
    main(_fit_args(image_root, *resume, "--data.skip_bad_files", "true"))
    steps = torch.load(last, weights_only=True, map_location="cpu")["global_step"]
    assert steps == 2 + 6  # the first run's 2 steps and a whole second epoch
    assert f"skipping {victim}" in caplog.text

    victim.write_bytes(good)  # fixed: the run continues from its last checkpoint
    main(_fit_args(image_root, *resume[:2], "--trainer.max_epochs", "3", "--data.check_files", "false"))
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == steps + 2
    assert len(list(Path("runs/convnext").iterdir())) == 1


def test_stand_ins_for_validation_files_that_break_mid_run_are_measured_by_nobody(
        image_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Under skip_bad_files a validation file that fails in the loader is replaced (the batch keeps its rows) and
    left out of the metrics and the per-image results; two adjacent ones are each named and listed once."""
    broken = [image_root / "val" / "red" / "img1.png", image_root / "val" / "red" / "img2.png"]
    for path in broken:
        path.write_bytes(b"not an image")
    main(_fit_args(image_root, "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "1.0",
                   "--data.check_files", "false", "--data.skip_bad_files", "true"))
    run = next(Path("runs").rglob("bad_files.csv")).parent
    with (run / "bad_files.csv").open(newline="", encoding="utf-8") as handle:
        listed = [(row["path"], row["found"]) for row in csv.DictReader(handle)]
    assert sorted(listed) == [(str(path), "while loading") for path in broken]  # once, over two epochs
    for path in broken:
        assert sum(f"skipping {path}," in r.getMessage() for r in caplog.records) == 1
    with (run / "val_predictions.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    readable = 12 - len(broken)
    assert len(rows) == readable and not {row["path"] for row in rows} & {str(p) for p in broken}
    with (run / "val_per_class.csv").open(newline="", encoding="utf-8") as handle:
        support = {row["class"]: int(row["support"]) for row in csv.DictReader(handle)}
    assert support == {"blue": 4, "green": 4, "red": 2}


def test_evaluation_metrics_leave_stand_in_rows_out() -> None:
    from lit_convnext.data.datasets import STAND_IN
    from lit_convnext.model.classifier import ConvNeXtClassifier

    model = ConvNeXtClassifier(model_name=TINY_MODEL, pretrained=False, class_names=["a", "b", "c"],
                               image_size=32).eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        predicted = model(images).argmax(1)
    # Two rows right, one wrong, one stand-in whose "target" would count as wrong if it were measured.
    targets = torch.stack([predicted[0], predicted[1], (predicted[2] + 1) % 3, torch.tensor(STAND_IN)])
    with torch.no_grad():
        logits = model.validation_step((images, targets), 0)
    assert logits.shape == (4, 3)  # every row back for the callbacks, in batch order
    assert model.metrics["val_metrics"].compute()["val/acc1"].item() == pytest.approx(2 / 3)
    assert model.eval_losses["val"].weight.item() == 3
