"""Weights files through the CLI: a new fine-tune from a checkpoint, export to plain timm, and refusing pickles."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from tests.helpers import FAST, make_folder, one_line_error

from lit_convnext.cli.entry import main
from lit_convnext.model.classifier import ConvNeXtClassifier


class _WritesMarker:
    """Unpickling this object would create ``marker``: the test proves that never happens."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _evil_file(path: Path, marker: Path) -> Path:
    with path.open("wb") as handle:
        pickle.dump({"state_dict": {}, "hyper_parameters": {"x": _WritesMarker(marker)}}, handle)
    return path


@pytest.mark.parametrize("suffix", [".pth", ".ckpt"])
def test_a_malicious_pickle_is_never_unpickled(tmp_path: Path, image_root: Path, suffix: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_file(tmp_path / f"evil{suffix}", marker)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        line = one_line_error(capsys, ["fit", "--data.root", str(image_root), *FAST, "--model.pretrained", str(evil)])
        assert "evil" in line
        line = one_line_error(capsys, ["predict", "--ckpt_path", str(evil), "--data.predict_dir", str(image_root)])
        assert "would run code when unpickled" in line
    assert not marker.exists()
    assert [str(w.message) for w in shown if "pickle protocol" in str(w.message)] == []  # the error says it all


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n not really", b"PK\x03\x04truncated"])
def test_a_file_that_is_not_a_checkpoint_is_a_one_line_error(tmp_path: Path, image_root: Path, content: bytes,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "weights.pth"
    bad.write_bytes(content)
    line = one_line_error(capsys, ["fit", "--data.root", str(image_root), *FAST, "--model.pretrained", str(bad)])
    assert "weights.pth" in line


def test_new_fine_tune_from_a_finished_run_resets_the_head_and_reports_it(fitted: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    classes = {"cat": (200, 200, 0), "dog": (0, 200, 200)}
    make_folder(other / "train", 8, classes)
    make_folder(other / "val", 2, classes)
    main(["fit", "--data.root", str(other), *FAST, "--model.pretrained", str(fitted["best"]),
          "--trainer.max_steps", "1", "--trainer.max_epochs", "1"])
    run = Path.cwd() / "runs" / "convnext" / "version_0"
    report = json.loads((run / "pretrained_load_report.json").read_text())
    assert report["head"] == "reset" and report["tensors_loaded"] > 100
    checkpoint = torch.load(next((run / "checkpoints").glob("last.ckpt")), weights_only=True)
    assert checkpoint["hyper_parameters"]["class_names"] == ["cat", "dog"]


def test_export_round_trip_gives_the_checkpoint_logits_in_plain_timm(fitted: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "export" / "digits.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(fitted["best"]), str(out)])
    assert exit_info.value.code == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["class_names"] == ["blue", "green", "red"]

    model = ConvNeXtClassifier.load_from_checkpoint(fitted["best"], map_location="cpu", pretrained=False).eval()
    plain = timm.create_model(sidecar["model_name"], pretrained=True, num_classes=3,
                              pretrained_cfg_overlay=dict(file=str(out), num_classes=3)).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(images), model(images), atol=1e-5)


def test_export_takes_the_ema_weights_or_with_use_ema_false_the_raw_ones(image_root: Path, tmp_path: Path) -> None:
    main(["fit", "--data.root", str(image_root), *FAST, "--trainer.max_epochs", "1",
          "--trainer.callbacks+=lit_convnext.callbacks.EMA", "--trainer.callbacks.decay", "0.5",
          "--trainer.callbacks.warmup", "false"])
    last = next(Path("runs").glob("convnext/version_*/checkpoints/last.ckpt"))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ema = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    raw = {k[4:]: v for k, v in ckpt["current_model_state"].items() if k.startswith("net.")}
    assert not torch.equal(ema["stem.0.weight"], raw["stem.0.weight"])
    for flags, expected in (([], ema), (["--use_ema", "false"], raw)):
        out = tmp_path / f"export{len(flags)}.safetensors"
        with pytest.raises(SystemExit) as exit_info:
            main(["export", str(last), str(out), *flags])
        assert exit_info.value.code == 0
        exported = load_file(out)
        assert exported.keys() == expected.keys()
        assert all(torch.equal(exported[k], expected[k]) for k in expected)
