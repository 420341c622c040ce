"""Whole-command speed of ``lit-convnext doctor`` and of the pre-training file check, first and repeat run.

Generates ``--images`` small PNGs (10 classes, train/val) in a temporary folder, then times, each as a
whole process from start-up to exit (so import time counts):

- the baseline: a plain one-core Python loop that opens, verifies and hashes every file (no decode);
- ``python -m lit_convnext doctor ROOT`` decoding every image, with an empty cache and again (repeat run);
- the same with ``--header_only true``;
- the check ``fit`` runs before the first step (threads, as in training), first run and repeat run;
- ``python -c pass``, ``lit-convnext --help`` and ``lit-convnext doctor --help``.

Usage: ``python benchmarks/doctor.py [--images 20000] [--size 48]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

NAIVE = """
import hashlib, sys
from pathlib import Path
from PIL import Image
for path in sorted(Path(sys.argv[1]).rglob("*.png")):
    data = path.read_bytes()
    hashlib.blake2b(data, digest_size=16).hexdigest()
    with Image.open(path) as img:
        img.verify()
"""

FIT_CHECK = """
import sys
from pathlib import Path
from lit_convnext.data.bad_files import check_samples
from lit_convnext.data.folders import Sample
paths = sorted(Path(sys.argv[1]).rglob("*.png"))
check_samples([Sample(p, 0) for p in paths], "train", skip=False)
"""


def generate(root: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / ("val" if i % 5 == 0 else "train") / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, 3)
        noise = rng.integers(-20, 20, (size, size, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"img{i}.png")


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=48)
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        start = time.perf_counter()
        generate(root, args.images, args.size)
        print(f"generated {args.images} PNGs of {args.size} px in {time.perf_counter() - start:.1f}s")
        env = {**os.environ, "LIT_CONVNEXT_CACHE_DIR": str(Path(tmp) / "cache")}
        cold = {**env, "LIT_CONVNEXT_CACHE_DIR": str(Path(tmp) / "cache-header")}
        fit_env = {**env, "LIT_CONVNEXT_CACHE_DIR": str(Path(tmp) / "cache-fit")}
        cases = [
            ("python -c pass", [py, "-c", "pass"], env),
            ("lit-convnext --help", [py, "-m", "lit_convnext", "--help"], env),
            ("lit-convnext doctor --help", [py, "-m", "lit_convnext", "doctor", "--help"], env),
            ("naive loop: open + verify + hash, 1 core", [py, "-c", NAIVE, str(root)], env),
            ("doctor, pixels decoded, first run", [py, "-m", "lit_convnext", "doctor", str(root)], env),
            ("doctor, repeat run (cached)", [py, "-m", "lit_convnext", "doctor", str(root)], env),
            ("doctor --header_only true, first run", [py, "-m", "lit_convnext", "doctor", str(root),
                                                      "--header_only", "true"], cold),
            ("fit's pre-training check, first run", [py, "-c", FIT_CHECK, str(root)], fit_env),
            ("fit's pre-training check, repeat run", [py, "-c", FIT_CHECK, str(root)], fit_env),
        ]
        results = [(name, timed(command, case_env)) for name, command, case_env in cases]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cores} cores, {platform.machine()}, Python {platform.python_version()}; whole process wall time:")
    naive = dict(results)["naive loop: open + verify + hash, 1 core"]
    for name, seconds in results:
        print(f"  {name:45s} {seconds:7.2f} s  ({naive / seconds:5.2f}x the naive loop's speed)")


if __name__ == "__main__":
    main()
