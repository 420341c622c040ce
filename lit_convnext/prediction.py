"""Stream predictions to CSV or JSON Lines, one row per image, as batches finish."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import IO, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    """Write each image's top-k class names and probabilities as soon as its batch is predicted.

    Nothing is accumulated in memory. The format follows the file name: ``.jsonl`` writes JSON Lines,
    anything else CSV with columns ``path, class_1, probability_1, ..., class_k, probability_k, error``.
    A file that could not be read gets a row with empty classes and the reason in ``error`` (JSON: ``top_k``
    empty, ``error`` set; ``error`` is empty / ``null`` for every other file).
    """

    def __init__(self, output: Path, top_k: int = 5) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.top_k = top_k
        self.rows = 0
        self._handle: IO[str] | None = None
        self._csv: Any = None

    @property
    def is_jsonl(self) -> bool:
        return self.output.suffix.lower() == ".jsonl"

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.output.open("w", newline="", encoding="utf-8")
        self.rows = 0
        k = self._k(pl_module)
        if not self.is_jsonl:
            self._csv = csv.writer(self._handle)
            header = ["path"]
            for rank in range(1, k + 1):
                header += [f"class_{rank}", f"probability_{rank}"]
            self._csv.writerow(header + ["error"])

    def _k(self, pl_module: pl.LightningModule) -> int:
        return max(1, min(self.top_k, len(pl_module.class_names)))

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict[str, torch.Tensor],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        assert self._handle is not None
        names = pl_module.class_names
        dataset = trainer.predict_dataloaders.dataset
        probabilities, classes = prediction["probabilities"].topk(self._k(pl_module), dim=-1)
        indices = prediction["indices"].tolist()
        errors = prediction.get("errors") or [""] * len(indices)
        for index, probs, ids, error in zip(indices, probabilities.tolist(), classes.tolist(), errors):
            path = str(dataset.paths[index])
            if error:
                probs, ids = [], []
            if self.is_jsonl:
                record = {"path": path, "top_k": [{"class": names[c], "probability": round(p, 6)} for c, p in zip(ids, probs)],
                          "error": error or None}
                self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                row: list[Any] = [path]
                for c, p in zip(ids, probs):
                    row += [names[c], f"{p:.6f}"]
                if error:
                    row += [""] * (2 * self._k(pl_module))
                self._csv.writerow(row + [error])
            self.rows += 1
        self._handle.flush()

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
