"""Whole-command speed of ``lit-convnext doctor`` and of the pre-training file check, first and repeat run.

Generates ``--images`` small PNGs (10 classes, train/val) in a temporary folder, then times, each as a
whole process from start-up to exit (so import time counts):

- the baseline: a plain one-core Python loop that opens, verifies and hashes every file (no decode);
- the floor of a full check on this machine: a bare two-process loop that reads, hashes and decodes every file
  with Pillow and nothing else (no command line, natural order, cache, report or progress bar);
- ``python -m lit_convnext doctor ROOT`` decoding every image, with an empty cache and again (repeat run), and
  with one process (its CPU time against the default's shows what running processes side by side costs);
- the same with ``--header_only true``;
- the check ``fit`` runs before the first step (threads, as in training), first run and repeat run;
- ``python -c pass``, ``lit-convnext --help`` and ``lit-convnext doctor --help``;
- the naive loop and ``doctor``'s first run again with the files' contents out of memory (each file's pages dropped
  with ``posix_fadvise(DONTNEED)`` just before: a first look at a folder not read recently; the folder listing
  stays cached), where the disk's waits count.

Single whole-process timings on a small machine scatter by 20% or more, so every case runs once per round,
``--rounds`` times (a first run with a new, empty cache each round), and each case's speed is the median over
the rounds of the naive loop's time divided by the case's time in the same round (for the cases with the files
out of memory, the naive loop's time with its files out of memory); the CPU time (the process and its workers)
shows the work done whatever else the machine was doing.

Usage: ``python benchmarks/doctor.py [--images 20000] [--size 48] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

NAIVE_NAME = "naive loop: open + verify + hash, 1 core"
NAIVE_COLD_NAME = "naive loop, files not in memory"
#: Cases run with the folder's files dropped from memory just before: compared with NAIVE_COLD_NAME.
COLD = "files not in memory"
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

FLOOR_NAME = "bare decode: read + hash + decode, 2 processes"
FLOOR = """
import hashlib, io, os, sys
from concurrent.futures import ProcessPoolExecutor
from PIL import Image

def check(paths):
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        data = os.read(fd, os.fstat(fd).st_size + 1)
        os.close(fd)
        hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as img:
            img.load()

if __name__ == "__main__":
    paths = [os.path.join(d, f) for d, _, names in sorted(os.walk(sys.argv[1])) for f in sorted(names)]
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(check, [paths[i : i + 256] for i in range(0, len(paths), 256)]))
"""

FIT_CHECK = """
import sys
from pathlib import Path
from lit_convnext.checks.bad_files import check_samples
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


def drop_from_memory(root: Path) -> None:
    """Drop the page cache's copy of every file under ``root`` (clean pages only: the files were written long
    enough ago, or are synced here), so the next reader waits for the disk as after a reboot."""
    os.sync()
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, worker processes included) of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5, help="each case runs once per round")
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        start = time.perf_counter()
        generate(root, args.images, args.size)
        print(f"generated {args.images} PNGs of {args.size} px in {time.perf_counter() - start:.1f}s")
        floor = Path(tmp) / "bare_decode.py"
        floor.write_text(FLOOR, encoding="utf-8")
        doctor = [py, "-m", "lit_convnext", "doctor", str(root)]
        fit_check = [py, "-c", FIT_CHECK, str(root)]
        cases = [  # (name, command, cache folder: a new one each round for a first run, reused for a repeat run)
            ("python -c pass", [py, "-c", "pass"], "none"),
            ("lit-convnext --help", [py, "-m", "lit_convnext", "--help"], "none"),
            ("lit-convnext doctor --help", [py, "-m", "lit_convnext", "doctor", "--help"], "none"),
            (NAIVE_NAME, [py, "-c", NAIVE, str(root)], "none"),
            (FLOOR_NAME, [py, str(floor), str(root)], "none"),  # a file: worker processes import it
            ("doctor, pixels decoded, first run", doctor, "doctor"),
            ("doctor, repeat run (cached)", doctor, "doctor"),
            ("doctor --workers 1, first run", [*doctor, "--workers", "1"], "one"),  # CPU time: the work done alone
            ("doctor --header_only true, first run", [*doctor, "--header_only", "true"], "header"),
            ("fit's pre-training check, first run", fit_check, "fit"),
            ("fit's pre-training check, repeat run", fit_check, "fit"),
            (NAIVE_COLD_NAME, [py, "-c", NAIVE, str(root)], "none"),
            (f"doctor, first run, {COLD}", doctor, "doctor-cold"),
        ]
        times: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in cases}
        for round_ in range(args.rounds):  # every case once per round: a slow spell hits all of them alike
            for name, command, cache in cases:
                env = {**os.environ, "LIT_CONVNEXT_CACHE_DIR": str(Path(tmp) / f"cache-{cache}-{round_}")}
                if COLD in name:
                    drop_from_memory(root)
                times[name].append(run(command, env))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cores} cores, {platform.machine()}, Python {platform.python_version()}; whole processes, "
          f"{args.rounds} rounds; speed vs the naive loop = median over rounds of (naive wall / case wall):")
    naive = [wall for wall, _ in times[NAIVE_NAME]]
    naive_cold = [wall for wall, _ in times[NAIVE_COLD_NAME]]
    for name, runs in times.items():
        walls = [wall for wall, _ in runs]
        ratios = sorted(n / w for n, w in zip(naive_cold if COLD in name else naive, walls))
        print(f"  {name:42s} wall median {statistics.median(walls):5.2f} s (min {min(walls):5.2f}), CPU "
              f"{statistics.median(cpu for _, cpu in runs):5.2f} s, speed {statistics.median(ratios):4.2f}x "
              f"(range {ratios[0]:.2f}-{ratios[-1]:.2f})")


if __name__ == "__main__":
    main()
