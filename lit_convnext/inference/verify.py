"""Every export checked on the user's labelled images before it is written: one table row per model.

A row holds top-1 accuracy, agreement with the checkpoint's top-1, the largest probability difference from the
checkpoint, expected calibration error, file size and images/s at batch 1 and 32 on this machine. For a multi-label
model the score is mAP (the run's validation metric) and agreement means the same set of labels above the
checkpoint's decision thresholds. The command prints the rows as one table and saves them as ``export_report.json``
beside the file.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lit_convnext.evaluation.calibration import calibration_error

#: Batch sizes images/s is measured at: one image (latency-bound serving) and 32 (throughput).
SPEED_BATCHES = (1, 32)
#: Seconds of timed runs per batch size (after one warm-up run), and at least this many runs: the median is kept.
SPEED_SECONDS = 2.0
SPEED_MIN_RUNS = 3
#: Name of the report beside the exported file.
REPORT_NAME = "export_report.json"


@dataclass
class Row:
    """One model's results on the check images."""

    model: str
    #: Top-1 accuracy in % (NaN for a multi-label model, whose score is ``map``).
    top1: float
    #: % of images whose prediction is the checkpoint's: the top class, or (multi-label) the set of labels at or
    #: above the decision thresholds.
    agreement: float
    max_prob_diff: float
    #: Expected calibration error (multi-label: over every image-class pair's sigmoid probability).
    ece: float
    size_mb: float | None
    images_per_s: dict[str, float]
    #: ``written``, ``reference`` or why the file was not written.
    verdict: str = ""
    #: Multi-label only: mean average precision over classes in %, the run's validation metric.
    map: float | None = None

    @property
    def metric(self) -> str:
        """What :attr:`score` is: ``top-1`` or ``mAP``."""
        return "top-1" if self.map is None else "mAP"

    @property
    def score(self) -> float:
        """The number ``--max_accuracy_drop`` is held to: top-1, or mAP for a multi-label model."""
        return self.top1 if self.map is None else self.map


def probabilities(run: Callable[[np.ndarray], np.ndarray], images: torch.Tensor, batch_size: int = 32,
                  multilabel: bool = False) -> torch.Tensor:
    """Softmax (multi-label: sigmoid) of ``run``'s logits (already temperature-scaled) over ``images``, in batches."""
    out = [torch.from_numpy(np.asarray(run(np.ascontiguousarray(images[i:i + batch_size].numpy())), np.float32))
           for i in range(0, len(images), batch_size)]
    logits = torch.cat(out)
    return logits.sigmoid() if multilabel else logits.softmax(dim=-1)


def images_per_second(run: Callable[[np.ndarray], np.ndarray], shape: tuple[int, int, int],
                      batches: tuple[int, ...] = SPEED_BATCHES, seconds: float | None = None) -> dict[str, float]:
    """Median images/s of ``run`` on random inputs at each batch size (one warm-up run first), timed for
    ``seconds`` (default :data:`SPEED_SECONDS`) and at least :data:`SPEED_MIN_RUNS` runs."""
    seconds = SPEED_SECONDS if seconds is None else seconds
    result = {}
    rng = np.random.default_rng(0)
    for batch in batches:
        x = rng.standard_normal((batch, *shape), dtype=np.float32)
        run(x)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < SPEED_MIN_RUNS or time.perf_counter() - start < seconds:
            t = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - t)
        result[f"batch_{batch}"] = batch / statistics.median(times)
    return result


def size_mb(path: Path) -> float:
    """Size on disk in MB (a folder, as a Core ML package is, counts all its files; OpenVINO's ``.xml`` counts its
    ``.bin``, which holds the weights)."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
    weights = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return (path.stat().st_size + (weights.stat().st_size if weights and weights.is_file() else 0)) / 1e6


def make_row(model: str, probs: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor,
             speed: dict[str, float], size: float | None, thresholds: list[float] | None = None) -> Row:
    """The row of a model whose probabilities on the check images are ``probs``.

    ``targets`` holds class indices, or (multi-label) one multi-hot row per image; then ``thresholds`` are the
    checkpoint's per-class decision thresholds (default 0.5 each), which decide the label sets compared.
    """
    if targets.ndim == 2:
        return _multilabel_row(model, probs, reference, targets, speed, size, thresholds)
    top1 = probs.argmax(-1)
    return Row(model=model,
               top1=100.0 * float((top1 == targets).float().mean()),
               agreement=100.0 * float((top1 == reference.argmax(-1)).float().mean()),
               max_prob_diff=float((probs - reference).abs().max()),
               ece=calibration_error(probs, targets),
               size_mb=size, images_per_s=speed)


def _multilabel_row(model: str, probs: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor,
                    speed: dict[str, float], size: float | None, thresholds: list[float] | None) -> Row:
    from torchmetrics.functional.classification import binary_calibration_error, multilabel_average_precision

    from lit_convnext.evaluation.calibration import ECE_BINS

    cut = torch.tensor(thresholds if thresholds is not None else [0.5] * probs.shape[1], dtype=probs.dtype)
    same_sets = ((probs >= cut) == (reference >= cut)).all(dim=1)
    return Row(model=model, top1=float("nan"),
               agreement=100.0 * float(same_sets.float().mean()),
               max_prob_diff=float((probs - reference).abs().max()),
               ece=float(binary_calibration_error(probs.flatten(), targets.flatten().long(), n_bins=ECE_BINS)),
               size_mb=size, images_per_s=speed,
               map=100.0 * float(multilabel_average_precision(probs, targets.long(), probs.shape[1],
                                                              average="macro")))


def table(rows: list[Row]) -> str:
    """The rows as one aligned text table."""
    head = ["model", f"{rows[0].metric} %", "agree %", "max |dp|", "ECE", "MB", "img/s b1", "img/s b32", "verdict"]
    lines = [[r.model, f"{r.score:.2f}", f"{r.agreement:.2f}", f"{r.max_prob_diff:.2g}", f"{r.ece:.4f}",
              "-" if r.size_mb is None else f"{r.size_mb:.1f}",
              *(f"{r.images_per_s.get(f'batch_{b}', float('nan')):.1f}" for b in SPEED_BATCHES), r.verdict]
             for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *lines])


def write_report(path: Path, rows: list[Row], details: dict[str, object]) -> Path:
    """``export_report.json`` beside the exported file: the rows, the check images and the machine."""
    report = {**details, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path
