"""Deployable exports by suffix (OpenVINO IR, LiteRT, Core ML, INT8): metadata, the check on labelled images,
the same rows as the checkpoint, and the one-line refusals that come before any work."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

import lit_convnext
from lit_convnext.cli.entry import main
from lit_convnext.commands.export import export
from lit_convnext.errors import UserError
from lit_convnext.inference import formats, verify
from tests.helpers import FAST, make_folder, one_line_error

needs_litert = pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None,
                                  reason="litert-torch is not installed: .ci/run puts it beside the test venv "
                                         "(it pins older pydantic than the test extra allows)")


def exports_lose(monkeypatch: pytest.MonkeyPatch, metric: str, points: float) -> None:
    """Every exported file's row scores ``points`` less in ``metric`` than the checkpoint's: the refusal rule is
    tested whatever the quantizer did."""
    real = verify.make_row

    def worse(model: str, *args: object) -> verify.Row:
        row = real(model, *args)
        if model != "PyTorch checkpoint":
            setattr(row, metric, getattr(row, metric) - points)
        return row

    monkeypatch.setattr(verify, "make_row", worse)



def test_unknown_suffix_lists_every_supported_format(fitted: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, ["export", str(fitted["best"]), str(tmp_path / "model.pt")])
    assert all(suffix in line for suffix in (".safetensors", ".onnx", ".xml", ".tflite", ".mlpackage"))


def test_a_missing_extra_names_its_pip_install(fitted: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(UserError, match=r'needs openvino: pip install "lit-convnext\[openvino\]"'):
        export(fitted["best"], tmp_path / "model.xml")
    with pytest.raises(UserError, match=r'needs openvino: pip install "lit-convnext\[openvino\]"'):
        lit_convnext.load_predictor(tmp_path / "model.xml")


def test_bad_calibration_folders_are_refused_before_any_work(fitted: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out" / "q.onnx"
    line = one_line_error(capsys, ["export", str(fitted["best"]), str(out), "--int8", "true",
                                   "--calibration_dir", str(tmp_path / "empty")])
    assert "--calibration_dir" in line and "no images" in line
    make_folder(tmp_path / "strange", 1, {"purple": (120, 0, 120)})
    line = one_line_error(capsys, ["export", str(fitted["best"]), str(out), "--int8", "true",
                                   "--calibration_dir", str(tmp_path / "strange")])
    assert "classes the model does not know: purple" in line
    line = one_line_error(capsys, ["export", str(fitted["best"]), str(tmp_path / "m.mlpackage"), "--int8", "true"])
    assert "--int8 applies to .onnx, .xml and .tflite" in line
    assert not out.parent.exists()


def test_a_copied_checkpoint_without_its_run_record_asks_for_check_dir(fitted: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "model.ckpt"
    copy.write_bytes(fitted["best"].read_bytes())
    with pytest.raises(UserError, match="pass --check_dir"):
        export(copy, tmp_path / "model.onnx")


def _rows(path: Path) -> list[list[str]]:
    return list(csv.reader(path.open()))


def _predict(ckpt: Path, folder: Path, out: Path) -> list[list[str]]:
    main(["predict", "--ckpt_path", str(ckpt), "--data.predict_dir", str(folder), "--data.num_workers", "0",
          "--trainer.accelerator", "cpu", "--progress_bar.refresh_rate", "0", "--top_k", "2", "--output", str(out)])
    return _rows(out)


def _same_rows(a: list[list[str]], b: list[list[str]], atol: float) -> None:
    assert a[0] == b[0] and len(a) == len(b)
    for x, y in zip(a[1:], b[1:]):
        assert (x[0], x[1], x[3]) == (y[0], y[1], y[3])
        assert abs(float(x[2]) - float(y[2])) < atol and abs(float(x[4]) - float(y[4])) < atol


@pytest.mark.slow  # OpenVINO conversion and the check: ~10 s
def test_openvino_export_carries_its_card_is_checked_and_predicts_the_checkpoints_rows(
        fitted: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import openvino as ov

    out = tmp_path / "deploy" / "model.xml"
    export(fitted["best"], out)  # checked on the run's validation images, found from its config.yaml
    printed = capsys.readouterr().out
    assert "Checked on 12 labelled images" in printed and "OpenVINO IR fp32" in printed
    assert out.with_suffix(".bin").is_file()
    info = ov.Core().read_model(str(out)).get_rt_info()["lit_convnext"]
    assert json.loads(info["class_names"].astype(str)) == ["blue", "green", "red"]
    report = json.loads((out.parent / verify.REPORT_NAME).read_text())
    model_row = report["rows"][1]
    assert model_row["verdict"] == "written" and model_row["agreement"] == 100.0
    assert model_row["max_prob_diff"] < 1e-4 and set(model_row["images_per_s"]) == {"batch_1", "batch_32"}
    folder = fitted["root"] / "val"
    _same_rows(_predict(fitted["best"], folder, tmp_path / "ckpt.csv"), _predict(out, folder, tmp_path / "ov.csv"),
               1e-5)
    (top,) = lit_convnext.load_predictor(out).predict(next((folder / "red").iterdir()), top_k=1)
    assert top.label == "red"


@pytest.mark.slow  # ONNX Runtime static quantization and the check: ~10 s
def test_int8_onnx_is_checked_and_refused_beyond_the_allowed_drop(fitted: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    out = tmp_path / "q.onnx"
    export(fitted["best"], out, int8=True)
    graph = onnx.load(str(out)).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["class_names"]) == ["blue", "green", "red"]
    report = json.loads((tmp_path / verify.REPORT_NAME).read_text())
    assert report["calibration_count"] == 12 and report["rows"][1]["model"] == "ONNX INT8"
    # A model that loses 5 points must not be written, whatever the quantizer did.
    exports_lose(monkeypatch, "top1", 5.0)
    refused = tmp_path / "refused" / "q.onnx"
    with pytest.raises(UserError, match="not written: top-1 5.00 points lower > --max_accuracy_drop 1"):
        export(fitted["best"], refused, int8=True)
    assert not refused.exists()
    assert "NOT written" in (refused.parent / verify.REPORT_NAME).read_text()


@pytest.mark.slow  # coremltools conversion: ~30-60 s on a shared 2-core machine
def test_coreml_package_carries_its_card(fitted: dict[str, Path], tmp_path: Path) -> None:
    from lit_convnext.inference.coreml_model import read_card

    out = tmp_path / "model.mlpackage"
    export(fitted["best"], out)
    card = read_card(out)
    assert card.class_names == ["blue", "green", "red"] and card.model_name == "convnext_atto"
    with pytest.raises(UserError, match="run only on Apple devices"):
        lit_convnext.load_predictor(out)


@needs_litert
@pytest.mark.slow  # litert-torch conversion: ~1 min
def test_litert_export_carries_its_card_and_predicts_the_checkpoints_rows(fitted: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    from lit_convnext.inference.litert_model import read_card

    out = tmp_path / "model.tflite"
    export(fitted["best"], out)
    assert read_card(out).class_names == ["blue", "green", "red"]
    folder = fitted["root"] / "val"
    _same_rows(_predict(fitted["best"], folder, tmp_path / "ckpt.csv"), _predict(out, folder, tmp_path / "lt.csv"),
               1e-5)


@needs_litert
@pytest.mark.slow  # litert-torch conversion and AI Edge Quantizer calibration: ~10 s (2 min under load)
def test_int8_litert_runs_int8_kernels_and_is_checked(fitted: dict[str, Path], tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from lit_convnext.inference.litert_model import read_card

    out = tmp_path / "q.tflite"
    export(fitted["best"], out, int8=True)
    assert read_card(out).class_names == ["blue", "green", "red"]
    assert Interpreter(model_path=str(out)).get_input_details()[0]["dtype"].__name__ == "int8"
    report = json.loads((tmp_path / verify.REPORT_NAME).read_text())
    assert report["rows"][1]["model"] == "LiteRT INT8" and report["rows"][1]["verdict"] == "written"
    assert report["rows"][1]["size_mb"] < 0.5 * 13.0  # INT8 weights: about a quarter of convnext_atto's 13 MB
    (top,) = lit_convnext.load_predictor(out).predict(next((fitted["root"] / "val" / "red").iterdir()), top_k=1)
    assert top.label == "red"


def test_every_format_names_an_extra_and_a_module() -> None:
    assert set(formats.FORMATS) == {".onnx", ".xml", ".tflite", ".mlpackage"}
    for fmt in formats.FORMATS.values():
        assert importlib.util.find_spec(fmt.exporter) is not None


def test_a_multilabel_row_scores_map_and_compares_label_sets_at_the_thresholds() -> None:
    import torch

    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    reference = torch.tensor([[0.9, 0.1, 0.8], [0.2, 0.7, 0.1], [0.6, 0.6, 0.3], [0.1, 0.2, 0.9]])
    moved = reference.clone()
    moved[2, 1] = 0.35  # crosses class 1's threshold 0.4: the third image's label set changes
    row = verify.make_row("m", moved, reference, targets, {}, 1.0, [0.5, 0.4, 0.5])
    assert row.metric == "mAP" and row.map == pytest.approx(100.0) and row.agreement == pytest.approx(75.0)
    assert row.max_prob_diff == pytest.approx(0.25) and row.score == row.map
    reference_row = verify.make_row("ref", reference, reference, targets, {}, None, [0.5, 0.4, 0.5])
    assert reference_row.agreement == 100.0
    assert verify.table([reference_row, row]).splitlines()[0].split()[1:3] == ["mAP", "%"]


@pytest.fixture(scope="module")
def multilabel_fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-epoch multi-label fit on colour images labelled with the colours they hold (a label file)."""
    import numpy as np
    from PIL import Image

    base = tmp_path_factory.mktemp("multilabel")
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    rows = ["path,labels,split"]
    for i in range(36):
        names = sorted(rng.choice(list(colours), size=int(rng.integers(1, 3)), replace=False).tolist())
        image = np.zeros((32, 32, 3), np.uint8)
        for half, name in zip((slice(0, 16), slice(16, 32)), names * 2):
            image[:, half] = colours[name]
        image = np.clip(image + rng.integers(-30, 30, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(base / f"img{i}.png")
        rows.append(f"img{i}.png,{';'.join(names)},{'val' if i % 3 == 0 else 'train'}")
    (base / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        main(["fit", "--data.labels", str(base / "labels.csv"), "--trainer.max_epochs", "2", *FAST])
    return next((base / "runs" / "convnext" / "version_0" / "checkpoints").glob("best-*.ckpt"))


@pytest.mark.slow  # a multi-label fit, an ONNX export and an INT8 export, each checked: ~20 s
def test_multilabel_exports_are_checked_on_the_runs_label_file_by_map(multilabel_fitted: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model.onnx"
    export(multilabel_fitted, out)
    printed = capsys.readouterr().out
    assert "Checked on 12 labelled images" in printed and "mAP %" in printed
    report = json.loads((tmp_path / verify.REPORT_NAME).read_text())
    reference, exported = report["rows"]
    assert exported["verdict"] == "written" and exported["agreement"] == 100.0
    assert exported["map"] == pytest.approx(reference["map"]) and exported["max_prob_diff"] < 1e-4
    assert set(exported["images_per_s"]) == {"batch_1", "batch_32"} and exported["size_mb"] > 0
    # INT8 is held to the same rule in mAP: an export losing 5 points of it is not written.
    export(multilabel_fitted, tmp_path / "q" / "q.onnx", int8=True)
    assert json.loads((tmp_path / "q" / verify.REPORT_NAME).read_text())["rows"][1]["map"] is not None
    exports_lose(monkeypatch, "map", 5.0)
    refused = tmp_path / "refused" / "q.onnx"
    with pytest.raises(UserError, match="not written: mAP 5.00 points lower > --max_accuracy_drop 1"):
        export(multilabel_fitted, refused, int8=True)
    assert not refused.exists()
    with pytest.raises(UserError, match="--check_dir takes class folders"):
        export(multilabel_fitted, tmp_path / "m.onnx", check_dir=tmp_path)
