"""Keep what ``pretrained`` loaded with the run: ``pretrained_load_report.json`` in the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

LOAD_REPORT_NAME = "pretrained_load_report.json"


class PretrainedLoadReport(Callback):
    """Write the model's ``load_report`` (where the weights came from, tensors loaded, head kept or reset, missing
    keys) into the run directory when ``fit`` starts, so what a run started from can be audited later."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        report = getattr(pl_module, "load_report", None)
        if report and trainer.is_global_zero and log_dir:
            path = Path(log_dir) / LOAD_REPORT_NAME
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
