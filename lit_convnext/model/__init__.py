"""The LightningModule (``classifier``) and what only it uses: the timm network (``backbone``), the optimizer and
schedule (``optim``), the losses, the metric objects (``metrics``), the post-processing it shares with the ONNX
model (``postprocess``), the training-step bookkeeping (``tally``) and the linear probe's backbone, freezing and
cached features (``linear_probe``).

Imported on first use, so ``lit_convnext.model`` costs nothing until the classifier is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"ConvNeXtClassifier": "lit_convnext.model.classifier"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
