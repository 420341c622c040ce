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

from lit_convnext.checks.bad_files import FOUND_WHILE_LOADING, append_bad_files, found_while_loading_since, listing_size
from lit_convnext.data.images import failure_reason, hide_pillow_file_warnings, load_rgb
from lit_convnext.errors import UserError

log = logging.getLogger(__name__)

#: The target of a stand-in in a validation or test batch (every class of a multi-hot row): under
#: ``skip_bad_files`` a file that cannot be read there is replaced by a readable one, so the batch keeps its rows
#: in dataset order, and the row is left out of every metric and per-image result (see :func:`measured_rows`).
STAND_IN = -1

Transform = Callable[[Image.Image], torch.Tensor]


def decode_error(path: Path, min_size: int | None = None) -> tuple[Image.Image | None, str]:
    """``(image, "")`` or ``(None, reason)``: any exception while decoding makes the file a bad file."""
    try:
        return load_rgb(path, min_size), ""
    except Exception as err:  # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError, struct.error, ...
        return None, failure_reason(err)


def measured_rows(targets: torch.Tensor) -> torch.Tensor:
    """Which rows of an evaluation batch's targets belong to images that were read (not :data:`STAND_IN`)."""
    return targets >= 0 if targets.ndim == 1 else targets[:, 0] >= 0


class _ImageFiles(Dataset):
    """What both datasets share: a file decoded as every command decodes it (:func:`decode_error`), and Pillow's
    warnings about files that still decode left out of a loader worker's output
    (:func:`lit_convnext.data.images.hide_pillow_file_warnings`).

    A worker is a process of the loader's own; one started by spawn or forkserver does not inherit the command's
    warning filters, so the worker sets the filter itself, once, noted in its own copy of the dataset (not in a
    ``worker_init_fn``: Lightning seeds the workers through that one when the loader leaves it free).
    """

    decode_min_size: int | None = None
    _worker_quiet = False

    def decode(self, path: Path) -> tuple[Image.Image | None, str]:
        """:func:`decode_error` of ``path`` at this dataset's ``decode_min_size``."""
        if not self._worker_quiet and get_worker_info() is not None:
            hide_pillow_file_warnings()
            self._worker_quiet = True
        return decode_error(path, self.decode_min_size)


class LabeledImages(_ImageFiles):
    """Images with integer class targets, or multi-hot rows (multi-label): yields ``(image_tensor, target)``.

    Args:
        skip_bad: A file that cannot be decoded is replaced by the next readable one (the batch keeps its
            size) instead of stopping the run.
        bad_file_list: Where such files are listed (the run directory's ``bad_files.csv``); ``None``: nowhere.
        evaluation: Validation or test: a stand-in gets the target :data:`STAND_IN`, so the file is measured by
            nobody instead of its replacement twice (training keeps the replacement's own target).
    """

    def __init__(self, paths: Sequence[Path], targets: Sequence[int] | torch.Tensor, transform: Transform,
                 decode_min_size: int | None = None, skip_bad: bool = False,
                 bad_file_list: Path | None = None, evaluation: bool = False) -> None:
        if len(paths) != len(targets):
            raise ValueError("paths and targets differ in length")
        self.paths = list(paths)
        self.targets = targets if isinstance(targets, torch.Tensor) else list(targets)
        self.transform = transform
        self.decode_min_size = decode_min_size  # see ``load_rgb``: reduced-size JPEG decoding
        self.skip_bad = skip_bad
        self.bad_file_list = bad_file_list
        self.evaluation = evaluation
        self._reported: set[str] = set()  # unreadable files named by this command (any of its processes)
        self._listed_from = listing_size(bad_file_list)  # the bad-file list read up to here (a resume appends)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        for offset in range(len(self.paths)):
            candidate = (index + offset) % len(self.paths)
            image, reason = self.decode(self.paths[candidate])
            if image is not None:
                target = self.targets[candidate]
                if offset and self.evaluation:
                    target = torch.full_like(target, STAND_IN) if isinstance(target, torch.Tensor) else STAND_IN
                return self.transform(image), target
            self._report(self.paths[candidate], reason)
        raise UserError(f"no image of this split can be read (the first is {self.paths[index]})")

    def _report(self, path: Path, reason: str) -> None:
        """List a file that failed while loading in the run's bad-file list, then stop or name it once."""
        listed, self._listed_from = found_while_loading_since(self.bad_file_list, self._listed_from)
        self._reported |= listed  # named by another loader process, or in an earlier epoch
        first = str(path) not in self._reported
        self._reported.add(str(path))
        if first or not self.skip_bad:  # other processes (loader workers, later epochs) may have listed it
            append_bad_files(self.bad_file_list, [(str(path), reason)], FOUND_WHILE_LOADING)
        if not self.skip_bad:
            raise UserError(
                f"cannot read image {path} ({reason}): fix or remove the file, then continue from the last "
                "checkpoint with --ckpt_path last; or pass --data.skip_bad_files true to leave such files out"
            )
        if first:
            log.warning("skipping %s, which cannot be read now (%s)", path, reason)


class UnlabeledImages(_ImageFiles):
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
        image, reason = self.decode(self.paths[index])
        if image is None:
            placeholder = self.transform(Image.new("RGB", (32, 32), (0, 0, 0)))
            return placeholder, index, f"cannot read image: {reason}"
        return self.transform(image), index, ""
