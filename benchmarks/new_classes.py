"""New classes on a trained model, on the real digits scans: old-class accuracy before and after, by sampler.

Stage 1 fits convnext_atto (random init, 32 px) on digits 0-6. Stage 2 fine-tunes that checkpoint on all ten
digits, where the new digits 7-9 have only ``--new-per-class`` training images (new classes usually arrive with few
labels), once per sampler and seed: ``shuffle`` (each image once per epoch), ``replay`` (old:new drawn at
sqrt(old/new), the default for this case) and, for reference, ``shuffle`` with a new head
(``--model.pretrained_head new``: the rows of the old classes re-learnt from scratch). The figures come from each
run's ``old_classes.json`` (validation: 253 images of 0-6, 107 of 7-9) and are printed as a table of medians;
``--png`` draws them.

    python benchmarks/new_classes.py --seeds 3 --png docs/new-classes.png

Needs ``data/digits`` (``python data/make_digits.py``). Runs on the CPU by default (``--accelerator``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "data" / "digits"
OLD, NEW = [str(d) for d in range(7)], [str(d) for d in range(7, 10)]
VARIANTS = {  # name -> extra fit options of stage 2
    "replay (default)": ["--data.sampler", "replay"],
    "shuffle": ["--data.sampler", "shuffle"],
    "shuffle, new head": ["--data.sampler", "shuffle", "--model.pretrained_head", "new"],
}


def link_folder(target: Path, classes: list[str], new_per_class: int | None = None) -> Path:
    """``target/{train,val}/<digit>`` linking the digits' images; the new digits' training images cut to a few."""
    for split in ("train", "val"):
        for digit in classes:
            out = target / split / digit
            out.mkdir(parents=True, exist_ok=True)
            files = sorted((DIGITS / split / digit).iterdir())
            if split == "train" and digit in NEW and new_per_class is not None:
                files = files[:new_per_class]
            for file in files:
                (out / file.name).symlink_to(file)
    return target


def fit(root: Path, work: Path, epochs: int, seed: int, accelerator: str, extra: list[str]) -> Path:
    """One ``lit-convnext fit`` in a fresh process; returns its run directory."""
    runs = work / "runs"
    before = set(runs.glob("convnext/version_*"))
    command = [sys.executable, "-m", "lit_convnext", "fit", "--data.root", str(root),
               "--model.model_name", "convnext_atto", "--model.pretrained", "false", "--model.image_size", "32",
               "--model.lr", "4e-3", "--data.batch_size", "32", "--data.num_workers", "0",
               "--trainer.max_epochs", str(epochs), "--trainer.accelerator", accelerator,
               "--seed_everything", str(seed), "--progress_bar.refresh_rate", "0",
               "--evaluation.report", "false", "--evaluation.label_issues", "false", *extra]
    if "--model.pretrained" in extra:  # stage 2: the pretrained file replaces "false"
        i = command.index("--model.pretrained")
        del command[i:i + 2]
    subprocess.run(command, cwd=work, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    [run] = set(runs.glob("convnext/version_*")) - before
    return run


def measure(run: Path) -> dict[str, float]:
    """Old and new digits' accuracy of the best checkpoint (its ``val_predictions.csv``), and the old digits'
    accuracy before stage 2 (``old_classes.json``; absent with a new head, which keeps no rows)."""
    with (run / "val_predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    share = {group: statistics.fmean(int(r["correct"]) for r in rows if r["true"] in digits)
             for group, digits in (("old", OLD), ("new", NEW))}
    path = run / "old_classes.json"
    before = json.loads(path.read_text())["before"]["accuracy"] if path.is_file() else float("nan")
    return {"before": before, "old_after": share["old"], "new_after": share["new"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-epochs", type=int, default=8)
    parser.add_argument("--new-epochs", type=int, default=4)
    parser.add_argument("--new-per-class", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--png", type=Path)
    parser.add_argument("--json", type=Path, help="keep every run's figures here (written after each run)")
    parser.add_argument("--from-json", type=Path, help="print the table (and draw) from an earlier --json only")
    args = parser.parse_args()
    if args.from_json:
        report(json.loads(args.from_json.read_text()), args)
        return

    work = Path(tempfile.mkdtemp(prefix="new-classes-"))
    results: dict[str, list[dict]] = {name: [] for name in args.variants}
    try:
        old_root = link_folder(work / "old", OLD)
        all_root = link_folder(work / "all", OLD + NEW, args.new_per_class)
        first = fit(old_root, work, args.old_epochs, 0, args.accelerator, [])
        old_ckpt = next((first / "checkpoints").glob("best-*.ckpt"))
        print(f"stage 1: {old_ckpt.name} on digits 0-6", flush=True)
        for seed in range(args.seeds):
            for name in args.variants:
                extra = VARIANTS[name]
                run = fit(all_root, work, args.new_epochs, seed, args.accelerator,
                          ["--model.pretrained", str(old_ckpt), *extra])
                results[name].append(measure(run))
                print(f"seed {seed} {name}: {results[name][-1]}", flush=True)
                if args.json:
                    args.json.write_text(json.dumps(results, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, args)


def report(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    """The table of medians (Markdown) and, with ``--png``, the chart."""
    seeds = max(len(runs) for runs in results.values())

    print(f"\nconvnext_atto, random init, 32 px; stage 1: {args.old_epochs} epochs on digits 0-6; stage 2: "
          f"{args.new_epochs} epochs on 0-9 with {args.new_per_class} training images per new digit; medians of "
          f"{seeds} seeds")
    print("| stage 2 | old digits before | old digits after | new digits after |")
    print("|---|---|---|---|")
    table = {}
    for name, runs in results.items():
        if not runs:
            continue
        row = [statistics.median(r[key] for r in runs) for key in ("before", "old_after", "new_after")]
        table[name] = row
        print(f"| {name} | " + " | ".join("-" if v != v else f"{v:.3f}" for v in row) + " |")
    if args.png:
        draw(table, args.png)


def draw(table: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    names = list(table)
    width = 0.8 / max(1, len(names))
    labels = ["old digits before", "old digits after", "new digits after"]
    for i, name in enumerate(names):
        xs = [x + i * width for x in range(3)]
        bars = ax.bar(xs, table[name], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(3)], labels)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=8, loc="lower center", ncols=len(names), bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
