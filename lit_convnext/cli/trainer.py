"""Lightning's Trainer with the command line's evaluation options: ``predict`` can stream to a file (``output``)
instead of collecting in memory, and ``validate``, ``test`` and ``predict`` take test-time augmentation and a
multi-label ``threshold``."""

# No ``from __future__ import annotations``: jsonargparse reads the ranges of the ``Annotated`` option types.

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from lit_convnext.callbacks.prediction_writer import PredictionWriter
from lit_convnext.ranges import Probability


class ConvNeXtTrainer(Trainer):
    """``Trainer`` whose ``predict`` also takes ``output``, ``top_k`` and ``min_confidence``, and whose
    ``validate``, ``test`` and ``predict`` take ``tta`` and ``threshold`` (all exposed by the CLI)."""

    @property
    def log_dir(self) -> str | None:
        """The run directory. A TensorBoard or CSV logger's versioned directory, as Lightning says; with another
        logger (MLflow, whose ``save_dir`` is a store shared by every run, or none for a database or a tracking
        server) ``default_root_dir``, which the command line makes a new ``version_N`` for each run."""
        if self.loggers and not isinstance(self.loggers[0], (TensorBoardLogger, CSVLogger)):
            return self.strategy.broadcast(self.default_root_dir)
        return super().log_dir

    def validate(  # type: ignore[override]
        self,
        model: pl.LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | Path | None = None,
        verbose: bool = True,
        datamodule: pl.LightningDataModule | None = None,
        weights_only: bool | None = None,
        tta: bool = False,
        threshold: Probability | None = None,
    ) -> Any:
        """Evaluate on the validation split.

        Args:
            tta: Test-time augmentation: average the class probabilities of each image and its horizontal mirror
                (twice the compute).
            threshold: Multi-label: one decision threshold for every class instead of the tuned ones.
        """
        with _evaluation_settings(model or self.lightning_module, tta, threshold):
            return super().validate(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def test(  # type: ignore[override]
        self,
        model: pl.LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | Path | None = None,
        verbose: bool = True,
        datamodule: pl.LightningDataModule | None = None,
        weights_only: bool | None = None,
        tta: bool = False,
        threshold: Probability | None = None,
    ) -> Any:
        """Evaluate on the test split.

        Args:
            tta: Test-time augmentation: average the class probabilities of each image and its horizontal mirror
                (twice the compute).
            threshold: Multi-label: one decision threshold for every class instead of the tuned ones.
        """
        with _evaluation_settings(model or self.lightning_module, tta, threshold):
            return super().test(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def predict(  # type: ignore[override]
        self,
        model: pl.LightningModule | None = None,
        dataloaders: Any = None,
        datamodule: pl.LightningDataModule | None = None,
        return_predictions: bool | None = None,
        ckpt_path: str | Path | None = None,
        weights_only: bool | None = None,
        output: Path | None = None,
        top_k: int = 5,
        min_confidence: Probability = 0.0,
        tta: bool = False,
        threshold: Probability | None = None,
    ) -> Any:
        """Label images with a trained checkpoint, or with an exported model (``ckpt_path`` ending in ``.onnx``,
        ``.xml`` or ``.tflite``, run by its own runtime with the preprocessing stored in it).

        Returns what Lightning's ``predict`` returns: a list of per-batch dicts (``probabilities``, ``indices`` into
        the dataset, ``errors`` of unreadable files), or ``None`` when ``return_predictions`` is false, which is
        the default with ``output``: the rows then stream to the file and are not kept in memory.

        Args:
            output: File to write, one row per image: CSV, or JSON Lines when the name ends in ``.jsonl``. ``None``
                writes no file (``lit-convnext predict`` writes ``predictions.csv``).
            top_k: How many classes (with probabilities) to write per image (multi-label: used only when there
                are too many classes for one probability column each).
            min_confidence: Rows whose top probability (calibrated, see ``report.html``) is below this get
                ``uncertain`` = true, so they can be routed to a person; 0 leaves the column out (single-label).
            tta: Test-time augmentation: average the class probabilities of each image and its horizontal mirror
                (twice the compute).
            threshold: Multi-label: one decision threshold for every class instead of the tuned ones.
        """
        from lit_convnext.inference.exported import ExportedClassifier, is_exported

        if is_exported(ckpt_path):
            # The exported model replaces the module; the same loader and writer produce the same rows.
            model, ckpt_path = ExportedClassifier(Path(ckpt_path), str(self.strategy.root_device)), None
        writer = None
        if output is not None:
            separator = getattr(datamodule, "label_separator", ";")  # multi-label: how ``labels`` joins names
            writer = PredictionWriter(Path(output), top_k=top_k, separator=separator, min_confidence=min_confidence)
            self.callbacks.append(writer)
            if return_predictions is None:
                return_predictions = False
        try:
            with _evaluation_settings(model or self.lightning_module, tta, threshold):
                result = super().predict(model, dataloaders, datamodule, return_predictions=return_predictions,
                                         ckpt_path=ckpt_path, weights_only=weights_only)
        finally:
            if writer is not None:
                self.callbacks.remove(writer)
        if writer is None:
            return result
        if writer.unreadable:
            rank_zero_info(f"Wrote {writer.rows} rows to {writer.output}: {writer.rows - writer.unreadable} predicted, "
                           f"{writer.unreadable} file(s) that could not be read (the reason is in their `error` field)")
        else:
            rank_zero_info(f"Wrote {writer.rows} predictions to {writer.output}")
        return result


@contextmanager
def _evaluation_settings(model: pl.LightningModule | None, tta: bool, threshold: float | None) -> Iterator[None]:
    """For one validate/test/predict run: test-time augmentation on, and (multi-label) one decision threshold."""
    if model is None:
        yield
        return
    saved = {name: getattr(model, name) for name in ("tta", "threshold") if hasattr(model, name)}
    if tta:
        model.tta = True
    if threshold is not None and "threshold" in saved:
        model.threshold = threshold
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(model, name, value)
