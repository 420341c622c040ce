"""Lightning's Trainer with a ``predict`` that streams to a file instead of collecting in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info

from lit_convnext.callbacks.prediction_writer import PredictionWriter


class ConvNeXtTrainer(Trainer):
    """``Trainer`` whose ``predict`` also takes ``output`` and ``top_k`` (exposed by the CLI)."""

    def predict(  # type: ignore[override]
        self,
        model: pl.LightningModule | None = None,
        dataloaders: Any = None,
        datamodule: pl.LightningDataModule | None = None,
        return_predictions: bool | None = None,
        ckpt_path: str | Path | None = None,
        weights_only: bool | None = None,
        output: Path = Path("predictions.csv"),
        top_k: int = 5,
    ) -> Any:
        """Label images with a trained checkpoint, or with an exported ONNX model (``ckpt_path`` ending in ``.onnx``,
        run by ONNX Runtime with the preprocessing stored in it).

        Args:
            output: File to write, one row per image: CSV, or JSON Lines when the name ends in ``.jsonl``.
            top_k: How many classes (with probabilities) to write per image.
        """
        if ckpt_path is not None and Path(ckpt_path).suffix == ".onnx":
            from lit_convnext.inference.onnx_model import OnnxClassifier

            # The exported model replaces the module; the same loader and writer produce the same rows.
            model, ckpt_path = OnnxClassifier(Path(ckpt_path), str(self.strategy.root_device)), None
        writer = PredictionWriter(Path(output), top_k=top_k)
        self.callbacks.append(writer)
        try:
            result = super().predict(
                model, dataloaders, datamodule, return_predictions=bool(return_predictions),
                ckpt_path=ckpt_path, weights_only=weights_only,
            )
        finally:
            self.callbacks.remove(writer)
        rank_zero_info(f"Wrote {writer.rows} predictions to {writer.output}")
        return result
