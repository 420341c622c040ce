"""Active-learning simulation on the real digits scans: which images to label next, ``suggest`` against random picks.

Start from a few labelled images per class of ``data/digits/train``; the rest is the unlabelled pool (its labels are
hidden from the strategies and only read when an image is "labelled"). Each round fits convnext_atto from random
init on the labelled images, measures accuracy on ``data/digits/val``, then spends ``--budget`` labels: ``random``
picks, or ``suggest``'s ``uncertainty``, ``diversity`` and ``hybrid`` with the round's best checkpoint. Prints a table
of accuracy against labels spent (mean over seeds) and draws it to ``docs/suggest_simulation.png``. Results are kept
in ``--results`` (``benchmarks/suggest_results.json``) as each simulation ends; runs found there are not repeated, so
strategies can run in parallel processes (``--strategies``) with their own ``--results`` files, merged by hand.

    python benchmarks/suggest.py [--seeds 2] [--rounds 4] [--budget 20] [--start 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import sys

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(REPO))

DIGITS = REPO / "data" / "digits"
STRATEGIES = ("random", "uncertainty", "diversity", "hybrid")
#: Optimizer steps per fit, whatever the number of labelled images (small sets get more epochs).
STEPS = 60
BATCH = 16
#: (seed, start) -> round 0's (accuracy, checkpoint): every strategy starts from the same labelled images and fit.
FIRST_ROUND: dict[tuple[int, int], tuple[float, Path]] = {}


def fit(labelled: list[Path], seed: int, work: Path) -> tuple[float, Path]:
    """Fit on ``labelled`` (symlinked into class folders beside the real val split); (val accuracy, best ckpt)."""
    import lightning as L

    from lit_convnext import ConvNeXtClassifier, ImageFolderDataModule
    from lit_convnext.data.transforms import TrainAugmentation
    from lit_convnext.evaluation.class_report import PerClassReport
    from lit_convnext.evaluation.end_of_fit import EvaluationReport

    root = work / "data"
    # Each image linked often enough for one epoch of STEPS steps: the same training as many short epochs, without
    # the per-epoch overhead (which dominates at 20 images)
    copies = max(1, round(STEPS * BATCH / len(labelled)))
    for path in labelled:
        for k in range(copies):
            link = root / "train" / path.parent.name / f"{path.stem}_{k}{path.suffix}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    (root / "val").symlink_to(DIGITS / "val")
    L.seed_everything(seed, verbose=False)
    data = ImageFolderDataModule(root=root, batch_size=BATCH, num_workers=0, check_files=False,
                                 augmentation=TrainAugmentation(scale=(0.6, 1.0), hflip=0.0, rand_augment=None,
                                                                random_erasing=0.0))
    model = ConvNeXtClassifier(model_name="convnext_atto", pretrained=False, image_size=32, lr=4e-3,
                               warmup_epochs=0.1,  # the whole fit is one epoch
                               lr_reference_batch_size=64, layer_decay=None, drop_path_rate=0.0, head_init_scale=1.0,
                               class_names=data.class_names)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", default_root_dir=work, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0,
                        # the temperature is fitted (suggest reads calibrated probabilities); no report pages
                        callbacks=[EvaluationReport(label_issues=False, report=False), PerClassReport(enabled=False)])
    trainer.fit(model, datamodule=data)
    best = next((work / "checkpoints").glob("best-*.ckpt"))
    return float(trainer.callback_metrics["val/acc1"]), best


def pick(strategy: str, checkpoint: Path, pool: list[Path], labelled: list[Path], budget: int,
         rng: random.Random) -> list[Path]:
    """The next ``budget`` images to label."""
    if strategy == "random":
        return rng.sample(pool, budget)
    from lit_convnext.data.unlabeled import find_unlabeled_images
    from lit_convnext.inference.predictor import load_checkpoint_model
    from lit_convnext.inference.suggest import suggest_images

    # As `suggest` does: the run's labelled images are left out of the folder by their real path.
    unlabeled = find_unlabeled_images(DIGITS / "train", labelled, option="pool").paths
    model = load_checkpoint_model(checkpoint).eval()
    suggestions, _ = suggest_images(model, unlabeled, budget, strategy, batch_size=128)
    return [Path(s.path) for s in suggestions]


def simulate(strategy: str, seed: int, start: int, rounds: int, budget: int, base: Path) -> list[tuple[int, float]]:
    """(labels spent, val accuracy) after each round."""
    rng = random.Random(seed)
    train = sorted((DIGITS / "train").glob("*/*.png"))
    by_class: dict[str, list[Path]] = {}
    for path in train:
        by_class.setdefault(path.parent.name, []).append(path)
    labelled = [p for paths in by_class.values() for p in rng.sample(paths, start)]
    curve = []
    for r in range(rounds + 1):
        work = base / (f"start-{seed}" if r == 0 else f"{strategy}-{seed}-{r}")  # round 0 is the same for all
        tic = time.perf_counter()
        if r == 0 and (seed, start) in FIRST_ROUND:
            accuracy, best = FIRST_ROUND[seed, start]
        else:
            accuracy, best = fit(labelled, seed, work)
        if r == 0:
            FIRST_ROUND[seed, start] = accuracy, best
        curve.append((len(labelled), accuracy))
        print(f"{strategy:12s} seed {seed} round {r}: {len(labelled):4d} labels, val acc {accuracy:.3f} "
              f"({time.perf_counter() - tic:.0f} s)", flush=True)
        if r < rounds:
            taken = {os.path.realpath(p) for p in labelled}
            pool = [p for p in train if os.path.realpath(p) not in taken]
            labelled = labelled + pick(strategy, best, pool, labelled, budget, rng)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--start", type=int, default=2, help="labelled images per class at the start")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "suggest_results.json")
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "suggest_simulation.png")
    args = parser.parse_args()
    results: dict[str, dict[str, list]] = json.loads(args.results.read_text()) if args.results.exists() else {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for strategy in args.strategies:
                if str(seed) in results.get(strategy, {}):
                    continue
                curve = simulate(strategy, seed, args.start, args.rounds, args.budget, Path(tmp))
                results.setdefault(strategy, {})[str(seed)] = curve
                args.results.write_text(json.dumps(results, indent=1))  # partial results survive an interruption
    print(f"\n{time.perf_counter() - started:.0f} s on this machine "
          f"(convnext_atto from random init, 32 px, {STEPS} steps of {BATCH} per fit, CPU)")
    table(results)
    draw(results, args.png)


def table(results: dict[str, dict[str, list]]) -> None:
    strategies = [s for s in STRATEGIES if s in results]
    labels = [n for n, _ in next(iter(results[strategies[0]].values()))]
    print("| labels | " + " | ".join(strategies) + " |")
    print("|---:|" + "---:|" * len(strategies))
    for i, n in enumerate(labels):
        cells = [f"{100 * statistics.mean(c[i][1] for c in results[s].values()):.1f}" for s in strategies]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print(f"(val accuracy in %, mean of {min(len(results[s]) for s in strategies)} seed(s))")


def draw(results: dict[str, dict[str, list]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4), dpi=110)
    for strategy in [s for s in STRATEGIES if s in results]:
        curves = list(results[strategy].values())
        labels = [n for n, _ in curves[0]]
        means = [100 * statistics.mean(c[i][1] for c in curves) for i in range(len(labels))]
        axes.plot(labels, means, marker="o", label=strategy, linestyle="--" if strategy == "random" else "-")
    axes.set_xlabel("labelled images (digits train split)")
    axes.set_ylabel("validation accuracy (%)")
    axes.set_title(f"Labels spent: suggest vs random picks (mean of {len(curves)} seeds)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(png)
    print(f"Curve written to {png}")


if __name__ == "__main__":
    main()
