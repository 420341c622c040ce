"""Throughput of ``lit-convnext doctor``'s fast pass (and optionally --deep) on many small images.

Generates ``--images`` small JPEG/PNG files (10 classes, train/val) in a temporary folder and prints
files per second. Usage: ``python benchmarks/doctor.py [--images 20000] [--workers N] [--deep]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lit_convnext.data.scan import scan


def generate(root: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        split = "val" if i % 5 == 0 else "train"
        folder = root / split / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        array = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        suffix = ".jpg" if i % 2 else ".png"
        Image.fromarray(array).save(folder / f"img{i}{suffix}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--deep", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate(Path(tmp), args.images, args.size)
        print(f"generated {args.images} images of {args.size}px in {time.perf_counter() - start:.1f}s")
        start = time.perf_counter()
        report = scan(tmp, image_size=224, deep=args.deep, workers=args.workers)
        seconds = time.perf_counter() - start
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{'deep' if args.deep else 'fast'} pass: {report.files_checked} files in {seconds:.2f}s = "
          f"{report.files_checked / seconds:,.0f} files/s ({args.workers or cores} workers, {cores} cores, "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()})")


if __name__ == "__main__":
    main()
