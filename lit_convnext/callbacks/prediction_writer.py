"""Stream predictions to CSV or JSON Lines, one row per image, as batches finish.

Rows are written one batch behind: a batch's top-k starts its copy to the host, then the previous
batch's rows are formatted, so on a GPU formatting (about 2 ms per 256 images) overlaps the next
batch's compute instead of leaving the accelerator idle.

Under several processes (DDP) each rank streams its rows to a part file tagged with the images'
dataset indices; after a barrier rank 0 merges the parts into the one output file, in dataset order.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    """Write each image's top-k class names and probabilities as soon as its batch is predicted.

    Nothing is accumulated in memory. The format follows the file name: ``.jsonl`` writes JSON Lines,
    anything else CSV with columns ``path, class_1, probability_1, ..., class_k, probability_k``.
    Multi-label models write ``path, labels`` (the classes at or above their thresholds, joined by
    ``separator``), then ``prob_<class>`` for every class (top-k pairs beyond ``MAX_CLASS_COLUMNS`` classes).
    Single-label rows get ``uncertain`` (before ``error``) when ``min_confidence`` is set: the top probability is
    below it.
    """

    #: Multi-label: more classes than this get top-k pairs instead of one probability column per class.
    MAX_CLASS_COLUMNS = 50

    def __init__(self, output: Path, top_k: int = 5, separator: str = ";", min_confidence: float = 0.0) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.top_k = top_k
        self.separator = separator
        self.min_confidence = min_confidence
        self.rows = 0
        self.unreadable = 0  # rows with an error instead of classes (files that could not be decoded)
        self._handle: IO[str] | None = None
        self._parts: list[Path] = []
        self._columns = top_k
        self._class_columns = False  # multi-label: one probability column per class, in class order
        self._uncertain_column = False  # single-label with min_confidence
        self._pending: _PendingRows | None = None

    @property
    def is_jsonl(self) -> bool:
        return self.output.suffix.lower() == ".jsonl"

    def _part(self, rank: int) -> Path:
        return self.output.with_name(f".{self.output.name}.part{rank}")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.rows = self.unreadable = 0
        self._parts = [self._part(rank) for rank in range(trainer.world_size)] if trainer.world_size > 1 else []
        if self._parts:  # rows go to this rank's part file: ``index<TAB>error flag<TAB>json-encoded row``
            self._handle = self._parts[trainer.global_rank].open("w", encoding="utf-8")
            return
        self._handle = self.output.open("w", newline="", encoding="utf-8")
        self._write_header(self._handle, pl_module)

    def _write_header(self, handle: IO[str], pl_module: pl.LightningModule) -> None:
        if self.is_jsonl:
            return
        header = ["path"]
        if getattr(pl_module, "multilabel", False):
            header.append("labels")
            if self._per_class(pl_module):
                self._k(pl_module)
                csv.writer(handle).writerow(header + [f"prob_{name}" for name in pl_module.class_names] + ["error"])
                return
        for rank in range(1, self._k(pl_module) + 1):
            header += [f"class_{rank}", f"probability_{rank}"]
        uncertain = ["uncertain"] if self._marks_uncertain(pl_module) else []
        csv.writer(handle).writerow(header + uncertain + ["error"])

    def _per_class(self, pl_module: pl.LightningModule) -> bool:
        """Multi-label rows with one probability per class (in class order) instead of top-k pairs."""
        return getattr(pl_module, "multilabel", False) and len(pl_module.class_names) <= self.MAX_CLASS_COLUMNS

    def _marks_uncertain(self, pl_module: pl.LightningModule) -> bool:
        """Single-label rows say whether the top probability is below ``min_confidence``."""
        return self.min_confidence > 0 and not getattr(pl_module, "multilabel", False)

    def _k(self, pl_module: pl.LightningModule) -> int:
        n = len(pl_module.class_names)
        self._class_columns = self._per_class(pl_module)
        self._uncertain_column = self._marks_uncertain(pl_module)
        self._columns = n if self._class_columns else max(1, min(self.top_k, n))
        return self._columns

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
        # Start copying this batch's top-k to the host, then write the previous batch's rows: on a GPU
        # the host formats rows while the accelerator computes, instead of waiting for every batch.
        probabilities = prediction["probabilities"]
        multilabel = getattr(pl_module, "multilabel", False)
        hits = pl_module.decide(probabilities).to("cpu", non_blocking=True) if multilabel else None
        if self._per_class(pl_module):  # every class, in class order
            k = self._k(pl_module)
            classes = torch.arange(k, device=probabilities.device).expand(len(probabilities), k)
        else:
            probabilities, classes = probabilities.topk(self._k(pl_module), dim=-1)
        pending = _PendingRows(
            prediction["indices"].to("cpu", non_blocking=True),
            probabilities.to("cpu", non_blocking=True),
            classes.to("cpu", non_blocking=True),
            prediction.get("errors"),
            _copies_done(probabilities.device),
            hits,
        )
        self._write_pending(trainer, pl_module)
        self._pending = pending

    def _write_pending(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        assert self._handle is not None
        if pending.copied is not None:
            pending.copied.synchronize()
        names = pl_module.class_names
        dataset = trainer.predict_dataloaders.dataset
        indices = pending.indices.tolist()
        errors = pending.errors or [""] * len(indices)  # unreadable files get an error, no classes
        hits = pending.hits.tolist() if pending.hits is not None else [None] * len(indices)
        for index, probs, ids, error, hit in zip(indices, pending.probabilities.tolist(), pending.classes.tolist(),
                                                 errors, hits):
            classes_k = [] if error else [names[c] for c in ids]
            labels = None if hit is None else [] if error else [name for name, on in zip(names, hit) if on]
            line = self._format(str(dataset.paths[index]), classes_k, [] if error else probs, error, labels)
            self._handle.write(f"{index}\t{int(bool(error))}\t{json.dumps(line)}\n" if self._parts else line)
            self.rows += 1
            self.unreadable += bool(error)
        self._handle.flush()

    def _format(self, path: str, classes: list[str], probs: list[float], error: str,
                labels: list[str] | None = None) -> str:
        # Single-label with min_confidence: is the top probability below it? (None: no such column)
        uncertain = (bool(probs) and probs[0] < self.min_confidence) if self._uncertain_column else None
        if self.is_jsonl:
            record: dict[str, Any] = {"path": path}
            if labels is not None:
                record["labels"] = labels
            if self._class_columns:
                record["probabilities"] = {c: round(p, 6) for c, p in zip(classes, probs)}
            else:
                record["top_k"] = [{"class": c, "probability": round(p, 6)} for c, p in zip(classes, probs)]
            if uncertain is not None:
                record["uncertain"] = uncertain
            record["error"] = error or None
            return json.dumps(record, ensure_ascii=False) + "\n"
        row: list[Any] = [path]
        if labels is not None:
            row.append(self.separator.join(labels))
        if self._class_columns:
            row += [f"{p:.6f}" for p in probs] + [""] * (self._columns - len(probs))
        else:
            for c, p in zip(classes, probs):
                row += [c, f"{p:.6f}"]
            row += [""] * (2 * (self._columns - len(classes)))
        if uncertain is not None:
            row.append("" if error else str(uncertain).lower())
        row.append(error)
        buffer = io.StringIO(newline="")
        csv.writer(buffer).writerow(row)
        return buffer.getvalue()

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_pending(trainer, pl_module)
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._parts:
            trainer.strategy.barrier("PredictionWriter.merge")
            if trainer.is_global_zero:
                self._merge(pl_module)
            trainer.strategy.barrier("PredictionWriter.merged")

    def _merge(self, pl_module: pl.LightningModule) -> None:
        """Merge the ranks' part files (each already in index order) into ``output`` by dataset index."""
        handles = [part.open(encoding="utf-8") for part in self._parts]
        try:
            rows = [_indexed_rows(handle) for handle in handles]
            with self.output.open("w", newline="", encoding="utf-8") as out:
                self._write_header(out, pl_module)
                self.rows = self.unreadable = 0
                for _, error, line in heapq.merge(*rows, key=lambda row: row[0]):
                    out.write(line)
                    self.rows += 1
                    self.unreadable += error
        finally:
            for handle in handles:
                handle.close()
        for part in self._parts:
            part.unlink()


class _PendingRows(NamedTuple):
    """One batch's top-k on its way to the host (``copied`` is the CUDA event to wait for, if any)."""

    indices: torch.Tensor
    probabilities: torch.Tensor
    classes: torch.Tensor
    errors: list[str] | None
    copied: torch.cuda.Event | None
    hits: torch.Tensor | None = None  # multi-label: which classes are at or above their thresholds


def _copies_done(device: torch.device) -> torch.cuda.Event | None:
    """An event recorded after the non-blocking device-to-host copies just queued (``None`` off CUDA)."""
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record()
    return event


def _indexed_rows(handle: IO[str]) -> Iterator[tuple[int, int, str]]:
    for line in handle:
        index, error, row = line.rstrip("\n").split("\t", 2)
        yield int(index), int(error), json.loads(row)
