"""Map-style datasets over lists of image files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from lit_convnext.data.images import load_rgb
from lit_convnext.errors import UserError

Transform = Callable[[Image.Image], torch.Tensor]


def read_image(path: Path, min_size: int | None = None) -> Image.Image:
    """``load_rgb`` with an error that names the file."""
    try:
        return load_rgb(path, min_size)
    except (OSError, ValueError, SyntaxError) as err:
        raise UserError(f"cannot read image {path}: {err}; fix or remove the file") from err


class LabeledImages(Dataset):
    """Images with integer class targets, or multi-hot rows (multi-label): yields ``(image_tensor, target)``."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[int] | torch.Tensor, transform: Transform,
                 decode_min_size: int | None = None) -> None:
        if len(paths) != len(targets):
            raise ValueError("paths and targets differ in length")
        self.paths = list(paths)
        self.targets = targets if isinstance(targets, torch.Tensor) else list(targets)
        self.transform = transform
        self.decode_min_size = decode_min_size  # see ``load_rgb``: reduced-size JPEG decoding

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        return self.transform(read_image(self.paths[index], self.decode_min_size)), self.targets[index]


class UnlabeledImages(Dataset):
    """Images to predict: yields ``(image_tensor, index, error)``; the index maps back to ``paths``.

    An unreadable file does not stop a prediction run: it yields a blank placeholder image and the
    reason in ``error`` (``""`` for a good file), and the writer reports it on that file's row.
    """

    def __init__(self, paths: Sequence[Path], transform: Transform, decode_min_size: int | None = None) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.decode_min_size = decode_min_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        try:
            return self.transform(load_rgb(self.paths[index], self.decode_min_size)), index, ""
        except (OSError, ValueError, SyntaxError) as err:
            placeholder = self.transform(Image.new("RGB", (32, 32), (0, 0, 0)))
            return placeholder, index, f"cannot read image: {err}"
