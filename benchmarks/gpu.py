"""GPU throughput: training and inference images/s of the app and of a plain PyTorch loop.

For each model, precision (bf16-mixed, 32-true), memory format (channels_last on/off) and
torch.compile (on/off): synthetic batches already on the device (the model's and the framework's
ceiling: no loading, no copy), then the generated JPEG folder (whether the input pipeline keeps up)
for the first precision with channels_last. The app is what ``lit-convnext fit`` builds: its
Trainer with the default callbacks (checkpointing, progress bar, LR monitor, per-class report,
data-wait monitor, loss guard) and TensorBoard logger; inference is its ``predict_step`` under
Lightning's ``predict`` (no output file). Both sides are timed alike: one CUDA sync after the
warm-up steps and one at the end. Prints GPU name, versions, batch size and model FLOPs utilisation
(FLOPs from ``torch.utils.flop_counter``; training counts forward + backward as 3x forward; peak
from a table of dense bf16/fp32 figures or ``--peak-tflops``).

    python benchmarks/gpu.py                                              # CUDA, convnext_tiny, 224 px, batch 256
    python benchmarks/gpu.py --models convnext_atto,convnext_nano,convnext_tiny,convnext_small
    python benchmarks/gpu.py --device cpu --model convnext_atto --image-size 64 --steps 3   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import lightning
import photos  # noqa: F401  (puts the repository on sys.path)
import timing
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from photos import make_photo_folder
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from lit_convnext.cli.lightning_cli import build_cli
from lit_convnext.cli.lightning_cli import main as app_main
from lit_convnext.data.datasets import LabeledImages
from lit_convnext.data.folders import read_folder_splits
from lit_convnext.data.transforms import (
    TrainAugmentation,
    build_eval_transform,
    build_train_transform,
    eval_decode_size,
    train_decode_size,
)
from lit_convnext.model.classifier import ConvNeXtClassifier

#: Dense peak TFLOP/s (bf16 tensor core, fp32 without TF32) by GPU name fragment.
PEAK_TFLOPS = {"H200": (989.0, 67.0), "H100 SXM": (989.0, 67.0), "H100 PCIe": (756.0, 51.0),
               "H100": (989.0, 67.0), "A100": (312.0, 19.5), "L4": (121.0, 30.3), "A10": (125.0, 31.2)}
CLASSES = [f"class{i}" for i in range(10)]


class DeviceBatches:
    """The same batch, already on the device, ``length`` times: nothing to load or copy."""

    def __init__(self, batch_size: int, image_size: int, length: int, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device)
        self.targets = torch.randint(0, len(CLASSES), (batch_size,), generator=generator).to(device)
        self.length = length
        self.batch_size = batch_size  # read by the app for its lr scaling, like a DataLoader's

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        return ((self.images, self.targets) for _ in range(self.length))


def forward_flops(model_name: str, image_size: int, device: torch.device) -> float:
    net = timm.create_model(model_name, pretrained=False, num_classes=len(CLASSES)).to(device).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.randn(1, 3, image_size, image_size, device=device))
    return float(counter.get_total_flops())


def peak_flops(args, precision: str) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    for fragment, (bf16, fp32) in PEAK_TFLOPS.items():
        if fragment in name:
            return (bf16 if precision.startswith("bf16") else fp32) * 1e12
    return None


def plain(args, model_name, task, source, precision, channels_last, compile_, root) -> float:
    """Plain PyTorch: same timm net, loss, optimizer family, autocast and memory format as the app."""
    device = torch.device(args.device)
    module = ConvNeXtClassifier(model_name, pretrained=False, class_names=CLASSES, image_size=args.image_size,
                                channels_last=channels_last)
    net = module.net.to(device)
    run = torch.compile(net) if compile_ else net
    if source == "synthetic":
        batches = iter(DeviceBatches(args.batch_size, args.image_size, args.warmup + args.steps, device))
    else:
        batches = _forever(folder_loader(args, module.preprocessing, task, root, device))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    net.train(task == "train")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    total = args.warmup + args.steps
    for step in range(total):
        if step == args.warmup:
            timing.sync(device)
            start = time.perf_counter()
        images, labels = next(batches)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if task == "train":
            with autocast:
                loss = F.cross_entropy(run(images), labels, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.inference_mode(), autocast:
                run(images).float().softmax(-1)
    timing.sync(device)
    return args.batch_size * args.steps / (time.perf_counter() - start)


def _forever(loader):
    while True:
        yield from loader


def folder_loader(args, preprocessing, task, root: Path, device) -> DataLoader:
    splits = read_folder_splits(root, 0.2, 42, None)
    augmentation = TrainAugmentation()
    if task == "train":
        transform, size = build_train_transform(preprocessing, augmentation), train_decode_size(preprocessing, augmentation)
    else:
        transform, size = build_eval_transform(preprocessing), eval_decode_size(preprocessing)
    dataset = LabeledImages([s.path for s in splits.train], splits.targets(splits.train), transform, size)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=task == "train", drop_last=True,
                      num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)


def app(args, model_name, task, source, precision, channels_last, compile_, root) -> float:
    """The app as ``lit-convnext fit`` builds it; the folder training run goes through the command itself."""
    steps = args.warmup + args.steps
    timing.WARMUP = args.warmup
    options = ["--model.model_name", model_name, "--model.pretrained", "false",
               "--model.channels_last", str(channels_last).lower(), "--model.compile", str(compile_).lower(),
               "--data.root", str(root), "--model.image_size", str(args.image_size),
               "--data.batch_size", str(args.batch_size), "--data.num_workers", str(args.workers),
               "--trainer.max_steps", str(steps), "--trainer.max_epochs", "1000",
               "--trainer.accelerator", "gpu" if args.device == "cuda" else "cpu", "--trainer.precision", precision,
               "--trainer.callbacks+=timing.WindowTimer"]
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as work, contextlib.chdir(work):
        if source == "folder" and task == "train":
            # No validation (nor the checkpoint saves that follow it) inside the timed window: the plain loop has none.
            app_main(["fit", *options, "--trainer.check_val_every_n_epoch", "1000"])
            return timing.window_rate(args.batch_size)
        cli = build_cli([*options, "--trainer.limit_val_batches", "1"], run=False)
        if source == "synthetic":
            loader = DeviceBatches(args.batch_size, args.image_size, steps, device)
        else:
            loader = folder_loader(args, cli.model.preprocessing, task, root, device)
        if task == "train":
            cli.trainer.fit(cli.model, train_dataloaders=loader,
                            val_dataloaders=DeviceBatches(args.batch_size, args.image_size, 1, device))
        else:
            cli.trainer.limit_predict_batches = steps
            Trainer.predict(cli.trainer, cli.model, loader, return_predictions=False)  # without writing a file
    return timing.window_rate(args.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", "--model", default="convnext_tiny")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 8 on CPU")
    parser.add_argument("--warmup", type=int, default=None, help="default 10 on CUDA (compile), 1 on CPU")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--precisions", default=None, help="default bf16-mixed,32-true on CUDA, 32-true on CPU")
    parser.add_argument("--channels-last", default="off,on")
    parser.add_argument("--compile", default=None, help="default off,on on CUDA, off on CPU")
    parser.add_argument("--sources", default="synthetic,folder")
    parser.add_argument("--workers", type=int, default=None, help="loader workers for the folder runs")
    parser.add_argument("--root", type=Path, default=Path("/tmp/lit_convnext_bench"))
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # the in-process CLI runs get their arguments explicitly
    cuda = args.device == "cuda"
    args.batch_size = args.batch_size or (256 if cuda else 8)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    args.workers = args.workers if args.workers is not None else min(16, len(_cores()))
    precisions = (args.precisions or ("bf16-mixed,32-true" if cuda else "32-true")).split(",")
    layouts = [v == "on" for v in args.channels_last.split(",")]
    compiles = [v == "on" for v in (args.compile or ("off,on" if cuda else "off")).split(",")]
    if cuda:
        torch.backends.cudnn.benchmark = True
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({len(_cores())} cores)"
    print(f"{device_name}; torch {torch.__version__}, lightning {lightning.__version__}, timm {timm.__version__}; "
          f"{args.image_size} px, batch {args.batch_size}, {args.steps} timed steps after {args.warmup}")
    root = make_photo_folder(args.root / "gpu-640x480", 640, 480, max(40, args.batch_size * 4), classes=len(CLASSES))
    print(f"{'model':<15} {'source':<9} {'task':<5} {'precision':<10} {'layout':<13} {'compile':<7} "
          f"{'plain img/s':>11} {'app img/s':>10} {'app/plain':>9} {'MFU app':>8}")
    for model_name in args.models.split(","):
        flops = forward_flops(model_name, args.image_size, torch.device(args.device))
        for source in args.sources.split(","):
            for precision in precisions if source == "synthetic" else precisions[:1]:
                for channels_last in layouts if source == "synthetic" else layouts[-1:]:
                    for compile_ in compiles if source == "synthetic" else compiles[:1]:
                        for task in ("train", "infer"):
                            config = (model_name, task, source, precision, channels_last, compile_, root)
                            p, a = plain(args, *config), app(args, *config)
                            peak = peak_flops(args, precision)
                            mfu = f"{a * flops * (3 if task == 'train' else 1) / peak:8.1%}" if peak else f"{'n/a':>8}"
                            print(f"{model_name:<15} {source:<9} {task:<5} {precision:<10} "
                                  f"{'channels_last' if channels_last else 'contiguous':<13} {str(compile_):<7} "
                                  f"{p:11.1f} {a:10.1f} {a / p:9.2f} {mfu}", flush=True)
    print(f"forward GFLOPs/image ({args.models.split(',')[-1]}): {flops / 1e9:.2f}")


def _cores() -> set[int]:
    import os

    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


if __name__ == "__main__":
    main()
