"""How the per-file costs grow with the folder: 10,000, 100,000 and 1,000,000 small images.

Generates (once, into ``--cache``, by default ``~/.cache/lit-convnext-bench``; never into the repository) folders
of 16 px PNGs in ``train/`` and ``val/`` (10 classes, one image in five in ``val``): a few hundred pictures are
encoded once and each file gets its own text chunk, so every file has its own bytes (no duplicate groups) and
writing a million of them takes a minute or two. Then, each as its own process, measures:

- ``scan``: the training scan of the folder (``data.folders.read_folder_splits``);
- ``check``: the check ``fit`` runs before the first step (``checks.bad_files.check_samples`` over train and val,
  two worker processes), first with an empty cache and again (``check cached``: one ``stat`` per file);
- ``doctor``: the whole ``python -m lit_convnext doctor ROOT`` process, first run and cached, next to the naive
  one-process loop that opens, verifies and hashes every file (the speed ``doctor`` has to match). Both first runs
  are measured twice: with the files' contents dropped from memory just before (``posix_fadvise(DONTNEED)``: a
  first look at a folder not read recently, where the disk's waits count) and with the files in memory (after an
  unmeasured run), where only the CPU counts. The check's first run is measured from disk too;
- ``predict``: the whole ``python -m lit_convnext predict`` process over the folder with a ``convnext_atto``
  checkpoint at 32 px (made once by a one-step ``fit``);
- ``end-of-fit``: the analysis ``fit`` ends with, given the best checkpoint's validation logits over every image of
  the folder (synthetic logits: the validation pass itself is ``predict``'s cost): calibration, the per-image CSV,
  cleanlab's label issues and ``report.html`` (``EvaluationReport._finish`` and ``build_report``).

For each: wall seconds (whole process, and the operation alone after start-up), CPU seconds of the operation (its
process and workers: the cost whatever else a shared machine runs) and peak memory: the resident set of the main
process and of its largest worker (a forked worker's counts the pages it still shares with the main process).
Every case runs ``--rounds`` times (``predict`` and the analysis ``--model_rounds``), the median is
kept. ``--plot`` draws both on log-log axes.

Usage: ``python benchmarks/scaling.py [--sizes 10000 100000 1000000] [--rounds 3] [--model_max 100000]
[--model_rounds 1] [--operations ...] [--plot docs/scaling.png] [--json benchmarks/scaling_results.json]``
(``--json`` merges into the file's figures, so sizes can be measured in separate runs).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from doctor import NAIVE, drop_from_memory  # benchmarks/doctor.py's naive loop: the same baseline at every size

CLASSES = 10
DISTINCT = 300  # pictures encoded; each file is one of them with its own text chunk
PIXELS = 16
IMAGE_SIZE = 32  # the model's input size for predict and the checkpoint
OPERATIONS = ("scan", "check, first run", "check, cached", "naive loop (1 process)", "doctor, first run",
              "naive loop, files in memory", "doctor, first run, files in memory", "doctor, cached", "predict",
              "end-of-fit analysis")
#: Cases measured with the files' contents dropped from memory just before (a first look at a folder not read
#: recently); "files in memory" cases run once unmeasured first, which reads them in.
FROM_DISK = ("check, first run", "naive loop (1 process)", "doctor, first run")
WARMED = ("naive loop, files in memory", "doctor, first run, files in memory")
#: Cases that load the model: their forward pass over a million images would take hours on two cores.
MODEL_CASES = ("predict", "end-of-fit analysis")



# ------------------------------------------------------------------------------------------------ folders
def _pictures() -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(DISTINCT):
        base = rng.integers(0, 255, 3)
        noise = rng.integers(-30, 30, (PIXELS, PIXELS, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def _own_bytes(png: bytes, index: int) -> bytes:
    """``png`` with a ``tEXt`` chunk naming ``index`` before its end chunk: a valid PNG with bytes of its own."""
    text = b"id\x00" + str(index).encode()
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    return png[:-12] + chunk + png[-12:]


def _write_range(root: str, start: int, stop: int) -> None:
    pictures = _pictures()
    for i in range(start, stop):
        split = "val" if (i // CLASSES) % 5 == 0 else "train"  # every class in both splits
        with open(f"{root}/{split}/class{i % CLASSES}/img{i}.png", "wb") as handle:
            handle.write(_own_bytes(pictures[i % DISTINCT], i))


def folder(cache: Path, count: int) -> Path:
    """The generated folder of ``count`` images (written on first use; a hidden marker says it is complete)."""
    root = cache / f"png{PIXELS}-{count}"
    if (root / ".complete").exists():
        return root
    for split in ("train", "val"):
        for k in range(CLASSES):
            (root / split / f"class{k}").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    step = 20_000
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_write_range, [str(root)] * len(range(0, count, step)), range(0, count, step),
                      [min(s + step, count) for s in range(0, count, step)]))
    (root / ".complete").touch()
    print(f"wrote {count} PNGs into {root} in {time.perf_counter() - start:.0f} s", flush=True)
    return root


def checkpoint(cache: Path, root: Path) -> Path:
    """A ``convnext_atto`` checkpoint at 32 px from a one-step ``fit`` on ``root`` (made once)."""
    path = cache / "atto-32.ckpt"
    if path.exists():
        return path
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "lit_convnext", "fit", "--data.root", str(root),
                        "--model.model_name", "convnext_atto", "--model.pretrained", "false",
                        "--model.image_size", str(IMAGE_SIZE), "--data.batch_size", "8", "--data.num_workers", "0",
                        "--data.check_files", "false", "--trainer.accelerator", "cpu", "--trainer.max_steps", "1",
                        "--trainer.limit_val_batches", "1", "--progress_bar.refresh_rate", "0",
                        "--evaluation.enabled", "false", "--trainer.default_root_dir", tmp],
                       check=True, stdout=subprocess.DEVNULL)
        best = min(Path(tmp).rglob("*.ckpt"), key=lambda p: p.name == "last.ckpt")
        best.replace(path)
    return path


# ---------------------------------------------------------------------------------------- one measurement
def child(operation: str, root: Path, ckpt: Path, result: Path) -> None:
    """Run ``operation`` in this process; write its seconds and peak memory to ``result``."""
    start = time.perf_counter()
    cpu_start = _cpu()
    code = 0
    try:
        if operation == "scan":
            from lit_convnext.data.folders import read_folder_splits

            read_folder_splits(root)
        elif operation.startswith("check"):
            from lit_convnext.checks.bad_files import check_samples
            from lit_convnext.data.folders import read_folder_splits

            splits = read_folder_splits(root)
            start, cpu_start = time.perf_counter(), _cpu()  # the check alone: the scan is measured above
            check_samples(splits.train + splits.val, "train", skip=False, workers=2)
        elif operation.startswith("naive"):
            sys.argv = ["naive", str(root)]
            exec(compile(NAIVE, "naive", "exec"), {})
        elif operation.startswith("doctor"):
            sys.argv = ["lit-convnext", "doctor", str(root)]
            _console()
        elif operation == "predict":
            with tempfile.TemporaryDirectory() as tmp:
                sys.argv = ["lit-convnext", "predict", "--ckpt_path", str(ckpt), "--data.predict_dir", str(root),
                            "--data.num_workers", "1", "--data.batch_size", "256", "--trainer.accelerator", "cpu",
                            "--progress_bar.refresh_rate", "0", "--trainer.default_root_dir", tmp,
                            "--output", f"{tmp}/predictions.csv"]
                _console()
        elif operation.startswith("end-of-fit"):
            start, cpu_start = _end_of_fit(root, ckpt)
        else:
            raise SystemExit(f"unknown operation {operation}")
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu_start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result.write_text(json.dumps({"seconds": seconds, "cpu": cpu, "rss_mb": own, "worker_rss_mb": workers,
                                  "code": code}))


def _cpu() -> float:
    """CPU seconds of this process and of its finished workers: what the operation cost whatever the load."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def _console() -> None:
    """The console script's own path (``main()`` without arguments), as ``lit-convnext`` runs it."""
    from lit_convnext.cli.entry import main

    main()


def _end_of_fit(root: Path, ckpt: Path) -> tuple[float, float]:
    """What :meth:`EvaluationReport.analyse_fit` does once the best checkpoint's validation logits are kept; returns
    when the analysis started and the CPU time then (after the imports, the listing and the model's loading: a fit
    has done them)."""
    import torch

    from lit_convnext.data.folders import iter_images
    from lit_convnext.evaluation.calibration import calibration_summary, fit_temperature
    from lit_convnext.evaluation.end_of_fit import write_label_issues, write_predictions
    from lit_convnext.evaluation.report import build_report
    from lit_convnext.model.classifier import ConvNeXtClassifier

    paths = [str(p) for p in iter_images(root)]
    targets = torch.tensor([int(Path(p).parent.name.removeprefix("class")) for p in paths])
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(len(paths), CLASSES, generator=generator)
    logits[torch.arange(len(paths)), targets] += 2.0  # a model right about 80% of the time
    model = ConvNeXtClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True, pretrained=False)
    model.eval()
    start, cpu_start = time.perf_counter(), _cpu()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        temperature = fit_temperature(logits, targets)
        model.calibration["temperature"] = temperature
        summary = calibration_summary(logits, targets, temperature)
        (run_dir / "val_calibration.json").write_text(json.dumps(summary))
        probabilities = model.probabilities(logits)
        write_predictions(run_dir / "val_predictions.csv", paths, list(model.class_names), probabilities, targets, 5)
        write_label_issues(run_dir / "val_label_issues.csv", paths, list(model.class_names), probabilities, targets)
        build_report(run_dir, model)
    return start, cpu_start


def measure(operation: str, root: Path, ckpt: Path, cache_dir: Path) -> dict[str, float]:
    """One run of ``operation`` as its own process (``cache_dir``: its file-check cache)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        env = {**os.environ, "LIT_CONVNEXT_CACHE_DIR": str(cache_dir)}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--child", operation, str(root), str(ckpt), str(result)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0 or not result.exists():
            raise SystemExit(f"{operation} on {root} failed: {done.stderr.decode()[-2000:]}")
        figures = json.loads(result.read_text())
    return {**figures, "wall": wall}


# ------------------------------------------------------------------------------------------------- output
def plot(results: dict, path: Path, title: str) -> None:
    """CPU seconds (what the operation costs whatever else the shared machine runs) and peak memory against the
    folder's size, log-log: a flat cost per image is a line of slope 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, speed) = plt.subplots(1, 3, figsize=(19, 5.5))
    for operation in OPERATIONS:
        points = sorted((int(n), cases[operation]) for n, cases in results.items() if operation in cases)
        if not points:
            continue
        sizes = [n for n, _ in points]
        style = "--" if operation.startswith("naive") else "-"
        line, = left.plot(sizes, [r.get("cpu", r["seconds"]) for _, r in points], style, marker="o", label=operation)
        right.plot(sizes, [r["rss_mb"] for _, r in points], style, marker="o", color=line.get_color(),
                   label=operation)
    sizes = sorted(int(n) for n in results)
    left.plot(sizes, [n * 1e-4 for n in sizes], ":", color="grey", label="slope 1: 100 µs per image")
    right.plot(sizes, [n * 1e-3 for n in sizes], ":", color="grey", label="slope 1: 1 KiB per image")
    for operation in FROM_DISK[1:] + WARMED:  # wall time: what the user waits for, where doctor meets the loop
        points = sorted((int(n), cases[operation]["wall"]) for n, cases in results.items() if operation in cases)
        if points:
            from_disk = operation in FROM_DISK
            speed.plot([n for n, _ in points], [w for _, w in points], "--" if operation.startswith("naive") else "-",
                       marker="o", color="tab:red" if from_disk else "tab:blue",
                       label=f"{operation}, from disk" if from_disk else operation)
    speed.set_ylabel("wall seconds, whole process")
    speed.set_title("doctor's first run (solid) against the naive loop (dashed)")
    speed.legend(fontsize=8)
    for axis in (left, right, speed):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("images in the folder")
        axis.grid(True, which="both", alpha=0.3)
    left.set_ylabel("CPU seconds of the operation (workers included)")
    left.set_title("Time: parallel to the grey line = the same cost per image")
    right.set_ylabel("peak resident memory of the main process, MiB")
    right.set_title("Peak memory")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def table(results: dict) -> str:
    """Markdown: per operation and size, µs per image (the operation's wall seconds / images, then its CPU seconds,
    workers included / images) and peak memory of the main process (its largest worker's after a plus), then the
    doctor's speed against the naive loop."""
    sizes = sorted(results, key=int)
    lines = ["| operation | " + " | ".join(f"{int(n):,} images" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for operation in OPERATIONS:
        cells = []
        for n in sizes:
            r = results[n].get(operation)
            if r is None:
                cells.append("not measured")
                continue
            workers = f" (+{r['worker_rss_mb']:.0f})" if r["worker_rss_mb"] > 1 else ""
            cpu = f" / {r['cpu'] / int(n) * 1e6:.0f}" if "cpu" in r else ""
            cells.append(f"{r['seconds'] / int(n) * 1e6:.0f}{cpu} µs, {r['rss_mb']:.0f} MiB{workers}")
        if any(cell != "not measured" for cell in cells):
            lines.append(f"| {operation} | " + " | ".join(cells) + " |")
    for naive, doctor, label in (("naive loop (1 process)", "doctor, first run", "files not in memory"),
                                 ("naive loop, files in memory", "doctor, first run, files in memory",
                                  "files in memory")):
        speeds = [f"{results[n][naive]['wall'] / results[n][doctor]['wall']:.2f}x"
                  if naive in results[n] and doctor in results[n] else "" for n in sizes]
        lines.append(f"| doctor's first run against the naive loop, {label} (whole processes) | "
                     + " | ".join(speeds) + " |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, operation, root, ckpt, result = sys.argv
        child(operation, Path(root), Path(ckpt), Path(result))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=3, help="runs per case; the median is kept")
    parser.add_argument("--model_max", type=int, default=100_000, help="largest folder for predict and end-of-fit")
    parser.add_argument("--model_rounds", type=int, default=1, help="runs of predict and end-of-fit (minutes each)")
    parser.add_argument("--operations", nargs="+", default=list(OPERATIONS), choices=OPERATIONS)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "lit-convnext-bench")
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here; merged with its content")
    args = parser.parse_args()
    results: dict = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
    ckpt = checkpoint(args.cache, folder(args.cache, min(args.sizes)))
    for count in sorted(args.sizes):
        root = folder(args.cache, count)
        for operation in args.operations:
            if operation in MODEL_CASES and count > args.model_max:
                continue
            runs = []
            for round_ in range(args.model_rounds if operation in MODEL_CASES else args.rounds):
                with tempfile.TemporaryDirectory() as check_cache:
                    if operation.endswith("cached"):  # the first run fills the cache the measured run reads
                        measure(operation, root, ckpt, Path(check_cache))
                    elif operation in WARMED:  # reads every file into memory (its cache is not kept)
                        with tempfile.TemporaryDirectory() as other_cache:
                            measure(operation, root, ckpt, Path(other_cache))
                    elif operation in FROM_DISK:
                        drop_from_memory(root)
                    runs.append(measure(operation, root, ckpt, Path(check_cache)))
            keep = {key: statistics.median(r[key] for r in runs) for key in ("wall", "seconds", "cpu", "rss_mb",
                                                                               "worker_rss_mb")}
            keep["walls"] = [r["wall"] for r in runs]
            results.setdefault(str(count), {})[operation] = keep
            print(f"{count:>9,} {operation:24s} {keep['wall']:8.2f} s whole process ({keep['seconds']:.2f} s in the "
                  f"operation, {keep['seconds'] / count * 1e6:6.1f} µs/image, CPU {keep['cpu'] / count * 1e6:6.1f} "
                  f"µs/image), peak {keep['rss_mb']:.0f} MiB (workers {keep['worker_rss_mb']:.0f} MiB)", flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1) + "\n")
    load = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} shared CPU cores, {platform.machine()}, Python {platform.python_version()}, load average "
          f"{load:.1f} at the end; medians of {args.rounds} runs ({args.model_rounds} for predict and the analysis)")
    # The plot draws every figure in --json, which may come from earlier runs on a machine loaded otherwise.
    title = (f"{cores} shared CPU cores, {platform.machine()}, Python {platform.python_version()}; each point the "
             f"median of its runs (figures from {'several runs' if args.json else 'this run'})")
    print(table(results))
    if args.plot:
        plot(results, args.plot, title)


if __name__ == "__main__":
    main()
