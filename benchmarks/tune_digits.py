"""The default recipe against ``lit-convnext tune`` with a 20-trial budget, on the digits (data/digits), and what
Hyperband's pruning saved. Prints a Markdown table (docs/tuning.md) and copies the search's figure to
docs/tuning_digits.png.

Small on purpose, so it fits in minutes on a 2-core CPU: convnext_atto from scratch at 32 px, a few epochs
(configs/quickstart.yaml with --model.image_size 32 --trainer.max_epochs EPOCHS), one torch thread per process.

    python benchmarks/tune_digits.py                  # 20 trials of 4 epochs, about half an hour on 2 shared cores
    python benchmarks/tune_digits.py --trials 6 --epochs 2
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path, log: Path | None = None) -> float:
    """Seconds one ``lit-convnext`` command takes (one torch thread unless OMP_NUM_THREADS says), its output in
    ``log`` (or dropped)."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with log.open("w") if log is not None else open(os.devnull, "w") as out:
        subprocess.run([sys.executable, "-m", "lit_convnext", *args], cwd=cwd, env=env, check=True, stdout=out,
                       stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def best_score(run_dir: Path, metric: str = "acc") -> float:
    """The best checkpoint's score, read from its name (``best-epoch003-acc0.9472.ckpt``)."""
    names = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    return float(names[-1].stem.rsplit(metric, 1)[1])


@dataclass
class Trials:
    """A finished study's ``trials.csv``, summed up: which trials completed, were pruned or failed, the best, and
    what pruning saved (an epoch's time from the complete trials, which run every epoch)."""

    rows: list[dict[str, str]]
    complete: list[dict[str, str]]
    pruned: list[dict[str, str]]
    failed: list[dict[str, str]]
    best: dict[str, str]
    epoch_s: float
    saved_epochs: int
    trial_epochs: int

    @classmethod
    def read(cls, study: Path, epochs: int) -> Trials:
        rows = list(csv.DictReader((study / "trials.csv").open(encoding="utf-8")))
        complete, pruned, failed = ([r for r in rows if r["state"] == state]
                                    for state in ("COMPLETE", "PRUNED", "FAIL"))
        return cls(rows, complete, pruned, failed, best=max(complete, key=lambda r: float(r["value"])),
                   epoch_s=statistics.median(float(r["seconds"]) / int(r["epochs"]) for r in complete),
                   saved_epochs=sum(epochs - int(r["epochs"]) for r in pruned),
                   trial_epochs=sum(int(r["epochs"]) for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=32)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tune_digits_"))
    fit = ["--config", str(REPO / "configs/quickstart.yaml"), "--data.root", str(REPO / "data/digits"),
           "--model.image_size", str(options.image_size), "--trainer.max_epochs", str(options.epochs),
           "--progress_bar.refresh_rate", "0", "--data.num_workers", "0", "--trainer.logger", "false"]
    recipe_seconds = run(["fit", *fit, "--trainer.default_root_dir", "recipe"], work)
    recipe = best_score(next((work / "recipe").glob("version_*")))
    tune_seconds = run(["tune", *fit, "--trainer.default_root_dir", "runs", "--tune.trials", str(options.trials)],
                       work)
    root = work / "runs" / "tune" / "study"
    trials = Trials.read(root, options.epochs)
    rows, complete, pruned, failed, best = trials.rows, trials.complete, trials.pruned, trials.failed, trials.best
    epoch_s, saved_epochs, trial_epochs = trials.epoch_s, trials.saved_epochs, trials.trial_epochs
    print(f"digits, convnext_atto from scratch, {options.image_size} px, {options.epochs} epochs per run, "
          f"{options.trials} trials; 2 CPU cores shared with other jobs, one torch thread per process")
    print()
    print("| run | val/acc1 | wall time |")
    print("|---|---|---|")
    print(f"| default recipe (configs/quickstart.yaml) | {recipe:.4f} | {recipe_seconds / 60:.1f} min |")
    print(f"| tune, {options.trials} trials (best: trial {best['number']}) | {float(best['value']):.4f} | "
          f"{tune_seconds / 60:.1f} min |")
    print()
    print(f"Trials: {len(complete)} complete, {len(pruned)} pruned, {len(failed)} failed; {trial_epochs} epochs run "
          f"of {options.epochs * len(rows)}: pruning saved {saved_epochs} epochs, about "
          f"{saved_epochs * epoch_s / 60:.1f} min at the complete trials' median {epoch_s:.0f} s per epoch "
          f"(trial start-up and end-of-fit analysis included in that figure).")
    print("Best trial's values: " + ", ".join(f"{k} {v}" for k, v in best.items() if k.startswith("model.")))
    shutil.copyfile(root / "tune.png", REPO / "docs" / "tuning_digits.png")
    shutil.copyfile(root / "trials.csv", work / "trials.csv")
    print(f"(files: {work})")


if __name__ == "__main__":
    main()
