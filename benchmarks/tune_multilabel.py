"""The default recipe against ``lit-convnext tune`` with a 20-trial budget on the generated multi-label digits task
(issue 32, items 6 and 7), and what Hyperband's pruning saved. Prints a Markdown table (docs/tuning.md) and copies the
search's figure to docs/tuning_multilabel.png.

The task is ``data/make_multilabel_digits.py``'s (2x2 grids holding two or three digit scans, labelled with the
digits present), written to a temporary folder with ``--train`` / ``--val`` images; the recipe is
``configs/multilabel_quickstart.yaml`` at ``--image-size`` px for ``--epochs`` epochs per run (enough epochs that
Hyperband's rungs, at 1 and 3 epochs, stop trials well before the end), one torch thread per process.

    python benchmarks/tune_multilabel.py                    # 20 trials of 9 epochs: 29 min on 2 busy shared cores
    python benchmarks/tune_multilabel.py --trials 4 --epochs 3 --train 200 --val 100
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tune_digits import REPO, Trials, best_score, run  # run as python benchmarks/tune_multilabel.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--work", type=Path, help="a folder for the task and the runs (default: a new temporary one)")
    options = parser.parse_args()
    work = options.work or Path(tempfile.mkdtemp(prefix="tune_multilabel_"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "data"))
    from make_multilabel_digits import main as compose

    labels = compose(work / "task", {"train": options.train, "val": options.val})
    fit = ["--config", str(REPO / "configs/multilabel_quickstart.yaml"), "--data.labels", str(labels),
           "--model.image_size", str(options.image_size), "--trainer.max_epochs", str(options.epochs),
           "--progress_bar.refresh_rate", "0", "--data.num_workers", "0", "--trainer.logger", "false"]
    recipe_seconds = run(["fit", *fit, "--trainer.default_root_dir", "recipe"], work, work / "recipe.log")
    recipe = best_score(next((work / "recipe").glob("version_*")), "map")
    print(f"default recipe: val/map {recipe:.4f} in {recipe_seconds / 60:.1f} min", flush=True)
    tune_seconds = run(["tune", *fit, "--trainer.default_root_dir", "runs", "--tune.trials", str(options.trials)],
                       work, work / "tune.log")
    root = work / "runs" / "tune" / "study"
    trials = Trials.read(root, options.epochs)
    rows, complete, pruned, failed, best = trials.rows, trials.complete, trials.pruned, trials.failed, trials.best
    epoch_s, saved_epochs, trial_epochs = trials.epoch_s, trials.saved_epochs, trials.trial_epochs
    unpruned_s = sum(float(r["seconds"]) for r in complete) / max(1, len(complete)) * len(rows)
    print(f"multi-label digits ({options.train} training / {options.val} validation images), convnext_atto from "
          f"scratch, {options.image_size} px, {options.epochs} epochs per run, {options.trials} trials; "
          "2 CPU cores shared with other jobs, one torch thread per process")
    print()
    print("| run | val/map | wall time |")
    print("|---|---|---|")
    print(f"| default recipe (configs/multilabel_quickstart.yaml) | {recipe:.4f} | {recipe_seconds / 60:.1f} min |")
    print(f"| tune, {len(rows)} trials (best: trial {best['number']}) | {float(best['value']):.4f} | "
          f"{tune_seconds / 60:.1f} min |")
    print()
    print(f"Trials: {len(complete)} complete, {len(pruned)} pruned, {len(failed)} failed; {trial_epochs} epochs run "
          f"of {options.epochs * len(rows)} ({options.epochs} x {len(rows)}): pruning saved {saved_epochs} epochs, "
          f"about {saved_epochs * epoch_s / 60:.1f} min at the complete trials' median {epoch_s:.0f} s per epoch; "
          f"every trial run in full would have taken about {unpruned_s / 60:.0f} min at the complete trials' "
          f"mean (start-up and end-of-fit analysis included).")
    print("Epochs run per pruned trial: " + ", ".join(r["epochs"] for r in pruned))
    print("Best trial's values: " + ", ".join(f"{k} {v}" for k, v in best.items() if k.startswith("model.")))
    shutil.copyfile(root / "tune.png", REPO / "docs" / "tuning_multilabel.png")
    shutil.copyfile(root / "trials.csv", work / "trials.csv")
    print(f"(files: {work})")


if __name__ == "__main__":
    main()
