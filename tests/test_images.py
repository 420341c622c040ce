"""Every image mode decodes to upright 8-bit RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lit_convnext.data.images import ALPHA_BACKGROUND, load_rgb


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
