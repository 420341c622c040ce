"""Per-image results of validation and test, and the analysis that follows ``fit``.

``validate`` and ``test`` write ``{stage}_predictions.csv`` (one row per image, also under DDP: each rank's
logits are gathered and put back in dataset order) and ``{stage}_calibration.json``; the confusion matrix and the
confused pairs are the per-class report's (:mod:`lit_convnext.evaluation.class_report`). During ``fit`` the latest
validation's logits are kept, and those of the validation the best checkpoint was saved from; each such validation
fits its temperature into the model's calibration, so every checkpoint saved after it (the best one, ``last.ckpt``)
holds the temperature of its own weights, as a multi-label model's thresholds are tuned at each validation. When
``fit`` ends (``on_fit_end``, whoever runs the Trainer), :meth:`EvaluationReport.analyse_fit` takes the best
checkpoint's validation logits (those kept, else, after a resume or under DDP, by validating it once more, and
then stores the temperature fitted on them in that
checkpoint), lists likely label errors (cleanlab), draws a mosaic of the augmented training batch and writes
``report.html`` (see ``lit_convnext.evaluation.report``). The per-class report's confusion PNG of the fit is drawn
after that analysis, which may rewrite the per-class files first (:meth:`EvaluationReport.on_fit_end`).
"""

from __future__ import annotations

import csv
import json
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics.utilities.distributed import gather_all_tensors

from lit_convnext.data.unlabeled import split_training_batch
from lit_convnext.evaluation.calibration import calibration_summary, fit_temperature
from lit_convnext.evaluation.class_report import PerClassReport
from lit_convnext.data.datasets import measured_rows
from lit_convnext.cli.terminal import LIGHTNING_INFO_LOGGER, LOADED_WEIGHTS_LINE, RESTORING_LINE, DropLines, log_filter
from lit_convnext.text import preview

#: Images kept from the first training batch for the augmentation mosaic.
MOSAIC_IMAGES = 32


class EvaluationReport(Callback):
    """Per-image CSVs for validate/test; at the end of ``fit``: calibration, likely label errors and ``report.html``.

    Args:
        enabled: Write the per-image files and run the end-of-fit analysis.
        top_k: Classes (with probabilities) per image in ``{stage}_predictions.csv``.
        calibrate: Fit a temperature on each validation's logits during fit, kept in the checkpoints saved after it,
            and report the best checkpoint's (validate, test and predict then give calibrated probabilities).
        label_issues: List likely label errors of the validation split with cleanlab (``val_label_issues.csv``;
            cleanlab is the ``report`` extra: without it the list is left out quietly and ``report.html`` says
            how to get it, so a run of the base install ends without a warning).
        report: Write ``report.html`` into the run directory when ``fit`` ends.
        gallery_size: Images per gallery in the report (worst errors, suspected label errors).
    """

    def __init__(self, enabled: bool = True, top_k: int = 5, calibrate: bool = True, label_issues: bool = True,
                 report: bool = True, gallery_size: int = 24) -> None:
        self.enabled = enabled
        self.top_k = top_k
        self.calibrate = calibrate
        self.label_issues = label_issues
        self.report = report
        self.gallery_size = gallery_size
        self._collected: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._final = False  # the validation of the best checkpoint run by analyse_fit
        self._final_checkpoint: dict[str, Any] | None = None  # the best checkpoint's content, when analyse_fit read it
        # The latest validation during fit: global step, ordered logits, targets, image paths and the temperature
        # fitted on them (None when calibrate is off); and the validation the best checkpoint was last seen saved
        # from, with the best checkpoint's path at that time.
        self._fit_val: tuple[int, torch.Tensor, torch.Tensor, list[str], float | None] | None = None
        self._best_val: tuple[int, torch.Tensor, torch.Tensor, list[str], float | None] | None = None
        self._best_path = ""
        self._first_batch: tuple[torch.Tensor, torch.Tensor] | None = None

    # --------------------------------------------------------------------------------- collection
    def _collecting(self, trainer: pl.Trainer) -> bool:
        # Multi-label models have their own per-class report and thresholds; this analysis is single-label.
        # During fit the logits are kept for analyse_fit, which uses them only in a single process: several
        # processes would gather every rank's logits after each validation for nothing.
        fitting = trainer.state.fn == TrainerFn.FITTING and trainer.world_size == 1
        return (self.enabled and not trainer.sanity_checking and not _multilabel(trainer.lightning_module)
                and (fitting or trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING)))

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collected["val"] = []

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collected["test"] = []

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._collecting(trainer) and isinstance(outputs, torch.Tensor):
            self._collected["val"].append((outputs.detach().float().cpu(), batch[1].detach().cpu()))

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._collecting(trainer) and isinstance(outputs, torch.Tensor):
            self._collected["test"].append((outputs.detach().float().cpu(), batch[1].detach().cpu()))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # One small copy per run, for the mosaic; a linear probe on cached features trains on no images.
        if self.enabled and self._first_batch is None:
            (images, targets), _ = split_training_batch(batch)
            if images.ndim == 4:
                self._first_batch = (images[:MOSAIC_IMAGES].detach().cpu(),
                                     targets[:MOSAIC_IMAGES].detach().cpu())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._collecting(trainer):
            return
        if trainer.state.fn == TrainerFn.FITTING:
            # No files per epoch (they describe the best weights): keep this validation's logits, which
            # analyse_fit uses instead of validating again when the best checkpoint is saved from it.
            logits, targets, paths = self._gathered("val", trainer, pl_module)
            self._note_best(trainer)
            temperature = None
            if self.calibrate:  # on the accelerator: milliseconds, where a CPU core needs seconds at 1,000 classes
                device = pl_module.device
                temperature = fit_temperature(logits.to(device), targets.to(device))
                pl_module.calibration["temperature"] = temperature
            self._fit_val = (trainer.global_step, logits, targets, paths, temperature)
        else:
            self._finish("val", trainer, pl_module)

    def _note_best(self, trainer: pl.Trainer) -> None:
        """Keep the previous validation's logits when the best checkpoint changed since then: it was saved from that
        validation's weights (the checkpoint callback saves after the validation; analyse_fit checks the step)."""
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        if best != self._best_path:
            self._best_val, self._best_path = self._fit_val, best

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._collecting(trainer):
            self._finish("test", trainer, pl_module)

    # ------------------------------------------------------------------------------------ results
    def _gathered(self, stage: str, trainer: pl.Trainer,
                  pl_module: pl.LightningModule) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Every rank's collected logits and targets of ``stage``, in dataset order, with the images' paths."""
        batches = self._collected.pop(stage, [])
        classes = len(pl_module.class_names)
        logits = torch.cat([b[0] for b in batches]) if batches else torch.zeros(0, classes)
        targets = torch.cat([b[1] for b in batches]) if batches else torch.zeros(0, dtype=torch.long)
        loader = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        # This rank's images, in order; --trainer.limit_val_batches stops after the first batches.
        indices = torch.as_tensor(list(iter(loader.sampler)), dtype=torch.long)[: len(targets)]
        # Every rank gets every image (all_gather), so all ranks fit the same temperature without a broadcast.
        logits, targets, indices = (_gather_rows(pl_module, t) for t in (logits, targets, indices))
        order = indices.argsort()
        order = order[measured_rows(targets[order])]  # not the stand-ins for files that could not be read
        paths = [str(loader.dataset.paths[i]) for i in indices[order].tolist()]
        return logits[order], targets[order], paths

    def _finish(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule,
                gathered: tuple[torch.Tensor, torch.Tensor, list[str], float | None] | None = None) -> None:
        logits, targets, paths, fitted = gathered or (*self._gathered(stage, trainer, pl_module), None)
        if self._final and self.calibrate:
            pl_module.calibration["temperature"] = fitted if fitted is not None else fit_temperature(logits, targets)
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)  # log_dir broadcasts: every rank asks
        if not trainer.is_global_zero:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        temperature = float(pl_module.calibration.get("temperature", 1.0))
        summary = calibration_summary(logits, targets, temperature)
        (run_dir / f"{stage}_calibration.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        if self._final and self.calibrate:
            stored = (self._final_checkpoint or {}).get("calibration")
            if stored != pl_module.calibration:  # saved before this temperature was fitted, or without it
                self._store_calibration(trainer, pl_module, self._final_checkpoint)
            rank_zero_info(f"Temperature {temperature:.3f} fitted on {len(targets)} validation images: "
                           f"ECE {summary['ece_before']:.4f} -> {summary['ece_after']:.4f}")
        probabilities = pl_module.probabilities(logits)
        names = list(pl_module.class_names)
        write_predictions(run_dir / f"{stage}_predictions.csv", paths, names, probabilities, targets, self.top_k)
        if stage == "val" and self.label_issues:
            write_label_issues(run_dir / "val_label_issues.csv", paths, names, probabilities, targets)

    def _store_calibration(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any] | None = None) -> None:
        """Add the fitted calibration to the best checkpoint file (written atomically by the run's CheckpointIO);
        ``checkpoint`` is that file's content when it was already read."""
        path = Path(trainer.checkpoint_callback.best_model_path)
        checkpoint = dict(checkpoint if checkpoint is not None else _load_checkpoint(path))
        checkpoint["calibration"] = dict(pl_module.calibration)
        trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, path)

    # -------------------------------------------------------------------------------- after fit
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The end-of-fit analysis, then the per-class reports' confusion PNG of the fit: the analysis may rewrite
        their files from the best checkpoint's validation, and they leave the drawing to this hook when an enabled
        EvaluationReport is among the callbacks (:meth:`PerClassReport.on_fit_end`), so it is drawn once."""
        try:
            self.analyse_fit(trainer, pl_module, trainer.datamodule)
        finally:
            if self.enabled:
                for callback in trainer.callbacks:
                    if isinstance(callback, PerClassReport):
                        callback.draw_pending()

    def analyse_fit(self, trainer: pl.Trainer, model: pl.LightningModule,
                    datamodule: pl.LightningDataModule | None) -> None:
        """The best checkpoint's validation results (per-image CSV, temperature, label issues), then the report.

        Called on every rank when ``fit`` ends (validation is distributed); only rank 0 writes. When the best
        checkpoint of a single-process fit was saved from a validation whose logits were kept (the last one, or
        the one the best checkpoint was saved from), those logits are used and the checkpoint's weights are loaded
        without validating again (one validation pass less).
        """
        checkpoint = trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "")
        if not self.enabled or not best or _multilabel(model):
            return
        start = time.perf_counter()
        self._note_best(trainer)  # the last validation may have been saved as the best
        last_step = self._fit_val[0] if self._fit_val is not None else None
        candidates = [k for k in (self._fit_val, self._best_val) if k is not None]
        self._fit_val = self._best_val = None
        saved = _load_checkpoint(best) if candidates and trainer.world_size == 1 else None
        kept = next((k for k in candidates if saved is not None and saved.get("global_step") == k[0]), None)
        self._final = True
        try:
            if kept is not None:
                # The same weights as trainer.validate(ckpt_path=best) would restore (EMA ones under EMA).
                model.on_load_checkpoint(saved)
                trainer.strategy.load_model_state_dict(saved)
                self._final_checkpoint = saved  # read once: the temperature is added to this content
                self._finish("val", trainer, model, kept[1:])
                if kept[0] != last_step:  # the per-class files describe the last validation until now
                    for callback in trainer.callbacks:
                        if isinstance(callback, PerClassReport):
                            callback.rewrite_validation(trainer, model, kept[1], kept[2])
            else:
                rank_zero_info(f"Validating the best checkpoint again for the end-of-fit analysis: {best}")
                with log_filter(LIGHTNING_INFO_LOGGER, DropLines(*RESTORE_LINES)), \
                        _on_every_rank(trainer, best) as readable:
                    trainer.validate(model, datamodule=datamodule, ckpt_path=readable, verbose=False)
        finally:
            self._final, self._final_checkpoint = False, None
        validated = time.perf_counter()
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero:
            if self._first_batch is not None:
                from lit_convnext.evaluation.report.figures import augmentation_mosaic

                images, targets = self._first_batch
                augmentation_mosaic(images, targets, model).save(run_dir / "train_batch_mosaic.png")
            if self.report:
                from lit_convnext.evaluation.report import build_report

                path = build_report(run_dir, model, gallery_size=self.gallery_size,
                                    analysis_seconds=validated - start)
                rank_zero_info(f"Report: {path}")
            rank_zero_info(f"End-of-fit analysis: {validated - start:.1f} s for the best checkpoint's validation results, "
                           f"{time.perf_counter() - validated:.1f} s for the report")
        trainer.strategy.barrier("EvaluationReport.analyse_fit")


#: Lightning's lines about restoring a checkpoint: while the analysis validates the best one they would read as a
#: restart of training, so the analysis says what it does in its own line instead.
RESTORE_LINES = (RESTORING_LINE, LOADED_WEIGHTS_LINE)


@contextmanager
def _on_every_rank(trainer: pl.Trainer, path: str) -> Iterator[str]:
    """A path to the checkpoint ``path`` that this rank can read: ``path`` itself where every rank can (one node, or
    a shared file system); on nodes with file systems of their own, rank 0's copy sent to the others and kept in a
    temporary file for the block (Lightning's ``validate(ckpt_path=...)`` reads it on every rank)."""
    if trainer.world_size == 1 or trainer.strategy.reduce_boolean_decision(Path(path).is_file(), all=True):
        yield path
        return
    content = trainer.strategy.broadcast(_load_checkpoint(path) if trainer.is_global_zero else None)
    if trainer.is_global_zero:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="lit-convnext-best-") as folder:
        copy = Path(folder) / Path(path).name
        torch.save(content, copy)
        yield str(copy)


def _load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint of this run (read whole, not memory-mapped: the temperature is written back to the same file,
    and a user's own CheckpointIO may overwrite it in place)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _gather_rows(pl_module: pl.LightningModule, rows: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``rows`` (ranks may hold different counts) in rank order."""
    if pl_module.trainer.world_size <= 1:
        return rows
    return torch.cat([part.cpu() for part in gather_all_tensors(rows.to(pl_module.device))])


#: Rows of ``val_predictions.csv`` formatted together (see :func:`write_predictions`).
ROWS_PER_BLOCK = 65_536


def write_predictions(path: Path, paths: list[str], names: list[str], probabilities: torch.Tensor,
                      targets: torch.Tensor, top_k: int) -> None:
    """One row per image: path, true, predicted, confidence, loss (-log p(true)), correct, then the top-k."""
    k = max(1, min(top_k, len(names)))
    top_p, top_c = probabilities.topk(k, dim=1)
    true_p = probabilities.gather(1, targets.view(-1, 1)).squeeze(1)
    loss = -true_p.clamp(min=1e-12).log()
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted", "confidence", "loss", "correct",
                         *(f"{col}_{r}" for r in range(1, k + 1) for col in ("class", "probability"))])
        # Rows become Python lists a block at a time: at a million images the whole top-k as lists is 300 MB.
        for start in range(0, len(paths), ROWS_PER_BLOCK):
            block = slice(start, start + ROWS_PER_BLOCK)
            for p, t, ps, cs, nll in zip(paths[block], targets[block].tolist(), top_p[block].tolist(),
                                         top_c[block].tolist(), loss[block].tolist()):
                top = [item for c, q in zip(cs, ps) for item in (names[c], f"{q:.6f}")]
                writer.writerow([p, names[t], names[cs[0]], f"{ps[0]:.6f}", f"{nll:.6f}", int(cs[0] == t), *top])


#: cleanlab's warning about one class with too few examples (it names the class by index).
SMALL_CLASS_WARNING = re.compile(r"May not flag all label issues in class: (\d+), it has too few examples")


def write_label_issues(path: Path, paths: list[str], names: list[str], probabilities: torch.Tensor,
                       targets: torch.Tensor) -> None:
    """Likely label errors found by cleanlab's confident learning, most likely first; nothing without cleanlab (an
    optional extra: ``report.html`` says once how to get the list, see ``evaluation.report.html``)."""
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        return
    labels = targets.numpy()
    probs = probabilities.double()
    probs = (probs / probs.sum(dim=1, keepdim=True)).numpy()  # cleanlab checks rows sum to 1 in float64
    present = len(set(labels.tolist()))
    ranked: list[int] = []
    if present >= 2:  # confident learning compares classes: a one-class split has nothing to compare
        with warnings.catch_warnings(record=True) as caught:  # one line per small class: summarised below
            warnings.simplefilter("always")
            ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1).tolist()
        small = []
        for caught_warning in caught:
            if match := SMALL_CLASS_WARNING.search(str(caught_warning.message)):
                small.append(names[int(match[1])])
            else:  # anything else cleanlab says is passed on as it was
                warnings.warn_explicit(caught_warning.message, caught_warning.category, caught_warning.filename,
                                       caught_warning.lineno)
        if small:
            rank_zero_warn(f"label issues: {len(small)} class(es) have too few validation images for cleanlab to "
                           f"flag every likely label error ({preview(small, 10)})")
    else:
        rank_zero_warn(f"label issues: the validation split has {present} class(es); no errors can be estimated")
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "path", "given", "suggested", "given_probability", "suggested_probability"])
        for rank, i in enumerate(ranked, start=1):
            suggested = int(probs[i].argmax())
            writer.writerow([rank, paths[i], names[labels[i]], names[suggested], f"{probs[i, labels[i]]:.6f}",
                             f"{probs[i, suggested]:.6f}"])


def _multilabel(module: pl.LightningModule | None) -> bool:
    return bool(getattr(module, "multilabel", False))
