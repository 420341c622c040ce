"""lit-convnext: fine-tune ConvNeXt (V1 and V2) on a folder of images with timm and PyTorch Lightning.

The public names below are imported on first use: ``import lit_convnext`` imports neither torch nor Lightning
(``lit-convnext doctor`` starts fast) and changes nothing in the importing process.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ConvNeXtClassifier": "lit_convnext.model.classifier",
    "ImageFolderDataModule": "lit_convnext.data.datamodule",
    "load_predictor": "lit_convnext.inference.predictor",
    "Predictor": "lit_convnext.inference.predictor",
    "Prediction": "lit_convnext.inference.predictor",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lit_convnext' has no attribute {name!r}")
