"""The training pipeline: class folders and label files, decoding, transforms, datasets, samplers and the DataModule.

The DataModule and transforms need torch and Lightning; they are imported on first use, so the folder and
label-file readers (used by ``lit-convnext doctor``) start without them.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ImageFolderDataModule": "lit_convnext.data.datamodule",
    "TrainAugmentation": "lit_convnext.data.transforms",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
