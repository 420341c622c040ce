"""Whole training runs, start-up to exit: ``lit-convnext fit`` vs a plain PyTorch loop vs timm's ``train.py``.

Generates a folder (``train/``, ``val/``, 10 classes) of small RGBA PNGs with real transparency, then times,
each as a whole process from start to exit, the same recipe on every side: convnext_atto from random weights,
batch 32, 2 loader workers, AdamW with layer decay 0.9 and weight decay 0.05, 1 warm-up epoch then cosine per
step, label smoothing 0.1, drop path 0.1, the new head's initial weights scaled by 0.001, RandAugment
``rand-m9-mstd0.5-inc1``, random erasing 0.25, hflip 0.5, no Mixup, no EMA, validation and a checkpoint every
epoch:

1. ``python -m lit_convnext fit``, first run (an empty file-check cache in ``LIT_CONVNEXT_CACHE_DIR``);
2. the same again, repeat run (same cache: the check is remembered);
3. a plain loop (``PLAIN`` below: timm model, torchvision ``ImageFolder`` with timm's ``create_transform``,
   timm's optimizer and scheduler factories, ``torch.save`` each epoch; no file check);
4. timm's ``train.py`` when ``--timm_train`` names it, its epochs, validations and saves timed by wrapping its
   functions (``TIMM_PHASES``; extract it from a timm checkout, e.g.
   ``git -C /work/.mirror/huggingface+pytorch-image-models/repo show HEAD:train.py > /tmp/timm_train.py``).

Pillow 13 refuses ``posterize`` with 0 bits, which timm's ``inc1`` RandAugment asks for at the top magnitude
(the app works around it in ``lit_convnext.data.transforms``); the plain loop and ``train.py`` get the same
total posterize through ``SHIM`` (run before them), or their loader workers die a few percent into an epoch.

The cases run in alternating order over ``--runs`` repetitions; with timm's ``train.py`` each case is also
compared with it run by run (the ratio of their walls within a repetition, which ran back to back), which holds
when the machine's speed drifts between repetitions. The app's run is broken down by
``timing.PhaseTimer`` (start-up until the first step, the file check, each epoch's train and validation time,
checkpoint writes, the end-of-fit analysis). Last, alpha compositing is timed in isolation: the app's
``load_rgb`` against ``Image.open(p).convert("RGB")`` (what torchvision's and timm's loaders do).

    python benchmarks/whole_run.py --timm_train /tmp/timm_train.py    # 2,000 images, 2 epochs, 2 runs: 3-8 minutes on 2 cores
    python benchmarks/whole_run.py --images 200 --epochs 1 --timm_train /tmp/timm_train.py   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import photos  # noqa: F401  (puts the repository on sys.path)
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

#: Runs before the plain loop and timm's train.py (see the module docstring): posterize to 0 bits is black.
SHIM = """
from PIL import Image, ImageOps
from timm.data import auto_augment

def _posterize(img, bits_to_keep, **_):
    if bits_to_keep >= 8:
        return img
    return Image.new(img.mode, img.size) if bits_to_keep <= 0 else ImageOps.posterize(img, bits_to_keep)

for _name, _op in list(auto_augment.NAME_TO_OP.items()):
    if _op is auto_augment.posterize:
        auto_augment.NAME_TO_OP[_name] = _posterize
"""

#: Runs timm's train.py (argv[1]) after ``SHIM``, timing its phases like ``timing.PhaseTimer`` does the app's:
#: its ``train_one_epoch``, ``validate`` and checkpoint saves are wrapped (instrumentation only), and the first
#: epoch's start stands for the first step (timm builds its loaders' workers lazily too).
TIMM_PHASES = """
import atexit, json, os, sys, time
from timm import utils

t0 = float(os.environ["WHOLE_RUN_T0"])
record = {"epochs": [], "saves": 0.0}
atexit.register(lambda: open(os.environ["WHOLE_RUN_PHASES"], "w").write(json.dumps({**record, "exit": time.time() - t0})))
path = sys.argv[1]
sys.argv = sys.argv[1:]
namespace = {"__name__": "timm_train", "__file__": path}
exec(compile(open(path).read(), path, "exec"), namespace)

def timed(function, key):
    def wrapper(*args, **kwargs):
        start = time.time()
        try:
            return function(*args, **kwargs)
        finally:
            if key == "train":
                record.setdefault("first_step", start - t0)
                record["epochs"].append({"train": time.time() - start})
            elif key == "val":
                record["epochs"][-1]["val"] = time.time() - start
            else:
                record["saves"] += time.time() - start
            record["last_end"] = time.time() - t0
    return wrapper

namespace["train_one_epoch"] = timed(namespace["train_one_epoch"], "train")
namespace["validate"] = timed(namespace["validate"], "val")
utils.CheckpointSaver.save_checkpoint = timed(utils.CheckpointSaver.save_checkpoint, "save")
namespace["main"]()
"""

#: The plain loop: argv = data root, output folder, epochs, batch size, workers, image size.
PLAIN = """
import json, math, os, sys, time
import torch
import torch.nn.functional as F
import timm
from timm.data import create_transform, resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torchvision.datasets import ImageFolder

root, out, epochs, batch, workers, size = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
torch.manual_seed(42)
model = timm.create_model("convnext_atto", pretrained=False, num_classes=10, drop_path_rate=0.1)
with torch.no_grad():  # the app's head_init_scale (configs/finetune.yaml)
    model.get_classifier().weight.mul_(0.001)
    model.get_classifier().bias.mul_(0.001)
config = resolve_data_config({"input_size": (3, size, size)}, model=model)
train_tf = create_transform(**config, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25,
                            re_mode="pixel", hflip=0.5)
eval_tf = create_transform(**config, is_training=False)
train = torch.utils.data.DataLoader(ImageFolder(f"{root}/train", train_tf), batch_size=batch, shuffle=True,
                                    drop_last=True, num_workers=workers, persistent_workers=True)
val = torch.utils.data.DataLoader(ImageFolder(f"{root}/val", eval_tf), batch_size=batch, num_workers=workers,
                                  persistent_workers=True)
optimizer = create_optimizer_v2(model, "adamw", lr=4e-4 * batch / 256, weight_decay=0.05, layer_decay=0.9)
scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=epochs, warmup_epochs=1, min_lr=1e-6,
                                   warmup_lr=1e-6, step_on_epochs=False, updates_per_epoch=len(train))
record = {"epochs": []}
step = 0
for epoch in range(epochs):
    start = time.time()
    model.train()
    for images, targets in train:
        record.setdefault("first_step", time.time() - float(os.environ["WHOLE_RUN_T0"]))
        loss = F.cross_entropy(model(images), targets, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        scheduler.step_update(num_updates=step)
    val_start = time.time()
    model.eval()
    correct = 0
    with torch.inference_mode():
        for images, targets in val:
            correct += (model(images).argmax(1) == targets).sum().item()
    saved = time.time()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
               f"{out}/epoch{epoch}.pth")
    end = time.time()
    record["epochs"].append({"train": val_start - start, "val": saved - val_start, "save": end - saved,
                             "acc1": correct / len(val.dataset)})
json.dump(record, open(os.environ["WHOLE_RUN_PHASES"], "w"))
"""


def generate(root: Path, count: int, size: int) -> None:
    """``count`` RGBA PNGs (a fifth in ``val/``): a coloured disc per class on a fully transparent background,
    with a soft, half-transparent edge, so compositing onto a background changes real pixels."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(count):
        label = i % 10
        folder = root / ("val" if (i // 10) % 5 == 0 else "train") / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.array([(label * 25) % 256, (255 - label * 20) % 256, (label * 70) % 256])
        noise = rng.integers(-30, 30, (size, size, 3))
        rgb = np.clip(colour + noise, 0, 255)
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        radius = size * (0.15 + 0.02 * label)
        distance = np.hypot(xx - cx, yy - cy)
        alpha = np.clip((radius - distance) / 3 + 0.5, 0, 1) * 255
        pixels = np.dstack([rgb, alpha]).astype(np.uint8)
        Image.fromarray(pixels, "RGBA").save(folder / f"img{i:05d}.png")


def run(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> tuple[float, dict]:
    """Wall time of ``command`` as a whole process in ``cwd``, and the phases it wrote to ``$WHOLE_RUN_PHASES``.

    ``cwd`` is the case's own folder: ``python -m`` puts the working directory first on ``sys.path``, so
    ``$PYTHONPATH`` alone decides which ``lit_convnext`` runs."""
    phases = log.with_suffix(".json")
    phases.unlink(missing_ok=True)
    start = time.time()
    with open(log, "w") as out:
        done = subprocess.run(command, env={**env, "WHOLE_RUN_T0": repr(start), "WHOLE_RUN_PHASES": str(phases)},
                              stdout=out, stderr=subprocess.STDOUT, check=False, cwd=cwd)
    wall = time.time() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... exited {done.returncode}; see {log}:\n"
                         + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    return wall, json.loads(phases.read_text()) if phases.is_file() else {}


def app_command(args, root: Path, work: Path) -> list[str]:
    return [
        sys.executable, "-m", "lit_convnext", "fit", "--config", str(REPO / "configs/finetune.yaml"),
        "--model.model_name", "convnext_atto", "--model.pretrained", "false",
        "--model.image_size", str(args.size), "--data.root", str(root), "--data.batch_size", str(args.batch_size),
        "--data.num_workers", str(args.workers), "--trainer.max_epochs", str(args.epochs),
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.default_root_dir", str(work),
        "--trainer.callbacks+=timing.PhaseTimer",
    ]


def timm_command(args, root: Path, work: Path) -> list[str]:
    return [
        sys.executable, "-c", SHIM + TIMM_PHASES, str(args.timm_train), "--data-dir", str(root), "--train-split", "train",
        "--val-split", "val", "--model", "convnext_atto", "--num-classes", "10", "--img-size", str(args.size),
        "-b", str(args.batch_size), "-j", str(args.workers), "--epochs", str(args.epochs), "--device", "cpu",
        "--no-prefetcher", "--opt", "adamw", "--lr", str(4e-4 * args.batch_size / 256), "--weight-decay", "0.05",
        "--layer-decay", "0.9", "--sched", "cosine", "--sched-on-updates", "--warmup-epochs", "1",
        "--warmup-lr", "1e-6", "--min-lr", "1e-6", "--cooldown-epochs", "0", "--smoothing", "0.1",
        "--drop-path", "0.1", "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--remode", "pixel",
        "--hflip", "0.5", "--train-interpolation", "bicubic", "--mixup", "0", "--cutmix", "0", "--head-init-scale", "0.001",
        "--checkpoint-hist", "1", "--log-interval", "1000", "--output", str(work), "--experiment", "timm",
    ]


def epoch_times(phases: dict) -> tuple[list[float], list[float]]:
    """Each epoch's training and validation seconds, from any case's phases (the app's epochs have start and end)."""
    epochs = phases.get("epochs", [])
    train = [e["train"] if "train" in e else e["end"] - e["start"] - e["val"] for e in epochs]
    return train, [e.get("val", 0.0) for e in epochs]


def epochs_line(phases: dict) -> str:
    """Each epoch's training and validation seconds, as the per-run lines print them."""
    train, val = epoch_times(phases)
    return f"epochs train {', '.join(f'{t:.1f}' for t in train)} s, val {', '.join(f'{v:.1f}' for v in val)} s"


def breakdown(phases: dict) -> str:
    """One line naming where an app run's time went."""
    after = phases["exit"] - phases.get("fit_end", phases["exit"])
    return (f"start-up to first step {phases.get('first_step', float('nan')):.1f} s "
            f"(of which file check {phases['check']:.1f} s, sanity check {phases.get('sanity_check', 0):.1f} s); "
            f"{epochs_line(phases)}; checkpoint writes {phases['checkpoint_writes']:.2f} s; after fit {after:.1f} s "
            f"(end-of-fit analysis {phases['analysis']:.1f} s)")


def alpha_cost(root: Path, count: int) -> tuple[float, float]:
    """Microseconds per image: the app's ``load_rgb`` and ``Image.open(p).convert("RGB")``, best of 3 passes."""
    from lit_convnext.data.images import load_rgb

    paths = sorted(root.rglob("*.png"))[:count]

    def plain(path):
        with Image.open(path) as img:
            return img.convert("RGB")

    results = []
    for load in (load_rgb, plain):
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for path in paths:
                load(path)
            best = min(best, time.perf_counter() - start)
        results.append(best / len(paths) * 1e6)
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="PNGs in all (a fifth go to val/)")
    parser.add_argument("--size", type=int, default=64, help="image side and training resolution, pixels")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2, help="repetitions of every case, order alternating")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timm_train", "--timm-train", type=Path, help="timm's train.py (else that case is left out)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="whole_run-") as tmp:
        tmp = Path(tmp)
        root = tmp / "data"
        start = time.perf_counter()
        generate(root, args.images, args.size)
        print(f"generated {args.images} RGBA PNGs of {args.size} px in {time.perf_counter() - start:.1f} s", flush=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks"), str(REPO)]),
               "PYTHONWARNINGS": "ignore"}
        (tmp / "plain.py").write_text(SHIM + PLAIN)
        cases = ["app first", "app repeat", "plain"] + (["timm train.py"] if args.timm_train else [])
        walls: dict[str, list[float]] = {case: [] for case in cases}
        app_phases: dict[str, list[dict]] = {"app first": [], "app repeat": []}
        epochs: dict[str, tuple[list[float], list[float]]] = {case: ([], []) for case in cases}
        for repetition in range(args.runs):
            cache = tmp / f"cache{repetition}"  # a fresh, empty check cache for this repetition's first run
            order = cases if repetition % 2 == 0 else cases[2:][::-1] + cases[:2]
            for case in order:
                work = tmp / f"work-{case.replace(' ', '_')}-{repetition}"
                work.mkdir()
                log = tmp / f"{case.replace(' ', '_')}-{repetition}.log"
                if case.startswith("app"):
                    command = app_command(args, root, work)
                    wall, phases = run(command, {**env, "LIT_CONVNEXT_CACHE_DIR": str(cache)}, log, work)
                    app_phases[case].append(phases)
                elif case == "plain":
                    command = [sys.executable, str(tmp / "plain.py"), str(root), str(work), str(args.epochs),
                               str(args.batch_size), str(args.workers), str(args.size)]
                    wall, phases = run(command, env, log, work)
                else:
                    wall, phases = run(timm_command(args, root, work), env, log, work)
                walls[case].append(wall)
                for kept, new_times in zip(epochs[case], epoch_times(phases)):
                    kept.extend(new_times)
                extra = f"; {breakdown(phases)}" if case.startswith("app") else ""
                if case == "plain":
                    extra = (f"; start-up to first step {phases['first_step']:.1f} s; {epochs_line(phases)}, saves "
                             + ", ".join(f"{e['save']:.2f}" for e in phases["epochs"]) + " s")
                if case == "timm train.py":
                    extra = (f"; start-up to first epoch {phases['first_step']:.1f} s; {epochs_line(phases)}"
                             + f"; checkpoint saves {phases['saves']:.2f} s; after the last "
                             f"{phases['exit'] - phases['last_end']:.1f} s")
                print(f"run {repetition + 1}, {case}: {wall:.1f} s{extra}", flush=True)

        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        import timm
        import torch

        print(f"\nconvnext_atto {args.size}px from scratch, {args.images} PNGs ({args.images * 4 // 5} train), "
              f"{args.epochs} epochs, batch {args.batch_size}, {args.workers} workers; torch {torch.__version__}, "
              f"timm {timm.__version__}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
              f"load avg {load:.1f}")
        plain = statistics.median(walls["plain"])
        reference = statistics.median(walls["timm train.py"]) if args.timm_train else None
        print(f"{'case':<16}{'wall s (median)':>16}{'per epoch s':>13}{'vs plain':>10}{'vs timm':>9}"
              f"{'train epoch s':>15}{'val s':>7}   runs")
        for case in cases:
            wall = statistics.median(walls[case])
            versus_timm = f"{wall / reference:.3f}" if reference else "-"
            train, val = (f"{statistics.median(times):.2f}" if times else "-" for times in epochs[case])
            print(f"{case:<16}{wall:>16.1f}{wall / args.epochs:>13.1f}{wall / plain:>10.3f}{versus_timm:>9}"
                  f"{train:>15}{val:>7}   " + ", ".join(f"{w:.1f}" for w in walls[case]))
        print("(train epoch, val: medians over every epoch of every run; the app's validation workers start in "
              "Lightning's sanity check, before its first step, the others' in their first validation)")
        if args.timm_train and args.runs > 1:
            # Each repetition's cases ran back to back, so a slow spell of the machine hits both sides of a pair.
            print("paired with timm's train.py of the same repetition, median (min-max) of the runs' ratios:")
            for case in cases[:3]:
                ratios = sorted(a / b for a, b in zip(walls[case], walls["timm train.py"]))
                print(f"  {case:<14}{statistics.median(ratios):.3f} ({ratios[0]:.3f}-{ratios[-1]:.3f})")
        app_us, plain_us = alpha_cost(root, 500)
        print(f"\nalpha compositing, 500 of these PNGs, one core: load_rgb {app_us:.0f} us/image, "
              f"Image.open().convert('RGB') {plain_us:.0f} us/image (+{app_us - plain_us:.0f} us, "
              f"{app_us / plain_us:.2f}x)")


if __name__ == "__main__":
    main()
