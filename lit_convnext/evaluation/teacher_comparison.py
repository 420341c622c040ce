"""Teacher and student side by side, for a fit that distils (``--model.teacher``): accuracy, agreement, size and
speed on the validation images.

The teacher is frozen, so its answers on the (unshuffled) validation images are computed once, at the fit's first
validation, together with both models' images per second on those batches; each validation then logs
``val/teacher_agreement``, the share of images on which the student's top class is the teacher's. The teacher's
answers go to ``val_teacher_predictions.csv`` and its size and speed, with the student's, to
``teacher_comparison.json``; ``report.html`` (and the summary printed when ``fit`` ends) puts them beside the best
checkpoint's ``val_predictions.csv``. The files are written by single-process fits, as the per-image results are;
under DDP the agreement is logged alone.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from lit_convnext.data.datasets import measured_rows

TEACHER_PREDICTIONS = "val_teacher_predictions.csv"
COMPARISON = "teacher_comparison.json"


class TeacherComparison(Callback):
    """Logs the student's agreement with its teacher at each validation of a distilling fit, and writes the teacher's
    answers, size and speed for the report (module docstring)."""

    def __init__(self) -> None:
        self._teacher_rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None  # per batch
        self._collecting: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._seconds = {"teacher": 0.0, "student": 0.0}
        self._timed_images = 0
        self._agree = self._seen = 0

    def _active(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        return (trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
                and getattr(pl_module, "distillation", None) is not None)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._agree = self._seen = 0

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._active(trainer, pl_module) or not isinstance(outputs, torch.Tensor):
            return
        images, targets = batch[0], batch[1]
        if self._teacher_rows is None:  # the first validation: the teacher's answers, and both models' speed
            teacher_logits = self._timed("teacher", pl_module.distillation.teacher, images, batch_idx)
            self._timed("student", pl_module, images, batch_idx)
            probabilities = teacher_logits.float().softmax(dim=-1)
            confidence, predicted = probabilities.max(dim=-1)
            self._collecting.append((predicted.cpu(), confidence.cpu(), targets.detach().cpu()))
            teacher_predicted = predicted
        else:
            teacher_predicted = self._teacher_rows[batch_idx][0].to(outputs.device)
        keep = measured_rows(targets)  # not the stand-ins of unreadable files
        agree = outputs.argmax(dim=-1)[keep] == teacher_predicted[keep]
        self._agree += int(agree.sum())
        self._seen += int(agree.numel())

    @torch.no_grad()
    def _timed(self, who: str, model: torch.nn.Module, images: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """``model(images)``, its seconds added to ``who``'s total (the first batch runs once untimed before: the
        first pass allocates and picks kernels)."""
        synchronize = torch.cuda.synchronize if images.is_cuda else (lambda: None)
        if batch_idx == 0:
            model(images)
        synchronize()
        start = time.perf_counter()
        logits = model(images)
        synchronize()
        self._seconds[who] += time.perf_counter() - start
        if who == "teacher":
            self._timed_images += len(images)
        return logits

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer, pl_module):
            return
        counts = torch.tensor([self._agree, self._seen], dtype=torch.float64, device=pl_module.device)
        agree, seen = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        if seen:
            pl_module.log("val/teacher_agreement", agree / seen, sync_dist=False)
        if self._teacher_rows is None:
            self._teacher_rows, self._collecting = self._collecting, []
            if trainer.world_size == 1:
                self._write_teacher_files(trainer, pl_module)

    def _write_teacher_files(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lit_convnext.model.distillation import parameter_count

        rows = self._teacher_rows or []
        predicted = torch.cat([r[0] for r in rows]) if rows else torch.zeros(0, dtype=torch.long)
        confidence = torch.cat([r[1] for r in rows]) if rows else torch.zeros(0)
        targets = torch.cat([r[2] for r in rows]) if rows else torch.zeros(0, dtype=torch.long)
        loader = trainer.val_dataloaders
        indices = list(iter(loader.sampler))[: len(targets)]
        keep = measured_rows(targets).tolist()
        names = list(pl_module.class_names)
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / TEACHER_PREDICTIONS).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "teacher_predicted", "teacher_confidence"])
            for i, p, c, k in zip(indices, predicted.tolist(), confidence.tolist(), keep):
                if k:
                    writer.writerow([str(loader.dataset.paths[i]), names[p], f"{c:.6f}"])
        hp = pl_module.hparams
        distillation = pl_module.distillation
        summary = {
            "teacher": _model_figures(distillation.teacher.net, str(hp.teacher), distillation.name,
                                      self._seconds["teacher"], self._timed_images, parameter_count),
            "student": _model_figures(pl_module.net, "", hp.model_name, self._seconds["student"], self._timed_images,
                                      parameter_count),
            "distill_weight": hp.distill_weight,
            "distill_temperature": hp.distill_temperature,
            "timed_on": f"{self._timed_images} validation images, {pl_module.device.type}, "
                        f"batch {loader.batch_size}, precision {trainer.precision}",
        }
        (run_dir / COMPARISON).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Print teacher vs student (the best checkpoint's validation results, written by the end-of-fit analysis
        before this hook: the app's callbacks run in the order the model returns them)."""
        if not trainer.is_global_zero or getattr(pl_module, "distillation", None) is None:
            return
        compared = compare(Path(trainer.log_dir or trainer.default_root_dir))
        if compared is not None:
            rank_zero_info(summary_line(compared))


def missing_teacher_comparison(trainer: pl.Trainer) -> list[Callback]:
    """A :class:`TeacherComparison` for a distilling fit whose Trainer holds none (``configure_callbacks``); none
    for a ``barebones`` Trainer, which times the loop alone (and refuses logging)."""
    if trainer.barebones or any(isinstance(c, TeacherComparison) for c in trainer.callbacks):
        return []
    return [TeacherComparison()]


def _model_figures(net: torch.nn.Module, source: str, name: str, seconds: float, images: int,
                   count: Any) -> dict[str, Any]:
    size = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    figures = {"model_name": name, "parameters": count(net), "megabytes": round(size / 2**20, 2),
               "images_per_s": round(images / seconds, 1) if seconds > 0 else None}
    if source:
        figures["source"] = source
    return figures


def compare(run_dir: Path) -> dict[str, Any] | None:
    """Teacher vs student from a run directory's files: the teacher's figures (``teacher_comparison.json``), and
    over the validation images both answered: each one's top-1 accuracy and the share on which they agree. ``None``
    when the run did not distil; without ``val_predictions.csv`` (the end-of-fit analysis was off) only the
    teacher's figures."""
    path = run_dir / COMPARISON
    if not path.is_file():
        return None
    summary = json.loads(path.read_text(encoding="utf-8"))
    teacher_csv, student_csv = run_dir / TEACHER_PREDICTIONS, run_dir / "val_predictions.csv"
    if not (teacher_csv.is_file() and student_csv.is_file()):
        return summary
    teacher = {row["path"]: row["teacher_predicted"] for row in _rows(teacher_csv)}
    both = [row for row in _rows(student_csv) if row["path"] in teacher]
    if both:
        n = len(both)
        summary["images"] = n
        summary["student"]["accuracy"] = sum(row["predicted"] == row["true"] for row in both) / n
        summary["teacher"]["accuracy"] = sum(teacher[row["path"]] == row["true"] for row in both) / n
        summary["agreement"] = sum(teacher[row["path"]] == row["predicted"] for row in both) / n
    return summary


def summary_line(compared: dict[str, Any]) -> str:
    """One line for the terminal: teacher vs student."""
    def side(key: str) -> str:
        figures = compared[key]
        accuracy = f"top-1 {figures['accuracy']:.4f}, " if "accuracy" in figures else ""
        speed = f", {figures['images_per_s']:g} images/s" if figures.get("images_per_s") else ""
        return (f"{key} {figures['model_name']}: {accuracy}{figures['parameters'] / 1e6:.1f} M parameters, "
                f"{figures['megabytes']:g} MB{speed}")

    if "agreement" not in compared:
        return f"Distillation: {side('student')}; {side('teacher')}"
    return (f"Distillation: {side('student')} (best checkpoint); {side('teacher')}; they agree on "
            f"{compared['agreement']:.1%} of {compared['images']} validation images")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
