"""lit-convnext: fine-tune ConvNeXt (V1 and V2) on a folder of images with timm and PyTorch Lightning."""

from typing import Any

from lit_convnext._legacy import install_legacy_module_aliases

__version__ = "0.1.0"

install_legacy_module_aliases()

#: Public names imported on first use: importing ``lit_convnext`` must not import torch (``doctor`` starts fast).
_LAZY = {
    "load_predictor": "lit_convnext.inference.predictor",
    "Predictor": "lit_convnext.inference.predictor",
    "Prediction": "lit_convnext.inference.predictor",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lit_convnext' has no attribute {name!r}")
