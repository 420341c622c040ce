"""Label files (``--data.labels``) and multi-label classification, on tiny generated colour images."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

from lit_convnext.cli.entry import main
from lit_convnext.data.labels import multi_hot, multilabel_split, read_label_file, read_label_splits
from lit_convnext.errors import UserError
from lit_convnext.model.classifier import ConvNeXtClassifier
from tests.helpers import COLORS, FAST, TINY_MODEL, fit_args, one_line_error, write_image

#: Multi-label images: the mean colour of the classes present (so each class is visible in the pixels).
COMBOS = [("red",), ("green",), ("blue",), ("red", "green"), ("green", "blue"), ("red", "blue")]


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    """A label file with these rows: CSV (columns of the first row) or JSON Lines, by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return path
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def multilabel_images(root: Path, count: int, split: str | None = None, start: int = 0) -> list[dict[str, str]]:
    rows = []
    for i in range(start, start + count):
        combo = COMBOS[i % len(COMBOS)]
        color = tuple(sum(COLORS[c][k] for c in combo) // len(combo) for k in range(3))
        write_image(root / f"img{i}.png", color, seed=i)
        rows.append({"path": f"img{i}.png", "labels": ";".join(combo), **({"split": split} if split else {})})
    return rows


@pytest.fixture
def multilabel_file(tmp_path: Path) -> Path:
    """24 training and 12 validation multi-label images listed in ``labels.csv`` next to them."""
    root = tmp_path / "ml"
    return write_rows(root / "labels.csv",
                      multilabel_images(root, 24, "train") + multilabel_images(root, 12, "val", start=100))


# ---------------------------------------------------------------------------------------------- reading
def test_single_label_csv_classes_in_natural_order_paths_relative_to_root(tmp_path: Path) -> None:
    root = tmp_path / "images"
    rows = []
    for i, name in enumerate(["class10", "class2", "class10", "class2", "class1", "class1"]):
        write_image(root / "any" / f"{i}.png", (10 * i, 0, 0), seed=i)
        rows.append({"path": f"any/{i}.png", "label": name})
    labels = write_rows(tmp_path / "elsewhere" / "train.csv", rows)
    splits = read_label_splits(labels, root, ";", val_fraction=0.5, seed=0)
    assert splits.class_names == ["class1", "class2", "class10"]
    assert not splits.multilabel and splits.val_is_held_out
    assert sorted(s.class_name for s in splits.val) == ["class1", "class10", "class2"]  # stratified: one of each
    assert all(s.path.is_file() for s in splits.train + splits.val)


def test_jsonl_with_label_lists_and_split_column(tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / f"{i}.png", (0, 0, 0), seed=i)
    labels = write_rows(tmp_path / "labels.jsonl", [
        {"path": "0.png", "labels": ["sky", "sea view"], "split": "train"},
        {"path": "1.png", "labels": "sea view", "split": "val"},
        {"path": str(tmp_path / "2.png"), "labels": ["sky"], "split": "test"},  # absolute path
    ])
    splits = read_label_splits(labels, None, ";", 0.2, 0)
    assert splits.multilabel and not splits.val_is_held_out
    assert splits.class_names == ["sea view", "sky"]  # a class name with a space
    assert [s.labels for s in splits.train] == [("sky", "sea view")]
    assert [len(splits.val), len(splits.test)] == [1, 1]
    assert multi_hot(splits.train + splits.val, splits.class_names).tolist() == [[1.0, 1.0], [1.0, 0.0]]


def test_multilabel_split_brings_a_rare_label_into_validation(tmp_path: Path) -> None:
    rows = [{"path": f"{i}.png", "labels": "common;rare" if i % 10 == 0 else "common"} for i in range(50)]
    for row in rows:
        write_image(tmp_path / row["path"], (0, 0, 0), size=8)
    table = read_label_file(write_rows(tmp_path / "l.csv", rows), None)
    pool = [sample for sample, _ in table.rows]
    train, val = multilabel_split(pool, table.class_names, 0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert sum("rare" in s.labels for s in val) == 1  # 5 rare images: 20% of them is one
    assert train + val != pool and sorted(map(str, (s.path for s in train + val))) == sorted(map(str, (s.path for s in pool)))



def test_without_the_multilabel_extra_a_drawn_multilabel_split_is_one_line_and_doctor_warns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """iterative-stratification is the ``multilabel`` extra: without it, ``fit`` on a multi-label file with no
    ``val`` rows stops before training with the install command, and ``doctor`` says so beforehand."""
    for module in ("iterstrat", "iterstrat.ml_stratifiers"):  # an install without the extra: no such modules
        monkeypatch.setitem(sys.modules, module, None)  # (the submodule too: an earlier test may have imported it)
    root = tmp_path / "ml"
    labels = write_rows(root / "labels.csv", multilabel_images(root, 12))
    error = one_line_error(capsys, fit_args(root, "--data.labels", str(labels)))
    assert "pip install 'lit-convnext[multilabel]'" in error and "split" in error
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["doctor", str(root), "--labels", str(labels), "--json", "report.json"])
    warnings = json.loads(Path("report.json").read_text())["warnings"]
    assert [w for w in warnings if "pip install 'lit-convnext[multilabel]'" in w], warnings
    assert "pip install 'lit-convnext[multilabel]'" in " ".join(capsys.readouterr().out.split())
    monkeypatch.delitem(sys.modules, "iterstrat")  # installed (as here): no warning
    monkeypatch.delitem(sys.modules, "iterstrat.ml_stratifiers")
    with pytest.raises(SystemExit):
        main(["doctor", str(root), "--labels", str(labels), "--json", "report.json"])
    assert not [w for w in json.loads(Path("report.json").read_text())["warnings"] if "multilabel]" in w]

@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("file,label\na.png,x\n", "has no 'path' column"),
        ("path,label,labels\na.png,x,x\n", "needs exactly one of the columns 'label'"),
        ("path,label\na.png,\n", "line 2: empty label"),
        ("path,labels\na.png,x;;y\n", "line 2: empty label: every image needs a class name (names joined by ';') ('x;;y')"),
        ("path,label\na.png,x\na.png,x\n", "line 3: duplicate row: the same image and labels as line 2 ('a.png')"),
        ("path,label\na.png,x\na.png,y\n", "line 3: image listed twice with different labels or split (line 2: x)"),
        ("path,label\nnope.png,x\n", "line 2: image not found at"),
        ("path,label,split\na.png,x,train\nb.png,z,val\n", "line 3: class with no training rows in the val split ('z')"),
        ("path,label,split\na.png,x,holdout\n", "line 2: split must be one of train, val, test ('holdout')"),
        ("path,label\n,x\n", "line 2: empty path"),
    ],
)
def test_label_file_errors_name_file_line_and_value(tmp_path: Path, content: str, expected: str) -> None:
    for name in ("a.png", "b.png"):
        write_image(tmp_path / name, (0, 0, 0), size=8)
    labels = tmp_path / "labels.csv"
    labels.write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as err:
        read_label_splits(labels, None, ";", 0.2, 0)
    assert str(labels) in str(err.value) and expected in str(err.value)


def test_jsonl_and_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"path": "a.png", "label": "x"}\n{"path": oops}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"labels.jsonl line 2: not valid JSON"):
        read_label_file(bad)
    with pytest.raises(UserError, match=r"use a .csv file with a header row or a .jsonl file"):
        read_label_file(tmp_path / "labels.txt")
    with pytest.raises(UserError, match=r"does not exist"):
        read_label_file(tmp_path / "missing.csv")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("path,label\na.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.csv is not UTF-8 text"):
        read_label_file(latin1)


def test_fit_on_a_bad_label_file_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_image(tmp_path / "a.png", (0, 0, 0))
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na.png,x\nmissing.png,y\nother.png,\n", encoding="utf-8")
    line = one_line_error(capsys, ["fit", "--data.labels", str(labels), "--trainer.max_epochs", "1", *FAST])
    assert f"{labels} line 3: image not found" in line and "(and 1 more problem(s)" in line


# ---------------------------------------------------------------------------------------------- training
def test_single_label_file_fits_and_tests_like_folders(tmp_path: Path) -> None:
    root = tmp_path / "images"
    rows = []
    for split, count in (("train", 8), ("val", 3), ("test", 2)):
        for c, (name, color) in enumerate(COLORS.items()):
            for i in range(count):
                write_image(root / split / f"{name}{i}.png", color, seed=1000 * c + i + 100 * len(split))
                rows.append({"path": f"{split}/{name}{i}.png", "label": name, "split": split})
    labels = write_rows(tmp_path / "labels.csv", rows)
    main(["fit", "--data.labels", str(labels), "--data.root", str(root), "--trainer.max_epochs", "1", *FAST,
          "--data.sampler", "balanced", "--model.class_weights", "auto"])
    best = next(Path("runs/convnext/version_0/checkpoints").glob("best-*acc*.ckpt"))
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["hyper_parameters"]["class_names"] == ["blue", "green", "red"]  # natural order, not file order
    assert checkpoint["hyper_parameters"]["task"] == "multiclass"
    assert checkpoint["hyper_parameters"]["class_counts"] == [8, 8, 8]
    main(["test", "--ckpt_path", str(best), "--data.labels", str(labels), "--data.root", str(root), *FAST])
    with open("runs/convnext/version_1/test_per_class.csv") as handle:
        assert [int(row["support"]) for row in csv.DictReader(handle)] == [2, 2, 2]


def test_multilabel_fit_stores_thresholds_and_predict_applies_them(multilabel_file: Path) -> None:
    main(["fit", "--data.labels", str(multilabel_file), "--trainer.max_epochs", "2", *FAST])
    run = Path("runs/convnext/version_0")
    best = next((run / "checkpoints").glob("best-epoch*-map*.ckpt"))  # chosen by val/map
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["hyper_parameters"]["task"] == "multilabel"
    thresholds = checkpoint["calibration"]["thresholds"]
    assert len(thresholds) == 3 and all(0.0 < t < 1.0 for t in thresholds)
    with open(run / "val_per_class.csv") as handle:
        report = list(csv.DictReader(handle))
    assert [row["class"] for row in report] == ["blue", "green", "red"]
    assert [int(row["support"]) for row in report] == [6, 6, 6] and all(0 <= float(row["ap"]) <= 1 for row in report)

    images = multilabel_file.parent
    main(["predict", "--ckpt_path", str(best), "--data.predict_dir", str(images), "--output", "preds.csv", *FAST])
    with open("preds.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "labels", "prob_blue", "prob_green", "prob_red", "error"]
    assert len(rows) == 36
    for row in rows:  # the CSV rounds to 6 decimals: classes within 1e-6 of their threshold may go either way
        listed = row["labels"].split(";") if row["labels"] else []
        for name, t in zip(["blue", "green", "red"], thresholds):
            margin = float(row[f"prob_{name}"]) - t
            assert name in listed if margin > 1e-6 else name not in listed if margin < -1e-6 else True, (row, t)
    main(["predict", "--ckpt_path", str(best), "--data.predict_dir", str(images), "--output", "all.jsonl",
          "--threshold", "0", *FAST])
    records = [json.loads(line) for line in open("all.jsonl")]
    assert all(r["labels"] == ["blue", "green", "red"] and set(r["probabilities"]) == set(r["labels"]) for r in records)

    model = ConvNeXtClassifier.load_from_checkpoint(best, weights_only=True)
    assert model.decision_thresholds().tolist() == pytest.approx(thresholds)
    model.threshold = 0.25  # the Python API's override
    assert model.decision_thresholds().tolist() == [0.25] * 3


@pytest.mark.slow
def test_validate_threshold_override_changes_f1_not_map(multilabel_file: Path) -> None:
    main(["fit", "--data.labels", str(multilabel_file), "--trainer.max_epochs", "1", *FAST])
    ckpt = "runs/convnext/version_0/checkpoints/last.ckpt"
    results = {}
    for version, threshold in enumerate(("0", "1")):
        main(["validate", "--ckpt_path", ckpt, "--data.labels", str(multilabel_file), "--threshold", threshold, *FAST,
              "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "csv",
              "--trainer.logger.name", "val"])
        with open(f"csv/val/version_{version}/metrics.csv") as handle:
            results[version] = {k: float(v) for k, v in next(csv.DictReader(handle)).items() if v}
    assert results[0]["val/map"] == pytest.approx(results[1]["val/map"])
    # threshold 0: every class predicted, recall 1, precision = share of positives (each class is in 3 of the 6
    # colour combinations: 6 of the 12 validation images)
    assert results[0]["val/f1_micro"] == pytest.approx(2 * 0.5 * 1 / (0.5 + 1), abs=1e-6)
    assert results[1]["val/f1_micro"] == 0.0  # threshold 1: a sigmoid never reaches it here


def test_explicit_multilabel_task_on_class_folders(image_root: Path) -> None:
    main(fit_args(image_root, "--data.task", "multilabel"))
    last = "runs/convnext/version_0/checkpoints/last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["hyper_parameters"]["task"] == "multilabel" and len(checkpoint["calibration"]["thresholds"]) == 3
    # The checkpoint keeps its task: validated on the same folders without --data.task, it is measured multi-label.
    main(["validate", "--ckpt_path", last, "--data.root", str(image_root), *FAST,
          "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "csv",
          "--trainer.logger.name", "val"])
    with open("csv/val/version_0/metrics.csv") as handle:
        assert "val/map" in next(csv.DictReader(handle))


def test_a_config_yaml_written_when_the_model_owned_the_task_keeps_it(image_root: Path, tmp_path: Path) -> None:
    """Earlier runs' config.yaml hold ``model.task``: it still chooses the task (now the data's) and the monitor."""
    from lit_convnext.cli.lightning_cli import build_cli

    old = tmp_path / "config.yaml"
    old.write_text(f"model:\n  model_name: {TINY_MODEL}\n  pretrained: false\n  image_size: 32\n  task: multilabel\n"
                   f"data:\n  root: {image_root}\n  num_workers: 0\n", encoding="utf-8")
    cli = build_cli(["--config", str(old), "--trainer.accelerator", "cpu"], run=False)
    assert cli.datamodule.task == cli.model.hparams.task == "multilabel"
    assert cli.config.checkpoint.monitor == "val/map"


def test_a_multiclass_checkpoint_refuses_a_multilabel_file(fitted: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    val = fitted["root"] / "val"
    labels = write_rows(tmp_path / "labels.csv", [
        {"path": str(val / "red" / "img0.png"), "labels": "red;green;blue", "split": "train"},
        {"path": str(val / "blue" / "img0.png"), "labels": "blue;green", "split": "val"},
        {"path": str(val / "green" / "img0.png"), "labels": "red;blue", "split": "val"},
    ])
    line = one_line_error(capsys, ["validate", "--ckpt_path", str(fitted["best"]), "--data.labels", str(labels), *FAST])
    assert "the checkpoint's model is multiclass but the data is multilabel" in line


# ---------------------------------------------------------------------------------------------- pieces
def test_thresholds_are_tuned_to_the_best_f1_per_class() -> None:
    model = ConvNeXtClassifier(TINY_MODEL, pretrained=False, class_names=["a", "b", "never"], task="multilabel")
    probabilities = torch.tensor([[0.9, 0.6, 0.5], [0.8, 0.4, 0.5], [0.3, 0.7, 0.5], [0.2, 0.1, 0.5]])
    targets = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    model.threshold_curve.update(probabilities, targets)
    model.on_validation_epoch_end()
    # a: 0.8 separates perfectly; b: 0.4 gives P 2/3, R 1 (F1 0.8), better than 0.7 (F1 0.67); never: kept at 0.5
    assert model.calibration["thresholds"] == pytest.approx([0.8, 0.4, 0.5])
    assert model.decide(probabilities).tolist() == [[True, True, True], [True, True, True],
                                                    [False, True, True], [False, False, True]]


def test_doctor_lists_every_label_file_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / name, (0, 0, 0))
    labels = tmp_path / "labels.csv"
    labels.write_text("path,labels\na.png,x;y\nb.png,\na.png,x;y\nc.png,x\nc.png,y\nghost.png,x\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", str(tmp_path), "--labels", str(labels), "--json", "report.json"])
    assert exit_info.value.code == 1
    report = json.loads(Path("report.json").read_text())
    assert [(line, problem.split(":")[0]) for line, _, problem in report["label_file_problems"]] == [
        (3, "empty label"), (4, "duplicate row"), (6, "image listed twice with different labels or split (line 5"),
        (7, "image not found at " + str(tmp_path / "ghost.png").split(":")[0]), (0, "class 'y' has 1 image(s)"),
    ]
    assert report["counts"] == {"all": {"x": 2, "y": 1}} and report["files_checked"] == 2
