"""A data folder with every kind of awkward file, for the doctor, bad-file and predict tests."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lit_convnext.inference.client import post_image
from tests.helpers import write_image

#: Files that cannot be read as images at all, with a word their reason contains.
UNREADABLE = {
    "zero.jpg": "0 bytes",
    "truncated.jpg": "truncated",
    "random.png": "not an image",
    "text.jpg": "text",
}

#: Files in the wild that pass a header check and fail (or decode to garbage) only when their pixels are
#: decoded, and decompression bombs, one per format the app accepts where the format allows it.
PIXEL_BAD = {
    "bmp_palette_too_long.bmp": "palette",  # header claims 300 palette entries for 8 bits per pixel
    "tiff_corrupt_fax.tif": "libtiff",  # CCITT group 4 stream with flipped bits: libtiff complains, returns noise
    "tiff_corrupt_lzw.tif": "decoder error",
    "png_corrupt_idat.png": "broken data stream",  # valid chunk CRC around a broken zlib stream
    "gif_truncated.gif": "truncated",
    "webp_truncated.webp": "decoder",
    "ppm_truncated.ppm": "truncated",
}
HEADER_BAD = {
    "bmp_bitfields.bmp": "bitfields",  # BI_BITFIELDS on a 24-bit BMP
    "apng_bad_sequence.png": "a PNG file that Pillow cannot open",  # fcTL sequence numbers out of order
    # SamplesPerPixel 65535: Pillow logs "More samples per pixel than can be decoded" and refuses the file.
    "tiff_samples_per_pixel.tif": "More samples per pixel than can be decoded: 65535",
}
#: Files that decode, about which Pillow warns (damaged metadata or frames), with a word of the warning.
WARNED = {
    "corrupt_exif.jpg": "Corrupt EXIF data",  # an EXIF directory entry cut short
    "apng_zero_frames.png": "Invalid APNG",  # acTL says 0 frames: Pillow uses the default image
}
BOMBS = {f"bomb.{suffix}": "decompression bomb" for suffix in ("png", "jpg", "gif", "bmp", "tif", "webp", "ppm")}

#: Every file that cannot be decoded, relative to the class folder, with a word its reason contains.
BAD = {**UNREADABLE, **PIXEL_BAD, **HEADER_BAD, **BOMBS}


def _rgb(size: tuple[int, int], color: tuple[int, int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    array = np.clip(np.array(color)[None, None, :] + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255)
    return Image.fromarray(array.astype(np.uint8))


def write_bad_files(folder: Path) -> None:
    """The undecodable files of :data:`BAD`."""
    folder.mkdir(parents=True, exist_ok=True)
    write_pixel_bad_files(folder)
    write_bombs(folder)
    (folder / "zero.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    _rgb((64, 64), (200, 50, 50), 1).save(buffer, "JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "random.png").write_bytes(np.random.default_rng(0).bytes(2000))
    (folder / "text.jpg").write_text("this is not a picture\n", encoding="utf-8")


def _png_chunks(data: bytes) -> list[tuple[int, int, bytes]]:
    """``(offset, length, type)`` of each chunk."""
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        chunks.append((offset, length, bytes(data[offset + 4 : offset + 8])))
        offset += 12 + length
    return chunks


def _fix_png_crc(data: bytearray, offset: int) -> None:
    (length,) = struct.unpack_from(">I", data, offset)
    struct.pack_into(">I", data, offset + 8 + length, zlib.crc32(data[offset + 4 : offset + 8 + length]))


def _encoded(img: Image.Image, fmt: str, **kwargs) -> bytearray:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return bytearray(buffer.getvalue())


def write_pixel_bad_files(folder: Path) -> None:
    """The files of :data:`PIXEL_BAD` and :data:`HEADER_BAD`, made by byte-level edits of valid files."""
    folder.mkdir(parents=True, exist_ok=True)
    base = _rgb((48, 48), (200, 50, 50), 3)
    palette = _encoded(base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "BMP")
    struct.pack_into("<I", palette, 46, 300)  # biClrUsed
    (folder / "bmp_palette_too_long.bmp").write_bytes(palette)
    bitfields = _encoded(base, "BMP")
    struct.pack_into("<I", bitfields, 30, 3)  # biCompression = BI_BITFIELDS
    (folder / "bmp_bitfields.bmp").write_bytes(bitfields)
    fax = _encoded(base.convert("1"), "TIFF", compression="group4")
    for i in range(8, len(fax) - 200):  # the strip comes first, the directory last
        fax[i] ^= 0x5A
    (folder / "tiff_corrupt_fax.tif").write_bytes(fax)
    lzw = _encoded(base, "TIFF", compression="tiff_lzw")
    lzw[20:400] = b"\xff" * 380
    (folder / "tiff_corrupt_lzw.tif").write_bytes(lzw)
    png = _encoded(base, "PNG")
    offset = next(o for o, _, kind in _png_chunks(png) if kind == b"IDAT")
    for i in range(offset + 28, offset + 68):
        png[i] ^= 0xFF
    _fix_png_crc(png, offset)
    (folder / "png_corrupt_idat.png").write_bytes(png)
    frames = [_rgb((48, 48), (200, 50, 50), s) for s in range(3)]
    apng = _encoded(frames[0], "PNG", save_all=True, append_images=frames[1:])
    for offset, _, kind in _png_chunks(apng):
        if kind == b"fcTL":
            struct.pack_into(">I", apng, offset + 8, 7)
            _fix_png_crc(apng, offset)
    (folder / "apng_bad_sequence.png").write_bytes(apng)
    tiff = _encoded(base, "TIFF")
    entry = tiff.index(struct.pack("<HHIH", 277, 3, 1, 3))  # SamplesPerPixel, SHORT, 1 value: 3
    struct.pack_into("<H", tiff, entry + 8, 65535)
    (folder / "tiff_samples_per_pixel.tif").write_bytes(tiff)
    for name, fmt in (("gif_truncated.gif", "GIF"), ("webp_truncated.webp", "WEBP"), ("ppm_truncated.ppm", "PPM")):
        data = _encoded(base, fmt)
        (folder / name).write_bytes(data[: len(data) * 2 // 3])


def write_bombs(folder: Path) -> None:
    """:data:`BOMBS`: tiny files whose headers declare 20000 x 20000 pixels (400 MP, above the limit)."""
    folder.mkdir(parents=True, exist_ok=True)
    side = 20000
    small = _rgb((16, 16), (50, 50, 200), 4)
    png = _encoded(small, "PNG")
    struct.pack_into(">II", png, 16, side, side)
    _fix_png_crc(png, 8)
    (folder / "bomb.png").write_bytes(png)
    jpeg = _encoded(small, "JPEG")
    sof = jpeg.index(b"\xff\xc0")
    struct.pack_into(">HH", jpeg, sof + 5, side, side)
    (folder / "bomb.jpg").write_bytes(jpeg)
    gif = _encoded(small, "GIF")
    struct.pack_into("<HH", gif, 6, side, side)  # logical screen
    (folder / "bomb.gif").write_bytes(gif)
    bmp = _encoded(small, "BMP")
    struct.pack_into("<ii", bmp, 18, side, side)
    (folder / "bomb.bmp").write_bytes(bmp)
    (folder / "bomb.tif").write_bytes(_encoded(Image.new("1", (side, 7600)), "TIFF", compression="group4"))
    webp = _encoded(small, "WEBP", lossless=True)  # VP8L: 14-bit width-1 and height-1 after the signature byte
    bits = (16383 - 1) | ((16383 - 1) << 14)
    webp[21:25] = struct.pack("<I", (struct.unpack("<I", bytes(webp[21:25]))[0] & ~0x0FFFFFFF) | bits)
    (folder / "bomb.webp").write_bytes(webp)
    (folder / "bomb.ppm").write_bytes(f"P6 {side} {side} 255\n".encode() + bytes(300))


def write_awkward_files(folder: Path, color: tuple[int, int, int] = (220, 30, 30)) -> dict[str, Path]:
    """Decodable files that need care (conversions, rotation, frames, names); returns them by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    base = _rgb((48, 48), color, 7)
    files: dict[str, Path] = {}

    def save(kind: str, name: str, img: Image.Image, **kwargs) -> None:
        files[kind] = folder / name
        img.save(files[kind], **kwargs)

    save("jpeg_as_png", "really_a_jpeg.png", base, format="JPEG")
    save("cmyk", "cmyk.jpg", base.convert("CMYK"))
    gray16 = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    save("gray16", "gray16.png", gray16)
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette_alpha", "palette_alpha.png", palette, transparency=0)
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    save("rgba", "rgba.png", rgba)
    save("one_bit", "one_bit.png", base.convert("1"))
    # Stored 64 wide x 32 high with orientation 6 (rotate 90 degrees): upright it is 32 x 64.
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif_rotated", "exif_rotated.jpg", _rgb((64, 32), color, 8), exif=exif)
    frames = [_rgb((48, 48), color, s) for s in range(3)]
    save("animated_gif", "animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=50, loop=0)
    save("multipage_tiff", "multipage.tiff", frames[0], save_all=True, append_images=frames[1:])
    save("webp", "picture.webp", base, format="WEBP")
    save("upper_case", "UPPER.JPG", _rgb((48, 48), color, 9), format="JPEG")
    save("unicode", "chat é 猫 photo.png", base)
    files.update(write_warned_files(folder, color))
    (folder / ".hidden.png").write_bytes(b"hidden files are ignored")
    (folder / "notes.txt").write_text("not an image", encoding="utf-8")
    return files


def write_warned_files(folder: Path, color: tuple[int, int, int] = (220, 30, 30)) -> dict[str, Path]:
    """The files of :data:`WARNED`, by kind: they decode, and Pillow warns while opening them."""
    folder.mkdir(parents=True, exist_ok=True)
    exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x02\x00\x12\x01\x03\x00\x01\x00"  # 2 entries, 6 bytes of one
    (folder / "corrupt_exif.jpg").write_bytes(_encoded(_rgb((48, 48), color, 10), "JPEG", exif=exif))
    frames = [_rgb((48, 48), color, s) for s in range(11, 13)]
    apng = _encoded(frames[0], "PNG", save_all=True, append_images=frames[1:])
    offset = next(o for o, _, kind in _png_chunks(apng) if kind == b"acTL")
    struct.pack_into(">I", apng, offset + 8, 0)  # num_frames
    _fix_png_crc(apng, offset)
    (folder / "apng_zero_frames.png").write_bytes(apng)
    return {"corrupt_exif": folder / "corrupt_exif.jpg", "apng_zero_frames": folder / "apng_zero_frames.png"}


def build_corpus(root: Path, structural_problems: bool = True) -> dict[str, Path]:
    """``root/train`` and ``root/val`` with two colour classes, bad and awkward files in ``train/red``.

    ``structural_problems`` adds an empty class folder, a class only in val and a train/val duplicate.
    """
    for split, n, seed in (("train", 6, 0), ("val", 3, 500)):
        for c, (name, color) in enumerate({"red": (220, 30, 30), "blue": (30, 40, 220)}.items()):
            for i in range(n):
                write_image(root / split / name / f"img{i}.png", color, seed=seed + 100 * c + i)
    write_bad_files(root / "train" / "red")
    files = write_awkward_files(root / "train" / "red")
    if structural_problems:
        (root / "train" / "empty_class").mkdir()
        write_image(root / "val" / "only_in_val" / "img0.png", (30, 200, 40))
        shutil.copy(root / "train" / "blue" / "img0.png", root / "val" / "blue" / "copy of train.png")
    return files


def header_only(data: bytes | bytearray, width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` around the small picture ``data`` (CRC fixed)."""
    png = bytearray(data)
    struct.pack_into(">II", png, 16, width, height)
    _fix_png_crc(png, 8)
    return bytes(png)


def bad_uploads(good_jpeg: bytes) -> dict[str, tuple[bytes | None, str, int, str]]:
    """What clients get wrong when they upload to ``serve``, by kind: ``(body, field, status, detail fragment)``.

    ``body`` None is a POST with no body at all; the statuses assume the server's default limits or tighter ones
    down to ``--max_megapixels 1``; ``good_jpeg`` (a real photo, at least a few kB) is cut and mislabelled.
    """
    small = _rgb((16, 16), (50, 50, 200), 4)
    bomb = _encoded(small, "JPEG")  # 20000 x 20000 in its header, as write_bombs' bomb.jpg
    sof = bomb.index(b"\xff\xc0")
    struct.pack_into(">HH", bomb, sof + 5, 20000, 20000)
    return {
        "not an image": (b"plain text, not an image", "image", 400, "not an image file"),
        "truncated JPEG": (good_jpeg[: len(good_jpeg) // 2], "image", 400, "not a readable image"),
        "huge dimensions": (header_only(_encoded(small, "PNG"), 7000, 7000), "image", 413,
                            "7000x7000 = 49000000 pixels"),
        "decompression bomb": (bytes(bomb), "image", 413, "decompression bomb"),
        "empty file": (b"", "image", 400, "not an image file"),
        "empty body": (None, "image", 400, "multipart/form-data file field named 'image'"),
        "wrong field": (good_jpeg, "file", 400, "field named 'image'"),
    }


def send_upload(url: str, body: bytes | None, field: str = "image", timeout: float = 60.0) -> tuple[int, Any]:
    """POST one of :func:`bad_uploads` (or a good image): the HTTP status and the JSON answer."""
    if body is not None:
        return post_image(url, body, field=field, timeout=timeout)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, b"", method="POST"), timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


#: The line each model worker of ``lit-convnext serve`` logs when it is ready (its pid: a replaced worker has another).
READY = re.compile(r"model worker ready on \S+ \(pid (\d+)\)")


def health(url: str) -> int | str:
    """``/health``'s status code, or the name of the error when nothing answered."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError as err:
        return type(err).__name__
