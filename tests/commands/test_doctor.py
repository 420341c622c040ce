"""`lit-convnext doctor`: what it reports on a folder of awkward files, and its exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.bad_corpus import BAD, PIXEL_BAD, WARNED, build_corpus, write_bad_files
from tests.helpers import make_folder

from lit_convnext.cli.entry import main
from lit_convnext.checks.file_checks import check_file
from lit_convnext.checks.scan import scan
from lit_convnext.data.images import load_rgb


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    root = tmp_path / "corpus"
    return root, build_corpus(root)


def test_scan_reports_every_problem(corpus: tuple[Path, dict[str, Path]]) -> None:
    root, files = corpus
    report = scan(root, image_size=40, workers=1)
    bad = {Path(p).name: reason for p, reason in report.bad_files}
    assert set(bad) == set(BAD)
    for name, word in BAD.items():
        assert word in bad[name], (name, bad[name])
    assert report.empty_classes == [("train", "empty_class")]
    assert report.unknown_classes == [("val", "only_in_val")]
    assert report.leakage == [(str(root / "train/blue/img0.png"), str(root / "val/blue/copy of train.png"))]
    assert report.wrong_extension == [(str(files["jpeg_as_png"]), "JPEG")]
    assert report.conversions == {"1-bit": 1, "16-bit/float": 1, "CMYK": 1, "alpha": 2, "grayscale": 2, "palette": 2}
    assert report.exif_rotated == 1 and report.multi_frame == 2
    assert report.ignored_files == [str(root / "train/red/notes.txt")]  # the hidden file is not even listed
    # 6 plain PNGs + 14 awkward files (unicode, upper-case, webp, ... included) are usable; bad ones are not counted.
    assert report.counts["train"] == {"blue": 6, "empty_class": 0, "red": 20}
    assert report.imbalance["train"] == 3.33
    # Files Pillow warns about are usable, listed with the warning (which never reaches the terminal bare).
    notes = {Path(p).name: note for p, note in report.decoder_notes}
    assert set(notes) == set(WARNED)
    for name, word in WARNED.items():
        assert word in notes[name], (name, notes[name])
    assert any("2 file(s) decode with warnings from Pillow" in w for w in report.warnings)
    # The EXIF-rotated file is reported with its upright size (stored 64x32, upright 32x64).
    assert (str(files["exif_rotated"]), 32, 64) in report.too_small
    assert report.size_stats["height"]["max"] == 64
    assert len(report.errors) == 4 and not report.ok
    assert any("EXIF" in w for w in report.warnings)
    json.dumps(report.to_dict())  # serialisable as-is


def test_exif_rotated_image_loads_upright(corpus: tuple[Path, dict[str, Path]]) -> None:
    _, files = corpus
    assert load_rgb(files["exif_rotated"]).size == (32, 64)
    assert check_file(files["exif_rotated"]).exif_rotated


def test_every_undecodable_file_is_found_and_header_only_misses_pixel_errors(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The default check decodes pixels: it finds every file training would fail on; --header_only does not."""
    write_bad_files(tmp_path)
    for name, word in BAD.items():
        error = check_file(tmp_path / name).error
        assert error and word in error, (name, error)
    missed = {name for name in BAD if not check_file(tmp_path / name, header_only=True).error}
    assert {"bmp_palette_too_long.bmp", "tiff_corrupt_fax.tif", "tiff_corrupt_lzw.tif", "gif_truncated.gif"} <= missed
    assert missed <= set(PIXEL_BAD)
    out, err = capfd.readouterr()
    assert "Fax4Decode" not in err + out and "Using code not yet in table" not in err + out  # libtiff kept quiet
    assert "More samples per pixel" not in err + out  # Pillow's log line is the file's reason, not a bare line


def test_doctor_reports_bombs_and_pixel_errors_and_header_only_is_opt_in(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_folder(tmp_path / "data", 2)
    write_bad_files(tmp_path / "data" / "red")
    for option, expected in (([], set(BAD)), (["--header_only", "true"], set(BAD) - set(PIXEL_BAD))):
        with pytest.raises(SystemExit) as exit_info:
            main(["doctor", str(tmp_path / "data"), "--json", str(tmp_path / "r.json"), "--workers", "1", *option])
        assert exit_info.value.code == 1
        report = json.loads((tmp_path / "r.json").read_text())
        found = {Path(path).name for path, _ in report["bad_files"]}
        assert expected - {"png_corrupt_idat.png", "webp_truncated.webp"} <= found <= expected | set(PIXEL_BAD)
    assert "headers only" in capsys.readouterr().out


def test_parallel_scan_matches_serial(corpus: tuple[Path, dict[str, Path]]) -> None:
    root, _ = corpus
    serial, parallel = scan(root, workers=1, cache=False), scan(root, workers=2, cache=False)
    assert serial.to_dict() == parallel.to_dict()


def test_doctor_command_exit_status_and_json(corpus: tuple[Path, dict[str, Path]], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = corpus
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", str(root), "--json", str(tmp_path / "report.json"), "--image_size", "40", "--workers", "1"])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "truncated.jpg" in out and "copy of train.png" in out and "empty_class" in out
    assert "Decoded with warnings from Pillow" in out and "corrupt_exif.jpg" in out
    saved = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert len(saved["bad_files"]) == len(BAD) and saved["leakage"]


def test_doctor_clean_folder_exits_zero_with_warnings_only(tmp_path: Path) -> None:
    root = tmp_path / "clean"
    make_folder(root / "train", 6)
    make_folder(root / "val", 2, seed=500)
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", str(root), "--image_size", "64", "--workers", "1"])
    assert exit_info.value.code == 0
    report = scan(root, image_size=64, workers=1)
    assert report.ok and report.warnings  # every image is smaller than 64 px


def test_doctor_single_folder_layout(tmp_path: Path) -> None:
    make_folder(tmp_path / "flat", 3)
    report = scan(tmp_path / "flat", workers=1)
    assert report.counts == {"all": {"red": 3, "green": 3, "blue": 3}} and report.ok


def test_doctor_missing_root_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", "does/not/exist"])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_doctor_shows_bracketed_names_as_they_are(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths and class names are data, not Rich markup: ``[draft]`` stays on the screen and ``[/x]`` cannot
    crash the table."""
    root = tmp_path / "[set] a"
    make_folder(root, 2, classes={"[draft] cats": (200, 0, 0), "dogs [/x]": (0, 0, 200)})
    (root / "dogs [/x]" / "[broken].png").write_bytes(b"not an image")
    monkeypatch.setenv("COLUMNS", "400")  # Rich folds long cells at the width: keep every path on one line
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", str(root), "--workers", "1", "--json", str(tmp_path / "[out].json")])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    for text in ("[set] a", "[draft] cats", "dogs [/x]", "[broken].png", "[out].json"):
        assert text in out, text
