"""Old module paths, kept importable so ``config.yaml`` files saved by earlier versions still run.

Saved run configs name classes by import path (``class_path: lit_convnext.ema.EMA``). The modules moved
into ``callbacks/``, ``commands/`` and ``data/``; this finder maps each old name to its new module on
first import, lazily, so nothing heavy is imported until an old path is actually used.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any

#: old module -> new module
MOVED: dict[str, str] = {
    "lit_convnext.ema": "lit_convnext.callbacks.ema",
    "lit_convnext.checkpointing": "lit_convnext.callbacks.checkpointing",
    "lit_convnext.resume": "lit_convnext.callbacks.checkpointing",
    "lit_convnext.class_report": "lit_convnext.callbacks.class_report",
    "lit_convnext.data_wait": "lit_convnext.callbacks.data_wait",
    "lit_convnext.progress": "lit_convnext.callbacks.progress",
    "lit_convnext.guards": "lit_convnext.callbacks.loss_guard",
    "lit_convnext.prediction": "lit_convnext.callbacks.prediction_writer",
    "lit_convnext.distributed": "lit_convnext.data.samplers",
    "lit_convnext.imbalance": "lit_convnext.losses",
    "lit_convnext.export": "lit_convnext.commands.export",
    "lit_convnext.doctor_report": "lit_convnext.commands.doctor_tables",
    "lit_convnext.data.doctor": "lit_convnext.data.scan",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: Any) -> ModuleType:
        return importlib.import_module(self.target)  # the new module itself, under the old name too

    def exec_module(self, module: ModuleType) -> None:
        pass


class _LegacyFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(MOVED[fullname]))


def install_legacy_module_aliases() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, _LegacyFinder) for finder in sys.meta_path):
        sys.meta_path.append(_LegacyFinder())
