"""Every image mode decodes to upright 8-bit RGB."""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader
from tests.bad_corpus import BOMBS, write_bombs, write_pixel_bad_files, write_warned_files

from lit_convnext.data import datasets, images
from lit_convnext.data.images import ALPHA_BACKGROUND, MAX_PIXELS, DamagedImageError, load_rgb, open_image


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


def test_loader_workers_leave_pillow_file_warnings_out(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A loader worker is a process of the loader's own: it leaves out Pillow's notes about a damaged file that still
    decodes, also when it inherits nothing (spawn, forkserver) or inherits a process that shows every warning (fork,
    as here on Linux); the process that builds the loader (a user's, outside the commands) still shows them."""
    files = write_warned_files(tmp_path)
    dataset = datasets.UnlabeledImages(sorted(files.values()), lambda image: torch.zeros(1))

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # reaches fd 2 from any process
        os.write(2, f"shown: {message}\n".encode())

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        for _, _, errors in DataLoader(dataset, batch_size=2, num_workers=1):
            assert list(errors) == ["", ""]
        assert "shown:" not in capfd.readouterr().err
        for path in files.values():
            dataset.decode(path)  # this process: not a loader worker
        assert "shown: Corrupt EXIF data" in capfd.readouterr().err


def test_the_pixel_limit_is_the_apps_whatever_pillows_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header's size is checked against :data:`MAX_PIXELS` per file; Pillow's own limit is the host's (here
    switched off, as a host may do) and is left as it is."""
    write_bombs(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    for name in BOMBS:
        with pytest.raises(Image.DecompressionBombError, match=f"exceeds limit of {MAX_PIXELS} pixels: a decompression"):
            load_rgb(tmp_path / name)
    assert Image.MAX_IMAGE_PIXELS is None


def test_other_threads_keep_their_pillow_and_libtiff_messages(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """While this thread reads images, what another thread's Pillow logs and libtiff reports goes where it would go
    without the app (libtiff's default handler prints on stderr; a log record reaches the root's handlers), and
    none of it is taken for this thread's file."""
    write_pixel_bad_files(tmp_path)
    libtiff = images._libtiff_errors()
    assert libtiff is not None  # Pillow's libtiff is reachable (Linux and macOS wheels link it as a shared library)

    def other_thread() -> None:
        with Image.open(tmp_path / "tiff_corrupt_fax.tif") as img:
            img.load()  # plain Pillow, not the app: libtiff complains on stderr
        logging.getLogger("PIL.SomePlugin").warning("a record of another thread")

    ours_tiff, ours_log = libtiff.messages.start(), images._PILLOW_LOG.messages.start()
    try:
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    finally:
        images._PILLOW_LOG.messages.stop()
        libtiff.messages.stop()
    assert ours_tiff == [] and ours_log == []
    assert "Fax4Decode: Bad code word" in capfd.readouterr().err
    assert "a record of another thread" in caplog.text
    with pytest.raises(OSError, match=r"corrupt TIFF data \(libtiff: Fax4Decode"):  # this thread's file, its reason
        load_rgb(tmp_path / "tiff_corrupt_fax.tif")
    assert "Fax4Decode" not in capfd.readouterr().err
