"""Framework overhead: the app's ``fit`` vs a plain PyTorch loop doing the same work.

Both train the same timm ConvNeXt on the same generated JPEG folder with the same transforms,
DataLoader settings, optimizer (timm AdamW + layer decay + cosine schedule, fused as the app runs it), label-smoothed loss,
batch size, precision and memory format. The app runs through ``lit_convnext.cli.lightning_cli.main`` in-process
with its default callbacks (checkpointing, progress bar, LR monitor, data-wait monitor, TensorBoard
logger) and its validation at each epoch end (excluded from the step timing, like warm-up).

Each run's steady-state images/s comes from the median step interval after ``--warmup`` steps.
On a small shared machine single runs drift by +-10%, so the runs come in pairs (app then plain,
then plain then app, ... so neither always goes first) and the figure is the median of the pairs'
ratios, printed with its interquartile range; a slow spell hits both halves of a pair alike.

With ``--in-memory`` each training image is decoded and augmented once, before the runs, and both sides read
the kept tensors without loader workers: the step times are then the main thread's work alone (forward,
backward, optimizer, and the framework around them), without the loader's share of the CPU and its noise.
That is where a per-step cost of the app shows (it found the progress bar's redraws, 5% of a step).

    python benchmarks/overhead.py                    # convnext_atto, 64 px, batch 32: about 5 minutes
    python benchmarks/overhead.py --runs 15 --steps 30
    python benchmarks/overhead.py --in-memory --runs 6 --steps 60
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import os
import platform
import tempfile
import time
from pathlib import Path

import photos  # noqa: F401  (puts the repository on sys.path)
import timing
import torch
import torch.nn.functional as F
from lightning.pytorch import seed_everything
from photos import make_photo_folder
from torch.utils.data import DataLoader

from lit_convnext.cli.lightning_cli import main as app_main
from lit_convnext.data.datasets import LabeledImages
from lit_convnext.data.folders import read_folder_splits
from lit_convnext.data.transforms import TrainAugmentation, build_train_transform, train_decode_size
from lit_convnext.model.classifier import ConvNeXtClassifier
from lit_convnext.model.optim import build_optimizer, build_scheduler, fused_adamw_applies


def keep_in_memory(root: Path, args) -> None:
    """Make every ``LabeledImages`` read its items from memory, filled here once from the training images (the
    augmentation drawn then stays: the timing does not depend on which crop an image gets)."""
    kept: dict[Path, tuple] = {}
    read = LabeledImages.__getitem__

    def from_memory(self, index: int):
        path = self.paths[index]
        if path not in kept:
            kept[path] = read(self, index)
        return kept[path]

    LabeledImages.__getitem__ = from_memory
    dataset, _ = plain_dataset(args, root)
    for index in range(len(dataset)):
        dataset[index]
    args.workers = 0


def plain_dataset(args, root: Path) -> tuple[LabeledImages, ConvNeXtClassifier]:
    """The training images as the app reads them, and the module whose network and preprocessing the plain
    loop uses (ConvNeXtClassifier only creates them here)."""
    splits = read_folder_splits(root, 0.2, 42, None)
    module = ConvNeXtClassifier(args.model, pretrained=False, class_names=splits.class_names,
                                image_size=args.image_size)
    augmentation = TrainAugmentation()
    dataset = LabeledImages([s.path for s in splits.train], splits.targets(splits.train),
                            build_train_transform(module.preprocessing, augmentation),
                            train_decode_size(module.preprocessing, augmentation))
    return dataset, module


def run_app(args, root: Path) -> float:
    steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as work, contextlib.chdir(work):
        app_main([
            "fit", "--model.model_name", args.model, "--model.pretrained", "false",
            "--model.channels_last", str(args.channels_last).lower(),
            "--data.root", str(root), "--model.image_size", str(args.image_size),
            "--data.batch_size", str(args.batch_size), "--data.num_workers", str(args.workers),
            "--trainer.max_steps", str(steps), "--trainer.max_epochs", "1000", "--trainer.accelerator", args.device,
            "--trainer.precision", args.precision, "--trainer.callbacks+=timing.StepTimer",
        ])
    return timing.steady_rate(timing.LAST_RUN, args.batch_size, args.warmup)


def run_plain(args, root: Path) -> float:
    seed_everything(42, verbose=False)
    device = torch.device(args.device)
    dataset, module = plain_dataset(args, root)
    net = module.net.to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, pin_memory=device.type == "cuda",
                        persistent_workers=args.workers > 0)
    hp = module.hparams
    lr = hp.lr * args.batch_size / hp.lr_reference_batch_size
    # The same AdamW kernel as the app (fused where it applies), so the comparison is of the framework alone.
    optimizer = build_optimizer(net, lr, hp.weight_decay, hp.layer_decay, tuple(hp.betas),
                                fused=fused_adamw_applies(net, clips_under_mixed_precision=False))
    total = args.warmup + args.steps
    scheduler = build_scheduler(optimizer, total, 0, hp.min_lr)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision.startswith("bf16"))
    net.train()
    starts, step = [], 0
    while step < total:
        for images, targets in loader:
            starts.append(time.perf_counter())
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = F.cross_entropy(net(images), targets, label_smoothing=hp.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(num_updates=step)
            if step >= total:
                break
    return timing.steady_rate(starts, args.batch_size, args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp/lit_convnext_bench"))
    parser.add_argument("--model", default="convnext_atto")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--photo-size", default="160x120", help="generated JPEG size")
    parser.add_argument("--images", type=int, default=640, help="training images (plus 20%% validation)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="measured steps per run")
    parser.add_argument("--runs", type=int, default=11, help="pairs of runs (app and plain, order alternating)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true", help="32-true or bf16-mixed")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--in-memory", action="store_true",
                        help="decode and augment each image once, before the runs; no loader workers")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # the in-process CLI runs get their arguments explicitly
    width, height = map(int, args.photo_size.split("x"))
    root = make_photo_folder(args.root / f"overhead-{args.photo_size}", width, height, int(args.images * 1.25))
    if args.in_memory:
        keep_in_memory(root, args)

    app, plain = [], []
    for run in range(args.runs):
        if run % 2 == 0:
            app.append(run_app(args, root))
            plain.append(run_plain(args, root))
        else:
            plain.append(run_plain(args, root))
            app.append(run_app(args, root))
        print(f"pair {run + 1}: app {app[-1]:.1f} img/s, plain {plain[-1]:.1f} img/s, "
              f"ratio {app[-1] / plain[-1]:.3f}", flush=True)
    ratios = sorted(a / p for a, p in zip(app, plain))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{args.model} {args.image_size}px batch {args.batch_size}, "
          f"{'images in memory' if args.in_memory else f'{args.workers} workers'}, {args.precision}, "
          f"{'channels_last' if args.channels_last else 'contiguous'}, {args.device}; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), load avg {load:.1f}")
    low, high = timing.quartiles(ratios)
    print(f"median images/s: app {timing.median(app):.1f}, plain {timing.median(plain):.1f}")
    print(f"ratio app/plain: median of {len(ratios)} pairs {timing.median(ratios):.3f} "
          f"(interquartile range {low:.3f}-{high:.3f})")


if __name__ == "__main__":
    main()
