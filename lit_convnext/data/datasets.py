"""Map-style datasets over lists of image files.

The loader is the last guard against files that cannot be decoded: the check before training can miss a
file that changed on disk afterwards, and one such file must not cost the run. Each failure is appended to
the run directory's bad-file list; then the run either carries on without the file (``skip_bad_files``)
or stops with one line naming it, leaving the last checkpoint intact for ``--ckpt_path last``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from lit_convnext.data.bad_files import append_bad_files
from lit_convnext.data.images import failure_reason, load_rgb
from lit_convnext.errors import UserError
from lit_convnext.terminal import hide_pillow_file_warnings

log = logging.getLogger(__name__)

Transform = Callable[[Image.Image], torch.Tensor]

_worker_quiet = False


def decode_error(path: Path, min_size: int | None = None) -> tuple[Image.Image | None, str]:
    """``(image, "")`` or ``(None, reason)``: any exception while decoding makes the file a bad file."""
    global _worker_quiet
    if not _worker_quiet and get_worker_info() is not None:
        # A loader worker started by spawn or forkserver does not inherit the command's warning filters.
        hide_pillow_file_warnings()
        _worker_quiet = True
    try:
        return load_rgb(path, min_size), ""
    except Exception as err:  # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError, struct.error, ...
        return None, failure_reason(err)


class LabeledImages(Dataset):
    """Images with integer class targets, or multi-hot rows (multi-label): yields ``(image_tensor, target)``.

    Args:
        skip_bad: A file that cannot be decoded is replaced by the next readable one (the batch keeps its
            size) instead of stopping the run.
        bad_file_list: Where such files are listed (the run directory's ``bad_files.csv``); ``None``: nowhere.
    """

    def __init__(self, paths: Sequence[Path], targets: Sequence[int] | torch.Tensor, transform: Transform,
                 decode_min_size: int | None = None, skip_bad: bool = False,
                 bad_file_list: Path | None = None) -> None:
        if len(paths) != len(targets):
            raise ValueError("paths and targets differ in length")
        self.paths = list(paths)
        self.targets = targets if isinstance(targets, torch.Tensor) else list(targets)
        self.transform = transform
        self.decode_min_size = decode_min_size  # see ``load_rgb``: reduced-size JPEG decoding
        self.skip_bad = skip_bad
        self.bad_file_list = bad_file_list

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        for offset in range(len(self.paths)):
            candidate = (index + offset) % len(self.paths)
            image, reason = decode_error(self.paths[candidate], self.decode_min_size)
            if image is not None:
                return self.transform(image), self.targets[candidate]
            path = self.paths[candidate]
            append_bad_files(self.bad_file_list, [(str(path), reason)], "while loading")
            if not self.skip_bad:
                raise UserError(
                    f"cannot read image {path} ({reason}): fix or remove the file, then continue from the last "
                    "checkpoint with --ckpt_path last; or pass --data.skip_bad_files true to leave such files out"
                )
            log.warning("skipping %s, which cannot be read now (%s)", path, reason)
        raise UserError(f"no image of this split can be read (the first is {self.paths[index]})")


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
        image, reason = decode_error(self.paths[index], self.decode_min_size)
        if image is None:
            placeholder = self.transform(Image.new("RGB", (32, 32), (0, 0, 0)))
            return placeholder, index, f"cannot read image: {reason}"
        return self.transform(image), index, ""
