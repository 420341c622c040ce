"""Per-image results, temperature scaling, --min_confidence, TTA, label issues and report.html."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import os
import shutil
import subprocess
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from lit_convnext.evaluation.calibration import calibration_error, fit_temperature
from lit_convnext.cli.entry import main
from lit_convnext.data.folders import iter_images
from lit_convnext.model.classifier import ConvNeXtClassifier
from tests.helpers import COLORS, FAST, TINY_MODEL, fit_args, make_folder, write_image

PREDICTION_COLUMNS = ["path", "true", "predicted", "confidence", "loss", "correct",
                      "class_1", "probability_1", "class_2", "probability_2", "class_3", "probability_3"]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def eval_options() -> list[str]:
    return [option for option in FAST if option not in ("--model.pretrained", "false")]


def test_fit_writes_one_row_per_validation_image_and_stores_the_temperature(fitted: dict[str, Path]) -> None:
    run = fitted["run"]
    rows = read_rows(run / "val_predictions.csv")
    assert list(rows[0]) == PREDICTION_COLUMNS
    assert [r["path"] for r in rows] == [str(p) for p in iter_images(fitted["root"] / "val")]  # each once, in order
    for r in rows:
        assert r["true"] == Path(r["path"]).parent.name
        assert r["predicted"] == r["class_1"] and float(r["confidence"]) == float(r["probability_1"])
        assert r["correct"] == str(int(r["true"] == r["predicted"]))
    checkpoint = torch.load(fitted["best"], map_location="cpu", weights_only=True)
    summary = json.loads((run / "val_calibration.json").read_text())
    assert checkpoint["calibration"]["temperature"] == pytest.approx(summary["temperature"])
    assert summary["nll_after"] <= summary["nll_before"] + 1e-6  # the fitted T minimises the NLL
    assert (run / "report.html").is_file() and (run / "train_batch_mosaic.png").is_file()


def test_temperature_fit_recovers_the_scale_of_overconfident_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 5, (2000,), generator=generator)
    calibrated = torch.randn(2000, 5, generator=generator) + 2.0 * torch.nn.functional.one_hot(targets, 5)
    # Sample labels from the calibrated probabilities, so T=1 is right for `calibrated` and T=4 for 4x the logits.
    labels = torch.multinomial(calibrated.softmax(1), 1, generator=generator).squeeze(1)
    temperature = fit_temperature(4.0 * calibrated, labels)
    assert temperature == pytest.approx(4.0, rel=0.15)
    before = calibration_error((4.0 * calibrated).softmax(1), labels)
    after = calibration_error((4.0 * calibrated / temperature).softmax(1), labels)
    assert after < before / 3


def test_temperature_calibrates_an_overconfident_model_and_predict_applies_it(image_root: Path) -> None:
    # A large random head and a negligible lr: confident logits that are right only by chance.
    main(fit_args(image_root, "--model.head_init_scale", "100", "--model.lr", "1e-9",
                  "--evaluation.label_issues", "false", "--evaluation.report", "false"))
    run = Path("runs/convnext/version_0")
    summary = json.loads((run / "val_calibration.json").read_text())
    assert summary["temperature"] > 2
    assert summary["ece_after"] < summary["ece_before"] - 0.1
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    assert checkpoint["calibration"]["temperature"] == pytest.approx(summary["temperature"])

    main(["predict", "--ckpt_path", str(best), "--data.predict_dir", str(image_root / "val"), "--output", "cal.csv",
          *eval_options()])
    checkpoint["calibration"] = {}
    torch.save(checkpoint, "raw.ckpt")
    main(["predict", "--ckpt_path", "raw.ckpt", "--data.predict_dir", str(image_root / "val"), "--output", "raw.csv",
          *eval_options()])
    calibrated = {r["path"]: r for r in read_rows(Path("cal.csv"))}
    validated = {r["path"]: float(r["confidence"]) for r in read_rows(run / "val_predictions.csv")}
    for row in read_rows(Path("raw.csv")):
        cal = calibrated[row["path"]]
        assert cal["class_1"] == row["class_1"]  # a temperature never changes the ranking
        assert float(cal["probability_1"]) < float(row["probability_1"])
        assert float(cal["probability_1"]) == pytest.approx(validated[row["path"]], abs=1e-5)


def test_min_confidence_marks_rows_below_it_uncertain(fitted: dict[str, Path]) -> None:
    args = ["predict", "--ckpt_path", str(fitted["best"]), "--data.predict_dir", str(fitted["root"] / "val"),
            *eval_options()]
    main([*args, "--output", "plain.csv"])
    confidences = sorted(float(r["probability_1"]) for r in read_rows(Path("plain.csv")))
    threshold = (confidences[5] + confidences[6]) / 2
    main([*args, "--output", "routed.csv", "--min_confidence", str(threshold)])
    rows = read_rows(Path("routed.csv"))
    assert list(rows[0])[-2:] == ["uncertain", "error"]
    assert [r["uncertain"] for r in rows] == [str(float(r["probability_1"]) < threshold).lower() for r in rows]
    assert sum(r["uncertain"] == "true" for r in rows) == 6


def test_min_confidence_outside_zero_to_one_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                                                fitted: dict[str, Path]) -> None:
    from tests.helpers import one_line_error

    line = one_line_error(capsys, ["predict", "--ckpt_path", str(fitted["best"]), "--data.predict_dir",
                                   str(fitted["root"]), "--min_confidence", "1.5", *eval_options()])
    assert "--min_confidence 1.5: must be less than or equal to 1" in line


def test_tta_averages_the_probabilities_of_the_image_and_its_mirror() -> None:
    torch.manual_seed(0)
    model = ConvNeXtClassifier(TINY_MODEL, pretrained=False, class_names=["a", "b", "c"], image_size=32,
                               head_init_scale=10.0).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        plain = model.evaluation_logits(images).softmax(-1)
        model.tta = True
        averaged = model.evaluation_logits(images).softmax(-1)
        expected = (model(images).softmax(-1) + model(images.flip(-1)).softmax(-1)) / 2
    assert torch.allclose(averaged, expected, atol=1e-6)
    assert not torch.allclose(plain, averaged, atol=1e-4)


def test_tta_option_of_predict_and_validate(fitted: dict[str, Path]) -> None:
    common = ["--ckpt_path", str(fitted["best"]), *eval_options()]
    predict = ["predict", "--data.predict_dir", str(fitted["root"] / "val"), *common]
    main([*predict, "--output", "plain.csv"])
    main([*predict, "--output", "tta.csv", "--tta", "true"])
    plain, tta = read_rows(Path("plain.csv")), read_rows(Path("tta.csv"))
    assert [r["path"] for r in plain] == [r["path"] for r in tta]
    assert any(abs(float(a["probability_1"]) - float(b["probability_1"])) > 1e-5 for a, b in zip(plain, tta))
    main(["validate", "--data.root", str(fitted["root"]), "--tta", "true", *common])
    rows = read_rows(Path("runs/convnext/version_0/val_predictions.csv"))
    assert len(rows) == 12


def flipped_folder(root: Path) -> list[str]:
    """``root/train`` and ``root/val`` with 3 validation images of one colour filed under another class."""
    make_folder(root / "train", 2)
    make_folder(root / "val", 6, seed=500)
    names = list(COLORS)
    flipped = []
    for i, (name, color) in enumerate(COLORS.items()):
        wrong = names[(i + 1) % len(names)]
        flipped.append(str(write_image(root / "val" / wrong / f"flipped_{name}.png", color, seed=7000 + i)))
    return flipped


def validate_flipped_and_report(fitted: dict[str, Path], tmp_path: Path) -> tuple[Path, list[str]]:
    """``validate`` on a folder with 3 flipped labels, then ``report`` of that run; the run and the flipped paths."""
    flipped = flipped_folder(tmp_path / "flipped")
    main(["validate", "--data.root", str(tmp_path / "flipped"), "--ckpt_path", str(fitted["best"]), *eval_options()])
    run = Path("runs/convnext/version_0")
    with pytest.raises(SystemExit) as done:
        main(["report", str(run), "--ckpt_path", str(fitted["best"]), "--gallery_size", "4"])
    assert done.value.code == 0
    return run, flipped


def test_label_issues_find_the_flipped_labels_and_the_report_renders(fitted: dict[str, Path], tmp_path: Path) -> None:
    run, flipped = validate_flipped_and_report(fitted, tmp_path)
    issues = read_rows(run / "val_label_issues.csv")
    assert {r["path"] for r in issues[:3]} == set(flipped)
    for r in issues[:3]:
        assert r["suggested"] == Path(r["path"]).stem.removeprefix("flipped_")  # the colour it really is
    pairs = read_rows(run / "val_confused_pairs.csv")
    assert sum(int(p["count"]) for p in pairs) == sum(r["correct"] == "0" for r in read_rows(run / "val_predictions.csv"))
    check_report_images(run / "report.html", expected_text=["flipped_red.png", *COLORS], min_images=10)


class _ReportPage(HTMLParser):
    """The ``src`` of every ``<img>`` of a page and its visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs).get("src") or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_report_images(report: Path, expected_text: list[str], min_images: int) -> None:
    """Every image of the self-contained report is an inline data URI that decodes, and the expected text is on
    the page (what a browser would show; the browser itself is the slow test's)."""
    page = _ReportPage()
    page.feed(report.read_text(encoding="utf-8"))
    assert len(page.sources) >= min_images
    for source in page.sources:
        header, _, data = source.partition(",")
        assert header in ("data:image/png;base64", "data:image/jpeg;base64"), source[:80]
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as image:
            image.load()  # the whole picture decodes, not only its header
            assert image.width > 0 and image.height > 0
    text = " ".join(page.text)
    for expected in expected_text:
        assert expected in text, expected


@pytest.mark.slow
def test_the_report_renders_in_a_real_browser(fitted: dict[str, Path], tmp_path: Path) -> None:
    run, _ = validate_flipped_and_report(fitted, tmp_path)
    check_in_browser(run / "report.html", expected_text=["flipped_red.png", *COLORS], min_images=10)


def check_in_browser(report: Path, expected_text: list[str], min_images: int) -> None:
    """Open the report in headless Chromium: every image decodes and the expected text is on the page."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):  # .ci/run installs it: a CI run without it must not pass silently
            pytest.fail("chromium is not installed: .ci/run should have installed it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    probe = report.with_name("probe.html")  # a copy with a script that records what loaded
    script = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
              "document.body.setAttribute('data-images',i.length);"
              "document.body.setAttribute('data-broken',i.filter(x=>!(x.complete&&x.naturalWidth>0)).length);});</script>")
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", probe.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    images = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken="(\d+)"', dom)
    assert images and broken, dom[:500]
    assert int(images.group(1)) >= min_images and broken.group(1) == "0"
    for text in expected_text:
        assert text in dom
    screenshot = report.with_name("report.png")  # kept for a person to look at (pytest --basetemp)
    subprocess.run([*flags, "--hide-scrollbars", "--window-size=1200,3000", f"--screenshot={screenshot}",
                    report.resolve().as_uri()], capture_output=True, timeout=120)
    assert screenshot.stat().st_size > 10_000


def test_classes_too_small_for_cleanlab_are_one_warning_with_their_names(tmp_path: Path) -> None:
    """cleanlab warns once per class with a single validation image; a user gets one line naming the classes."""
    pytest.importorskip("cleanlab", reason="the label-issue search needs the report extra (cleanlab)")
    from lit_convnext.evaluation.end_of_fit import write_label_issues

    names = ["cat", "dog", "fox", "owl"]
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 3])  # fox and owl: one image each
    probabilities = torch.full((10, 4), 0.1).scatter_(1, targets[:, None], 0.7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_label_issues(tmp_path / "issues.csv", [f"{i}.png" for i in range(10)], names, probabilities, targets)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "2 class(es) have too few validation images" in messages[0] and "fox, owl" in messages[0]
    assert (tmp_path / "issues.csv").read_text().startswith("rank,path,given")


# ------------------------------------------------------------------------------------ report's default checkpoint
def test_report_picks_the_best_checkpoint_the_run_recorded_not_the_highest_epoch(image_root: Path) -> None:
    """Monitoring ``epoch`` in ``min`` mode, epoch 0 is the best of two; the names hold the accuracy (not the
    monitored value) and the lexically last name is epoch 1."""
    from lit_convnext.commands.report import best_checkpoint

    main(fit_args(image_root, "--trainer.max_epochs", "2", "--checkpoint.save_top_k", "2",
                  "--checkpoint.monitor", "epoch", "--checkpoint.mode", "min", "--evaluation.enabled", "false"))
    folder = Path("runs/convnext/version_0/checkpoints")
    assert len(list(folder.glob("best-*.ckpt"))) == 2
    assert best_checkpoint(folder).name.startswith("best-epoch000-")


@pytest.mark.parametrize(("names", "best"), [
    (["best-epoch001-acc0.9000", "best-epoch002-acc0.8000"], "best-epoch001-acc0.9000"),
    (["best-epoch001-map0.7000", "best-epoch010-map0.6500"], "best-epoch001-map0.7000"),  # 010 sorts last
    (["best-epoch001-val_loss=0.5000", "best-epoch002-val_loss=0.3000"], "best-epoch002-val_loss=0.3000"),
])
def test_without_a_recorded_best_the_score_in_the_name_decides(tmp_path: Path, names: list[str], best: str) -> None:
    from lit_convnext.commands.report import best_checkpoint

    for name in names:  # checkpoints without callback state (written by another tool, or trimmed)
        torch.save({"state_dict": {}}, tmp_path / f"{name}.ckpt")
    assert best_checkpoint(tmp_path) == tmp_path / f"{best}.ckpt"


def test_the_recorded_best_counts_even_after_the_run_was_moved(tmp_path: Path) -> None:
    from lit_convnext.commands.report import best_checkpoint

    for epoch in (1, 2):  # names without a score
        torch.save({"state_dict": {}}, tmp_path / f"best-epoch={epoch}.ckpt")
    state = {"best_model_path": "/where/it/was/trained/checkpoints/best-epoch=1.ckpt", "best_model_score": 0.9}
    torch.save({"callbacks": {"ModelCheckpoint{'monitor': 'val/acc1'}": state}}, tmp_path / "last.ckpt")
    assert best_checkpoint(tmp_path) == tmp_path / "best-epoch=1.ckpt"
    assert best_checkpoint(tmp_path / "none") is None


def test_without_cleanlab_a_fit_ends_without_a_warning_and_the_report_says_it_once(
        image_root: Path, monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder) -> None:
    """cleanlab is the ``report`` extra: the base install's default run must end clean, the report naming the extra."""
    import sys

    monkeypatch.setitem(sys.modules, "cleanlab", None)  # `import cleanlab` now fails as if it were not installed
    monkeypatch.setitem(sys.modules, "cleanlab.filter", None)
    main(fit_args(image_root))
    run = Path("runs/convnext/version_0")
    assert (run / "report.html").is_file() and not (run / "val_label_issues.csv").exists()
    app_warnings = [str(w.message) for w in recwarn if "lit_convnext" in w.filename]
    assert not app_warnings
    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.count("pip install 'lit-convnext[report]'") == 1 and "lists them in val_label_issues.csv" in page
