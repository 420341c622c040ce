"""Shipping the model: ONNX export (metadata, EMA, temperature, self-check), predict with ONNX, the Python API."""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from PIL import Image

import lit_convnext
from lit_convnext.cli.entry import main
from lit_convnext.commands.export import export
from lit_convnext.errors import UserError
from lit_convnext.inference import onnx_export
from lit_convnext.model.classifier import ConvNeXtClassifier
from tests.helpers import REPO, TINY_MODEL, one_line_error, write_image

TEMPERATURE = 2.0


@pytest.fixture(scope="module")
def calibrated(fitted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fitted checkpoint made to look like an EMA run with a fitted temperature, and its ONNX export.

    The head is scaled up so logits are O(1) (a 2-epoch tiny fit barely moves the 0.001-scaled head, and the
    checks below would pass on near-zero logits); ``current_model_state`` (the raw weights) is perturbed, so an
    export that took the raw instead of the EMA weights shows in the logits.
    """
    base = tmp_path_factory.mktemp("calibrated")
    ckpt = torch.load(fitted["best"], map_location="cpu", weights_only=True)
    ckpt["state_dict"]["net.head.fc.weight"] *= 1000.0
    ckpt["current_model_state"] = {k: v + 0.5 for k, v in ckpt["state_dict"].items()}
    ckpt["calibration"] = {"temperature": TEMPERATURE}
    path = base / "calibrated.ckpt"
    torch.save(ckpt, path)
    onnx_path = base / "model.onnx"
    export(path, onnx_path, check_dir=fitted["root"] / "val")  # a copied checkpoint has no run record beside it
    return {"ckpt": path, "onnx": onnx_path, "base": base, "val": fitted["root"] / "val"}


def _ema_network(ckpt_path: Path) -> torch.nn.Module:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    net = timm.create_model(hp["model_name"], num_classes=len(hp["class_names"]))
    net.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()})
    return net.eval()


def test_onnx_carries_classes_preprocessing_and_versions(calibrated: dict[str, Path]) -> None:
    hparams = torch.load(calibrated["ckpt"], map_location="cpu", weights_only=True)["hyper_parameters"]
    props = {p.key: p.value for p in onnx.load(str(calibrated["onnx"])).metadata_props}
    assert json.loads(props["class_names"]) == hparams["class_names"] == ["blue", "green", "red"]
    preprocessing = json.loads(props["preprocessing"])
    assert preprocessing == hparams["preprocessing"]
    assert set(preprocessing) == {"input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode"}
    assert props["model_name"] == TINY_MODEL
    assert props["lit_convnext_version"] == lit_convnext.__version__
    assert float(props["temperature_applied"]) == TEMPERATURE


def test_onnx_has_dynamic_batch_ema_weights_and_temperature(calibrated: dict[str, Path]) -> None:
    session = ort.InferenceSession(str(calibrated["onnx"]), providers=["CPUExecutionProvider"])
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    got = session.run(None, {"images": images.numpy()})[0]
    with torch.inference_mode():
        expected = _ema_network(calibrated["ckpt"])(images).numpy() / TEMPERATURE
    assert got.shape == (5, 3)
    assert np.abs(expected).max() > 0.1  # logits big enough for the comparison to mean something
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.slow  # about 3 s: an export and its check on the validation images
def test_export_refuses_to_write_a_model_that_fails_its_check(fitted: dict[str, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_export, "FP32_TOLERANCE", -1.0)  # no model can pass: the refusal path must hold
    out = tmp_path / "export" / "refused.onnx"
    with pytest.raises(UserError, match="does not reproduce the PyTorch model.*was not written"):
        export(fitted["best"], out)
    assert list(out.parent.iterdir()) == []  # neither the model nor the partial file it was checked as


@pytest.mark.slow  # about 4 s: two exports, each checked
def test_fp16_export_is_half_the_size_and_checked(calibrated: dict[str, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = calibrated["base"] / "model16.onnx"
    export(calibrated["ckpt"], out, fp16=True, check_dir=calibrated["val"])
    assert "ONNX Runtime matches PyTorch" in capsys.readouterr().out
    assert out.stat().st_size < 0.6 * calibrated["onnx"].stat().st_size
    predictor16 = lit_convnext.load_predictor(out)
    predictor32 = lit_convnext.load_predictor(calibrated["onnx"])
    image = Image.new("RGB", (40, 40), (200, 40, 40))
    (top16,), (top32,) = predictor16.predict(image, top_k=3), predictor32.predict(image, top_k=3)
    assert [c for c, _ in top16.top] == [c for c, _ in top32.top]
    assert np.allclose([p for _, p in top16.top], [p for _, p in top32.top], atol=1e-2)


def test_export_format_comes_from_the_suffix(fitted: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, ["export", str(fitted["best"]), str(tmp_path / "model.pt")])
    assert "model.pt" in line and ".safetensors" in line and ".onnx" in line
    line = one_line_error(capsys, ["export", str(fitted["best"]), str(tmp_path / "w.safetensors"), "--fp16", "true"])
    assert "--fp16 applies to ONNX exports only" in line


def test_predict_with_onnx_writes_the_same_rows_as_the_checkpoint(calibrated: dict[str, Path], fitted: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    folder = fitted["root"] / "val"
    common = ["--data.predict_dir", str(folder), "--data.num_workers", "0", "--trainer.accelerator", "cpu",
              "--progress_bar.refresh_rate", "0", "--top_k", "2"]
    main(["predict", "--ckpt_path", str(calibrated["ckpt"]), "--output", str(tmp_path / "ckpt.csv"), *common])
    main(["predict", "--ckpt_path", str(calibrated["onnx"]), "--output", str(tmp_path / "onnx.csv"), *common])
    rows = [list(csv.reader((tmp_path / name).open())) for name in ("ckpt.csv", "onnx.csv")]
    assert rows[0][0] == rows[1][0] == ["path", "class_1", "probability_1", "class_2", "probability_2", "error"]
    assert len(rows[0]) == len(rows[1]) == 13
    for a, b in zip(rows[0][1:], rows[1][1:]):
        assert (a[0], a[1], a[3]) == (b[0], b[1], b[3])
        assert abs(float(a[2]) - float(b[2])) < 1e-5 and abs(float(a[4]) - float(b[4])) < 1e-5
    # calibrated: the temperature flattens the probabilities compared with the raw softmax
    assert max(float(r[2]) for r in rows[1][1:]) < 0.999


def test_an_onnx_model_cannot_be_validated(calibrated: dict[str, Path], fitted: dict[str, Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, ["validate", "--ckpt_path", str(calibrated["onnx"]),
                                   "--data.root", str(fitted["root"])])
    assert "only `predict`" in line


def test_predictor_takes_paths_images_and_folders_in_order(calibrated: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    red = write_image(folder / "a_red.png", (220, 30, 30))
    write_image(folder / "sub" / "b_blue.png", (30, 40, 220), seed=1)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    # A DDS file with a pixel format Pillow has not implemented: it raises NotImplementedError, not an OSError.
    unimplemented = tmp_path / "texture.dds"
    unimplemented.write_bytes(struct.pack("<4sIIIIIII44x", b"DDS ", 124, 0x1007, 8, 8, 0, 0, 0)
                              + struct.pack("<II4s20x", 32, 0x4, b"XXXX") + struct.pack("<I16x", 0x1000) + bytes(256))
    image = Image.open(red).convert("L")  # any mode: converted like a decoded file
    answers = []
    for path in (calibrated["ckpt"], calibrated["onnx"]):
        predictor = lit_convnext.load_predictor(path)
        results = predictor.predict([broken, folder, image, str(red), unimplemented], top_k=2, batch_size=2)
        answers.append(results[1:5])
        assert [r.source for r in results] == [str(broken), str(red), str(folder / "sub" / "b_blue.png"),
                                               "<image 3>", str(red), str(unimplemented)]
        assert results[0].error and "cannot read image" in results[0].error and results[0].top == []
        assert results[5].error == "cannot read image: NotImplementedError: Unimplemented pixel format 1482184792"
        assert all(r.error is None and len(r.top) == 2 for r in results[1:5])
        assert results[1].top == results[4].top  # the same file gives the same answer wherever it sits in a batch
        (alone,) = predictor.predict(red, top_k=10)
        assert len(alone) == 3 and alone[0] == alone.top[0] and alone.label == alone.top[0][0]
        assert sum(p for _, p in alone) == pytest.approx(1.0, abs=1e-5)  # all classes: calibrated softmax sums to 1
    for a, b in zip(*answers):  # the checkpoint and its ONNX export give the same answers
        assert [c for c, _ in a.top] == [c for c, _ in b.top]
        assert np.allclose([p for _, p in a.top], [p for _, p in b.top], atol=1e-5)


def test_load_predictor_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.ckpt").write_text("hello")
    (tmp_path / "notes.onnx").write_text("hello")
    with pytest.raises(UserError, match="notes.ckpt"):
        lit_convnext.load_predictor(tmp_path / "notes.ckpt")
    with pytest.raises(UserError, match="cannot load ONNX model .*notes.onnx"):
        lit_convnext.load_predictor(tmp_path / "notes.onnx")
    with pytest.raises(UserError, match="does not exist"):
        lit_convnext.load_predictor(tmp_path / "missing.ckpt")


@pytest.mark.slow  # a fresh Python process
def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, lit_convnext; assert 'torch' not in sys.modules; print(lit_convnext.load_predictor.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "load_predictor"


def test_classifier_from_a_class_count() -> None:
    model = ConvNeXtClassifier(model_name=TINY_MODEL, pretrained=False, num_classes=4, image_size=32)
    assert model.class_names == ["0", "1", "2", "3"] and model.hparams["class_names"] == model.class_names
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    named = ConvNeXtClassifier(model_name=TINY_MODEL, pretrained=False, class_names=["cat", "dog"], num_classes=2)
    assert named.class_names == ["cat", "dog"]
    with pytest.raises(UserError, match="num_classes=3 but 2 class names"):
        ConvNeXtClassifier(model_name=TINY_MODEL, pretrained=False, class_names=["cat", "dog"], num_classes=3)


def test_num_classes_conflicting_with_the_data_is_a_one_line_error(image_root: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers import fit_args

    line = one_line_error(capsys, fit_args(image_root, "--model.num_classes", "5"))
    assert "num_classes=5 but 3 class names" in line
