"""Whole-command speed of ``lit-convnext doctor`` and of the pre-training file check, first and repeat run.

Generates ``--images`` small PNGs (10 classes, train/val) in a temporary folder, then times, each as a
whole process from start-up to exit (so import time counts):

- the baseline: a plain one-core Python loop that opens, verifies and hashes every file (no decode);
- ``python -m lit_convnext doctor ROOT`` decoding every image, with an empty cache and again (repeat run);
- the same with ``--header_only true``;
- the check ``fit`` runs before the first step (threads, as in training), first run and repeat run;
- ``python -c pass``, ``lit-convnext --help`` and ``lit-convnext doctor --help``.

Each case runs ``--repeat`` times (a first run with a new, empty cache each time) and the fastest wall time is
reported, with the CPU time of that run (the process and its workers): on a shared machine the minimum is the
figure least disturbed by other jobs, and CPU time shows the work done whatever the machine was doing.

Usage: ``python benchmarks/doctor.py [--images 20000] [--size 48] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
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
check_samples([Sample(p, "any") for p in paths], "train", skip=False, workers=2)
"""


def generate(root: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / ("val" if (i // 10) % 5 == 0 else "train") / f"class{i % 10}"  # every class in both splits
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, 3)
        noise = rng.integers(-20, 20, (size, size, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"img{i}.png")


def timed(command: list[str], env: dict[str, str], repeat: int, fresh_cache: bool) -> tuple[float, float]:
    """Fastest wall time of ``repeat`` runs and the CPU seconds (user + system, workers included) of that run."""
    best = (float("inf"), 0.0)
    for attempt in range(repeat):
        run_env = {**env, "LIT_CONVNEXT_CACHE_DIR": f"{env['LIT_CONVNEXT_CACHE_DIR']}-{attempt}"} if fresh_cache else env
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(command, env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best = min(best, (wall, cpu))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the fastest is reported")
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        start = time.perf_counter()
        generate(root, args.images, args.size)
        print(f"generated {args.images} PNGs of {args.size} px in {time.perf_counter() - start:.1f}s")
        env = {**os.environ, "LIT_CONVNEXT_CACHE_DIR": str(Path(tmp) / "cache")}
        header_env = {**env, "LIT_CONVNEXT_CACHE_DIR": str(Path(tmp) / "cache-header")}
        fit_env = {**env, "LIT_CONVNEXT_CACHE_DIR": str(Path(tmp) / "cache-fit")}
        doctor = [py, "-m", "lit_convnext", "doctor", str(root)]
        cases = [  # (name, command, environment, each run with an empty cache)
            ("python -c pass", [py, "-c", "pass"], env, False),
            ("lit-convnext --help", [py, "-m", "lit_convnext", "--help"], env, False),
            ("lit-convnext doctor --help", [py, "-m", "lit_convnext", "doctor", "--help"], env, False),
            ("naive loop: open + verify + hash, 1 core", [py, "-c", NAIVE, str(root)], env, False),
            ("doctor, pixels decoded, first run", doctor, env, True),
            ("doctor, repeat run (cached)", doctor, {**env, "LIT_CONVNEXT_CACHE_DIR": f"{env['LIT_CONVNEXT_CACHE_DIR']}-0"},
             False),
            ("doctor --header_only true, first run", [*doctor, "--header_only", "true"], header_env, True),
            ("fit's pre-training check, first run", [py, "-c", FIT_CHECK, str(root)], fit_env, True),
            ("fit's pre-training check, repeat run", [py, "-c", FIT_CHECK, str(root)],
             {**fit_env, "LIT_CONVNEXT_CACHE_DIR": f"{fit_env['LIT_CONVNEXT_CACHE_DIR']}-0"}, False),
        ]
        results = [(name, *timed(command, case_env, args.repeat, fresh)) for name, command, case_env, fresh in cases]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cores} cores, {platform.machine()}, Python {platform.python_version()}; whole process, fastest of "
          f"{args.repeat}:")
    naive = next(wall for name, wall, _ in results if name.startswith("naive"))
    for name, wall, cpu in results:
        print(f"  {name:42s} {wall:6.2f} s wall {cpu:6.2f} s CPU  ({naive / wall:5.2f}x the naive loop's speed)")


if __name__ == "__main__":
    main()
