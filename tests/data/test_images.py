"""Every image mode decodes to upright 8-bit RGB."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError
from tests.bad_corpus import write_pixel_bad_files, write_warned_files

from lit_convnext.data import datasets
from lit_convnext.data.images import ALPHA_BACKGROUND, DamagedImageError, load_rgb, open_image


def test_grayscale_palette_cmyk_and_one_bit_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (4, 4), 100).save(tmp_path / "gray.png")
    Image.new("RGB", (4, 4), (200, 10, 10)).convert("P").save(tmp_path / "palette.png")
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("1", (4, 4), 1).save(tmp_path / "bits.png")
    for name in ["gray.png", "palette.png", "cmyk.jpg", "bits.png"]:
        img = load_rgb(tmp_path / name)
        assert img.mode == "RGB" and img.size == (4, 4), name
    assert load_rgb(tmp_path / "gray.png").getpixel((0, 0)) == (100, 100, 100)
    r, g, b = load_rgb(tmp_path / "cmyk.jpg").getpixel((0, 0))
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 255, 255, 0) is red


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    array = np.full((4, 4), 65535 // 2, dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "deep.png")
    assert load_rgb(tmp_path / "deep.png").getpixel((0, 0)) == (127, 127, 127)


def test_alpha_is_composited_on_the_fixed_background(tmp_path: Path) -> None:
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("RGBA", (4, 4), (255, 0, 0, 255)).save(tmp_path / "solid.png")
    assert load_rgb(tmp_path / "clear.png").getpixel((0, 0)) == ALPHA_BACKGROUND
    assert load_rgb(tmp_path / "solid.png").getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_partial_transparency_blends_as_alpha_compositing_does(tmp_path: Path, mode: str) -> None:
    """Every alpha value, in every mode with transparency, gives the pixels of compositing over the background."""
    values, alphas = np.meshgrid(np.arange(256), np.arange(256))
    rgba = Image.fromarray(np.stack([values, 255 - values, values // 2, alphas], -1).astype(np.uint8), "RGBA")
    if mode == "LA":
        rgba = rgba.convert("LA")
    elif mode == "P":  # a palette image with one transparent index
        rgba = rgba.convert("RGB").quantize(64)
        rgba.info["transparency"] = 3
    rgba.save(tmp_path / "ramp.png")
    reference = Image.open(tmp_path / "ramp.png").convert("RGBA")
    background = Image.new("RGBA", reference.size, ALPHA_BACKGROUND + (255,))
    expected = Image.alpha_composite(background, reference).convert("RGB")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "ramp.png")), np.asarray(expected))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(tmp_path / "rotated.jpg").size == (20, 40)


def test_a_file_with_a_known_signature_that_pillow_refuses_says_why(tmp_path: Path,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    """Pillow logs why it refuses some files, then raises "cannot identify image file": the reason names the
    format and keeps Pillow's words, whether the file is opened by path or from bytes, and nothing is printed."""
    write_pixel_bad_files(tmp_path)
    tiff = tmp_path / "tiff_samples_per_pixel.tif"
    for source in (tiff, io.BytesIO(tiff.read_bytes())):
        with pytest.raises(DamagedImageError, match=r"a TIFF file that Pillow cannot open: More samples per pixel"):
            with open_image(source):
                pass
    with pytest.raises(DamagedImageError, match=r"a PNG file that Pillow cannot open: damaged or unsupported header"):
        load_rgb(tmp_path / "apng_bad_sequence.png")
    (tmp_path / "noise.png").write_bytes(bytes(range(256)) * 4)  # no known signature: Pillow's own error
    with pytest.raises(UnidentifiedImageError) as refused:
        load_rgb(tmp_path / "noise.png")
    assert not isinstance(refused.value, DamagedImageError)
    out, err = capfd.readouterr()
    assert out + err == ""


def test_loader_workers_leave_pillow_file_warnings_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loader worker started by spawn or forkserver does not inherit the command's warning filters: the dataset
    sets the filter itself, so Pillow's notes about a damaged file that decodes print no bare lines."""
    files = write_warned_files(tmp_path)
    monkeypatch.setattr(datasets, "get_worker_info", lambda: object())  # as inside a worker
    monkeypatch.setattr(datasets, "_worker_quiet", False)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        for path in files.values():
            image, reason = datasets.decode_error(path)
            assert image is not None and reason == ""
    assert shown == []
    with warnings.catch_warnings(record=True) as shown:  # outside a worker (and outside the CLI) they still show
        warnings.simplefilter("always")
        monkeypatch.setattr(datasets, "get_worker_info", lambda: None)
        monkeypatch.setattr(datasets, "_worker_quiet", False)
        datasets.decode_error(files["corrupt_exif"])
    assert any("Corrupt EXIF data" in str(w.message) for w in shown)
