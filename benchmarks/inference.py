"""CPU inference throughput of a checkpoint in PyTorch vs its ONNX export in ONNX Runtime (images/s).

    python benchmarks/inference.py [--model convnext_atto] [--image-size 224] [--seconds 8]

A randomly initialised checkpoint of ``--model`` with 10 classes is written and exported (speed does not depend
on the weights' values), then each backend is timed on preprocessed batches of 1 and 32 images (the model alone),
and end to end on 32 decoded photos (``Predictor.predict``: preprocessing + model + top-k). Each figure is the
images/s over a timed window of about ``--seconds`` after one warm-up call.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import photos  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import onnxruntime
import torch
from lightning.pytorch import Trainer
from photos import photo_like

from lit_convnext import load_predictor
from lit_convnext.commands.export import export
from lit_convnext.model.classifier import ConvNeXtClassifier


def make_checkpoint(path: Path, model_name: str, image_size: int, num_classes: int = 10) -> Path:
    """A lit-convnext checkpoint of an untrained ``model_name`` (what ``fit`` writes, minus training)."""
    model = ConvNeXtClassifier(model_name=model_name, pretrained=False, num_classes=num_classes, image_size=image_size)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path, weights_only=True)  # no optimizer or loop state: nothing was trained
    return path


def check_folder(root: Path, rng: np.random.Generator) -> Path:
    """Four labelled photos of two of the model's classes: ``export`` checks every file on labelled images."""
    for i in range(4):
        (root / str(i % 2)).mkdir(parents=True, exist_ok=True)
        photo_like(320, 240, rng).save(root / str(i % 2) / f"{i}.jpg", quality=90)
    return root


def images_per_second(run, images_per_call: int, seconds: float) -> float:
    run()  # warm-up (allocations, ORT's first-run optimisations)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        calls += 1
    return calls * images_per_call / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnext_atto")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lit-convnext-inference-"))
    ckpt = make_checkpoint(work / "model.ckpt", args.model, args.image_size)
    rng = np.random.default_rng(0)
    export(ckpt, work / "model.onnx", check_dir=check_folder(work / "check", rng))
    photos_ = [photo_like(640, 480, rng) for _ in range(32)]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}; {args.model} at "
          f"{args.image_size} px; load average before: {os.getloadavg()[0]:.1f}")
    print("| backend | batch 1, model (img/s) | batch 32, model (img/s) | 32 photos end to end (img/s) |")
    print("|---|---|---|---|")
    for name, path in (("PyTorch (.ckpt)", ckpt), ("ONNX Runtime (.onnx)", work / "model.onnx")):
        predictor = load_predictor(path)
        figures = []
        for batch in (1, 32):
            images = torch.randn(batch, 3, args.image_size, args.image_size)

            def forward(images: torch.Tensor = images) -> None:
                with torch.inference_mode():
                    predictor.model(images)

            figures.append(images_per_second(forward, batch, args.seconds))
        figures.append(images_per_second(lambda: predictor.predict(photos_, top_k=5, batch_size=32), 32,
                                         args.seconds))
        print(f"| {name} | " + " | ".join(f"{f:.1f}" for f in figures) + " |")


if __name__ == "__main__":
    main()
