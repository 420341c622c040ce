"""Near-duplicates in ``doctor``: re-saved copies of one picture are paired, different pictures are not."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from lit_convnext.checks.near_duplicates import close_pairs
from lit_convnext.checks.scan import scan


def picture(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A smooth random colour field with grain: photo-like, and different for every seed."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize(size, Image.BICUBIC), dtype=np.int16)
    return Image.fromarray(np.clip(smooth + rng.integers(-8, 9, (size[1], size[0], 3)), 0, 255).astype(np.uint8))


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, dict[str, tuple[str, str]]]:
    """``train/{a,b}`` and ``val/{a,b}`` of distinct pictures, plus three re-saved copies; the expected pairs."""
    root = tmp_path / "data"
    for split, count in (("train", 6), ("val", 3)):
        for c, name in enumerate("ab"):
            for i in range(count):
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                picture(100 * c + 10 * (split == "val") + i).save(path)
    original = Image.open(root / "train/a/0.png")
    original.convert("RGB").save(root / "train/a/0 again.jpg", quality=60)  # re-encoded, same class
    Image.open(root / "train/a/1.png").resize((64, 48), Image.BICUBIC).save(root / "val/a/resized.png")  # leakage
    cropped = Image.open(root / "train/b/1.png").crop((2, 2, 94, 70))
    ImageEnhance.Brightness(cropped).enhance(1.2).save(root / "train/a/looks like b.png")  # labelling conflict
    (root / "train/b/exact copy.png").write_bytes((root / "train/b/3.png").read_bytes())  # the exact check's
    expected = {
        "within a class": (str(root / "train/a/0.png"), str(root / "train/a/0 again.jpg")),
        "across splits": (str(root / "train/a/1.png"), str(root / "val/a/resized.png")),
        "across classes": (str(root / "train/a/looks like b.png"), str(root / "train/b/1.png")),
    }
    return root, expected


@pytest.mark.slow  # 3 s: imagehash imports scipy
def test_planted_near_duplicates_are_found_and_different_pictures_are_not(
        planted: tuple[Path, dict[str, tuple[str, str]]]) -> None:
    root, expected = planted
    report = scan(root, workers=1, near_duplicates=True)
    found = {where: tuple(sorted((a, b))) for a, b, _, where in report.near_duplicates}
    assert len(report.near_duplicates) == 3  # no pair of different pictures, and the exact copy left out
    assert found == {where: tuple(sorted(pair)) for where, pair in expected.items()}
    assert [where for *_, where in report.near_duplicates] == ["across splits", "across classes", "within a class"]
    assert all(0.8 <= similarity <= 1 for _, _, similarity, _ in report.near_duplicates)
    assert any("1 near-duplicate pair(s) across train/val/test" in w for w in report.warnings)
    assert any("labelling conflict" in w for w in report.warnings)
    assert report.duplicates == [[str(root / "train/b/3.png"), str(root / "train/b/exact copy.png")]]
    assert scan(root, workers=1).near_duplicates is None  # only looked for when asked


@pytest.mark.slow  # 2 s: imagehash imports scipy
def test_doctor_lists_the_pairs_in_its_text_and_json_reports(
        planted: tuple[Path, dict[str, tuple[str, str]]], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from lit_convnext.cli.entry import main

    root, expected = planted
    monkeypatch.setenv("COLUMNS", "400")  # whole paths on one line of Rich's table
    with pytest.raises(SystemExit):
        main(["doctor", str(root), "--workers", "1", "--near_duplicates", "true", "--json", "report.json"])
    text = capsys.readouterr().out
    assert "Near-duplicates" in text and "looks like b.png" in text and "across splits" in text
    pairs = json.loads(Path("report.json").read_text())["near_duplicates"]
    assert {tuple(sorted(pair[:2])) for pair in pairs} == {tuple(sorted(p)) for p in expected.values()}


def test_close_pairs_counts_differing_bits() -> None:
    hashes = [0, 0b111, 2**64 - 1, 0b1]
    assert close_pairs(hashes, max_distance=3) == [(0, 1, 3), (0, 3, 1), (1, 3, 2)]


@pytest.mark.slow  # 3 s: imagehash imports scipy
def test_fit_warns_about_near_duplicates_across_splits_when_asked(
        planted: tuple[Path, dict[str, tuple[str, str]]], caplog: pytest.LogCaptureFixture) -> None:
    from lit_convnext.data.datamodule import ImageFolderDataModule

    root, expected = planted
    datamodule = ImageFolderDataModule(root=root, batch_size=4, num_workers=0, near_duplicates=True)
    datamodule.preprocessing = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
                                "std": (0.5, 0.5, 0.5), "crop_pct": 1.0}
    with caplog.at_level(logging.WARNING, logger="lit_convnext.data.datamodule"):
        datamodule.setup("fit")
    lines = [r.getMessage() for r in caplog.records if "near-duplicate" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("1 near-duplicate pair(s) across train/val/test")
    assert " ~ ".join(sorted(expected["across splits"])) in lines[0]
