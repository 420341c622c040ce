"""A data folder with every kind of awkward file, for the doctor, bad-file and predict tests."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import write_image

#: Files that cannot be decoded, relative to the class folder, with a word their reason contains.
BAD = {
    "zero.jpg": "0 bytes",
    "truncated.jpg": "truncated",
    "random.png": "not an image",
    "text.jpg": "text",
}


def _rgb(size: tuple[int, int], color: tuple[int, int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    array = np.clip(np.array(color)[None, None, :] + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255)
    return Image.fromarray(array.astype(np.uint8))


def write_bad_files(folder: Path) -> None:
    """The undecodable files of :data:`BAD`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    _rgb((64, 64), (200, 50, 50), 1).save(buffer, "JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "random.png").write_bytes(np.random.default_rng(0).bytes(2000))
    (folder / "text.jpg").write_text("this is not a picture\n", encoding="utf-8")


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
    (folder / ".hidden.png").write_bytes(b"hidden files are ignored")
    (folder / "notes.txt").write_text("not an image", encoding="utf-8")
    return files


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
