"""Images/second from an image folder vs the litdata optimized dataset of ``lit-convnext optimize`` (both storages),
and what each costs before the first epoch: the folder's scan and first file check, the optimized dataset's writing.

A folder of small JPEGs (10 colour classes) is generated once into ``~/.cache/lit-convnext-bench/`` (not committed).
Each pass builds a fresh loader over the training split with the evaluation transform at ``--size`` px (the least
work per image, so reading and decoding show), then with the recipe's training transform, and times ``--per_pass``
images; the passes alternate between the three sources and the table gives each one's median.

    python benchmarks/streaming.py                          # 100,000 images: generation once, then ~20 minutes on 2 cores
    python benchmarks/streaming.py --count 5000 --per_pass 2000 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = 10


def make_folder(root: Path, count: int, size: int) -> Path:
    """``count`` noisy JPEGs of ``size`` px in ``CLASSES`` colour folders, written once (a marker file says done)."""
    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(0)
    colors = rng.integers(0, 256, size=(CLASSES, 3))
    for i in range(count):
        c = i % CLASSES
        pixels = np.clip(colors[c][None, None, :] + rng.integers(-40, 40, size=(size, size, 3)), 0, 255)
        path = root / f"class{c}" / f"img{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
    done.touch()
    return root


def transforms(size: int) -> dict:
    """The evaluation transform and the recipe's training transform (RandAugment, erasing) at ``size`` px."""
    import timm
    from timm.data import resolve_model_data_config

    from lit_convnext.data.transforms import TrainAugmentation, build_eval_transform, build_train_transform

    config = dict(resolve_model_data_config(timm.create_model("convnext_atto", pretrained=False)))
    config["input_size"] = (3, size, size)
    return {"evaluation": build_eval_transform(config), "training": build_train_transform(config, TrainAugmentation())}


def images_per_second(loader, limit: int) -> float:
    seen, start = 0, time.perf_counter()
    for images, _ in loader:
        seen += len(images)
        if seen >= limit:
            break
    return seen / (time.perf_counter() - start)


def plot(path: Path, sources: tuple[str, ...], rates: dict[tuple[str, str], list[float]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 3.2))
    height = 0.38
    for offset, kind in ((-height / 2, "evaluation"), (height / 2, "training")):
        values = [statistics.median(rates[(name, kind)]) for name in sources]
        bars = ax.barh([i + offset for i in range(len(sources))], values, height, label=f"{kind} transform")
        ax.bar_label(bars, fmt="%.0f", padding=3, fontsize=8)
    ax.set_yticks(range(len(sources)), sources)
    ax.invert_yaxis()
    ax.set_xlabel("images / s through the loader (median)")
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.12)  # room for the labels
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=32, help="image and training resolution (px)")
    parser.add_argument("--per_pass", type=int, default=20_000, help="images timed per pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "lit-convnext-bench")
    parser.add_argument("--plot", type=Path, default=None, help="also draw the images/s as bars into this PNG")
    args = parser.parse_args()

    from torch.utils.data import DataLoader

    from lit_convnext.checks.bad_files import check_samples
    from lit_convnext.data.datasets import LabeledImages
    from lit_convnext.data.folders import read_folder_splits
    from lit_convnext.data.streaming import OptimizedDataset, write_optimized

    folder = make_folder(args.cache / f"stream-{args.count}-{args.size}px", args.count, args.size)
    work = Path(tempfile.mkdtemp(prefix="lit-convnext-stream-"))
    os.environ["LIT_CONVNEXT_CACHE_DIR"] = str(work / "check-cache")  # the file check's first run, not a cached one
    try:
        before: dict[str, float] = {}
        start = time.perf_counter()
        splits = read_folder_splits(folder)
        before["folder: scan"] = time.perf_counter() - start
        start = time.perf_counter()
        for name in ("train", "val"):
            check_samples(getattr(splits, name), name, False, args.workers)
        before["folder: file check before training (first run)"] = time.perf_counter() - start
        sizes, streams = {}, {}
        for storage in ("encoded", "decoded"):
            out = work / storage
            start = time.perf_counter()
            write_optimized(splits, "multiclass", str(out), storage, args.size, args.workers, {})
            before[f"optimize, {storage}"] = time.perf_counter() - start
            sizes[storage] = sum(f.stat().st_size for f in (out / "train").glob("*.bin"))
            streams[storage] = OptimizedDataset.open(out)

        targets = splits.targets(splits.train)
        sources = ("folder", "optimized, encoded", "optimized, decoded")
        rates: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeats):
            for kind, transform in transforms(args.size).items():
                folder_data = LabeledImages([s.path for s in splits.train], targets, transform)
                loader = DataLoader(folder_data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                    drop_last=True)
                rates.setdefault(("folder", kind), []).append(images_per_second(loader, args.per_pass))
                for storage, stream in streams.items():
                    loader = stream.train_loader(stream.train_dataset(transform, 0), args.batch_size, args.workers,
                                                 False)
                    rates.setdefault((f"optimized, {storage}", kind), []).append(
                        images_per_second(loader, args.per_pass))

        folder_bytes = sum(s.path.stat().st_size for s in splits.train)
        print(f"\n{args.count:,} {args.size} px JPEGs, {len(splits.train):,} in the training split; "
              f"{args.workers} loader workers, batch {args.batch_size}; "
              f"median of {args.repeats} passes of {args.per_pass:,} images\n")
        print("| source | images/s, evaluation transform | images/s, training transform | training split on disk |")
        print("|---|---:|---:|---:|")
        on_disk = {"folder": folder_bytes, "optimized, encoded": sizes["encoded"],
                   "optimized, decoded": sizes["decoded"]}
        for name in sources:
            per_kind = [f"{statistics.median(rates[(name, kind)]):,.0f}" for kind in ("evaluation", "training")]
            print(f"| {name} | {' | '.join(per_kind)} | {on_disk[name] / 1e6:,.0f} MB |")
        if args.plot is not None:
            plot(args.plot, sources, rates, f"{args.count:,} {args.size} px JPEGs, {args.workers} loader workers")
        print("\n| before the first epoch | seconds |")
        print("|---|---:|")
        for name, seconds in before.items():
            print(f"| {name} | {seconds:.1f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
