"""Where multi-label runs lose mean average precision: the app's recipes against a plain timm loop, one change at a
time (issue 32, item 6).

The task: ``data/make_multilabel_digits.py``'s 2x2 grids of sklearn digit scans (two or three digits per image,
labelled with the digits present), 900 training and 300 validation images, upscaled to 64 px; convnext_atto from
random weights, batch 64, ``--epochs`` epochs (12 in the issue). Each case is one training run (``--seeds`` of them,
the median reported); ``val/map`` is the macro mean average precision over the validation images after the last
epoch (threshold-free: the per-class thresholds change F1, not this).

Cases (``--cases`` picks some):

* ``quickstart``: ``configs/quickstart.yaml`` + ``--data.labels`` (crop scale 0.6-1, aspect 3/4-4/3, smoothing 0.1,
  the weights' centre crop 0.875 at evaluation), as the task's defaults gave before this benchmark;
* ``quickstart_*``: the same with one change: ``full_crop`` (crop scale and aspect 1: the whole image),
  ``eval_full`` (evaluation without the centre crop, crop_pct 1), ``no_smoothing``, ``lr1e-3`` (lr 1e-3 per 64
  images instead of 4e-3 per 256: the same effective lr, so this checks the schedule's warm-up + cosine);
* ``ml_quickstart``: ``configs/multilabel_quickstart.yaml`` at 64 px for the same epochs (crop scale 0.8-1, aspect
  0.9-1.1, no smoothing), and ``ml_quickstart_eval_full`` the same without the centre crop;
* ``app_default``: ``configs/multilabel_quickstart.yaml`` as it is now: crop scale and erasing left to the task
  (the app's multi-label defaults), the evaluation's crop too;
* ``app_default_no_jitter``: the same without colour jitter (timm applies ``color_jitter`` 0.4 when RandAugment is
  off), ``app_default_warmup30``: the same with one-cycle's warm-up (30% of the run) instead of one epoch;
* ``plain``: a plain timm loop (BCE, AdamW 1e-3 with one-cycle, no augmentation, the full image resized).

    python benchmarks/multilabel.py                            # every case, 12 epochs, 1 seed: about 30-60 min
    python benchmarks/multilabel.py --epochs 6 --cases plain quickstart   # a quick look

Prints one line per run as it ends and a table at the end; ``--json`` also writes the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "data"))

#: ``configs/quickstart.yaml``'s model options (the multi-label quickstart differs in smoothing and size only).
QUICKSTART_MODEL = dict(model_name="convnext_atto", image_size=64, pretrained=False, lr=4e-3, warmup_epochs=1.0,
                        weight_decay=0.05, layer_decay=None, drop_path_rate=0.0, head_init_scale=1.0)
QUICKSTART_AUG = dict(scale=(0.6, 1.0), hflip=0.0, rand_augment=None, random_erasing=0.0)
ML_QUICKSTART_AUG = dict(scale=(0.8, 1.0), ratio=(0.9, 1.1), hflip=0.0, rand_augment=None, random_erasing=0.0)
FULL = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0))

#: case -> (model options over QUICKSTART_MODEL, augmentation options (those left out: the app's task defaults),
#: crop_pct at evaluation (None: the app's))
CASES: dict[str, tuple[dict, dict | None, float | None]] = {
    "quickstart": (dict(label_smoothing=0.1), QUICKSTART_AUG, None),
    "quickstart_full_crop": (dict(label_smoothing=0.1), {**QUICKSTART_AUG, **FULL}, None),
    "quickstart_eval_full": (dict(label_smoothing=0.1), QUICKSTART_AUG, 1.0),
    "quickstart_no_smoothing": (dict(label_smoothing=0.0), QUICKSTART_AUG, None),
    "quickstart_lr1e-3": (dict(label_smoothing=0.1, lr=1e-3, lr_reference_batch_size=64), QUICKSTART_AUG, None),
    "ml_quickstart": (dict(label_smoothing=0.0), ML_QUICKSTART_AUG, None),
    "ml_quickstart_eval_full": (dict(label_smoothing=0.0), ML_QUICKSTART_AUG, 1.0),
    "app_default": (dict(label_smoothing=0.0), dict(hflip=0.0, rand_augment=None), None),
    "app_default_no_jitter": (dict(label_smoothing=0.0), dict(hflip=0.0, rand_augment=None, color_jitter=None), None),
    "app_default_warmup30": (dict(label_smoothing=0.0, warmup_epochs=-1.0), dict(hflip=0.0, rand_augment=None), None),
    "plain": ({}, None, None),
}


def make_task(root: Path, train: int, val: int) -> Path:
    from make_multilabel_digits import main as compose

    return compose(root, {"train": train, "val": val})


def run_app(labels: Path, case: str, epochs: int, seed: int, workdir: Path, size: int) -> float:
    """One fit through the Python API (the same objects ``lit-convnext fit`` builds); the last ``val/map``."""
    import lightning.pytorch as pl

    from lit_convnext import ConvNeXtClassifier, ImageFolderDataModule
    from lit_convnext.data.transforms import TrainAugmentation
    from lit_convnext.evaluation.class_report import PerClassReport
    from lit_convnext.evaluation.end_of_fit import EvaluationReport

    model_options, augmentation, crop_pct = CASES[case]
    if model_options.get("warmup_epochs") == -1.0:  # one-cycle's warm-up: 30% of the run
        model_options = {**model_options, "warmup_epochs": 0.3 * epochs}
    pl.seed_everything(seed, verbose=False)
    data = ImageFolderDataModule(labels=labels, batch_size=64, num_workers=0,
                                 **({} if augmentation is None else {"augmentation": TrainAugmentation(**augmentation)}))
    model = ConvNeXtClassifier(**{**QUICKSTART_MODEL, **model_options, "image_size": size}, class_names=data.class_names,
                               task=data.task)
    if crop_pct is not None:
        model.preprocessing["crop_pct"] = crop_pct
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=workdir,
                         callbacks=[EvaluationReport(enabled=False), PerClassReport(enabled=False)])
    trainer.fit(model, datamodule=data)
    return float(trainer.callback_metrics["val/map"])


def run_plain(labels: Path, epochs: int, seed: int, size: int) -> float:
    """BCE, AdamW 1e-3 with one-cycle, no augmentation: the full 16 px image resized to ``size`` (bicubic)."""
    import csv

    import numpy as np
    import timm
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torchmetrics.classification import MultilabelAveragePrecision

    torch.manual_seed(seed)
    rows = list(csv.DictReader(labels.open()))
    classes = sorted({c for row in rows for c in row["labels"].split(";")}, key=int)
    net = timm.create_model("convnext_atto", pretrained=False, num_classes=len(classes))
    config = timm.data.resolve_model_data_config(net)  # the weights' normalisation, as a timm user would take it
    mean = torch.tensor(config["mean"]).view(3, 1, 1)
    std = torch.tensor(config["std"]).view(3, 1, 1)

    def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = [row for row in rows if row["split"] == split]
        images = torch.stack([
            (torch.from_numpy(np.asarray(Image.open(labels.parent / row["path"]).convert("RGB")
                                         .resize((size, size), Image.BICUBIC), dtype=np.float32) / 255).permute(2, 0, 1)
             - mean) / std for row in chosen])
        targets = torch.zeros(len(chosen), len(classes))
        for i, row in enumerate(chosen):
            for c in row["labels"].split(";"):
                targets[i, classes.index(c)] = 1
        return images, targets

    (x, y), (vx, vy) = load("train"), load("val")
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    steps = epochs * -(-len(x) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps)
    for _ in range(epochs):
        net.train()
        for batch in torch.randperm(len(x)).split(64):
            loss = F.binary_cross_entropy_with_logits(net(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    net.eval()
    with torch.no_grad():
        scores = torch.cat([net(chunk).sigmoid() for chunk in vx.split(128)])
    return float(MultilabelAveragePrecision(len(classes), average="macro")(scores, vy.int()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train", type=int, default=900)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        labels = make_task(Path(tmp) / "task", args.train, args.val)
        for seed in range(args.seeds):
            for case in args.cases:
                start = time.perf_counter()
                value = (run_plain(labels, args.epochs, seed, args.image_size) if case == "plain"
                         else run_app(labels, case, args.epochs, seed, Path(tmp) / "runs", args.image_size))
                results.setdefault(case, []).append(value)
                seconds.setdefault(case, []).append(time.perf_counter() - start)
                print(f"{case} seed {seed}: val/map {value:.3f} ({seconds[case][-1]:.0f} s)", flush=True)
    print(f"\n{args.train} training / {args.val} validation images at {args.image_size} px, {args.epochs} epochs, "
          f"{args.seeds} seed(s), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared)")
    print("| case | val/map (median) | runs | s per run |\n|---|---|---|---|")
    for case, values in results.items():
        print(f"| {case} | {statistics.median(values):.3f} | {', '.join(f'{v:.3f}' for v in values)} "
              f"| {statistics.median(seconds[case]):.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                         "seconds": seconds}, indent=1))


if __name__ == "__main__":
    main()
