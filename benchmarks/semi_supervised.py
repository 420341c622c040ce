"""Semi-supervised learning on the digits: 8 labelled images a class, the rest of the training scans unlabelled.

Trains convnext_atto from random init (offline) at 32 px, once on the labelled images alone and once per
semi-supervised variant with the other training scans as ``unlabeled_root`` (the same seed, steps, augmentation
and learning-rate schedule), and prints the validation accuracy after the last epoch, with how many pseudo-labels
the last epoch used and how many of those were right (the pool keeps its class folders for this count only; the
model never reads them). Needs ``data/digits`` (``python data/make_digits.py``).

    python benchmarks/semi_supervised.py --seeds 0 1 2 --variants labelled fixed
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(REPO))

DIGITS = REPO / "data" / "digits"
#: Variants: None trains on the labelled images alone; otherwise the model's semi-supervised options.
VARIANTS: dict[str, dict | None] = {
    "labelled": None,
    "fixed": {"pseudo_label_threshold": 0.95},
    "fixed-0.8": {"pseudo_label_threshold": 0.8},
    # A control: the unlabelled batches are drawn and augmented but (almost) not learnt from.
    "control": {"unlabeled_weight": 1e-6},
}


def split_digits(out: Path, per_class: int, seed: int) -> tuple[Path, Path]:
    """``out/labelled/{train,val}/<class>/`` with ``per_class`` training scans a class (drawn with ``seed``) and
    every validation scan; ``out/pool/<class>/`` the other training scans."""
    rng = random.Random(seed)
    labelled, pool = out / "labelled", out / "pool"
    for class_dir in sorted((DIGITS / "train").iterdir()):
        files = sorted(class_dir.glob("*.png"))
        rng.shuffle(files)
        for i, path in enumerate(files):
            target = (labelled / "train" if i < per_class else pool) / class_dir.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    shutil.copytree(DIGITS / "val", labelled / "val")
    return labelled, pool


def run(labelled: Path, pool: Path | None, options: dict | None, seed: int, epochs: int, batch_size: int,
        ratio: int, run_dir: Path) -> dict:
    """One fit; the last validation's accuracy and the last epoch's pseudo-labels."""
    import lightning.pytorch as pl

    from lit_convnext import ConvNeXtClassifier, ImageFolderDataModule
    from lit_convnext.data.transforms import TrainAugmentation
    from lit_convnext.evaluation.end_of_fit import EvaluationReport

    pl.seed_everything(seed, verbose=False)
    augmentation = TrainAugmentation(scale=(0.6, 1.0), hflip=0.0, rand_augment="rand-m9-mstd0.5-inc1",
                                     random_erasing=0.25)
    data = ImageFolderDataModule(root=labelled, batch_size=batch_size, num_workers=0, augmentation=augmentation,
                                 check_files=False, unlabeled_root=pool if options is not None else None,
                                 unlabeled_ratio=ratio)
    model = ConvNeXtClassifier(model_name="convnext_atto", pretrained=False, class_names=data.class_names,
                               image_size=32, lr=2e-3, lr_reference_batch_size=batch_size, warmup_epochs=2,
                               layer_decay=None, drop_path_rate=0.0, head_init_scale=1.0, **(options or {}))
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=run_dir,
                         check_val_every_n_epoch=2, num_sanity_val_steps=0,
                         callbacks=[EvaluationReport(report=False, label_issues=False)])
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    result = {"accuracy": float(trainer.callback_metrics["val/acc1"]), "seconds": time.perf_counter() - start,
              "temperature": model.calibration.get("temperature")}
    csv_path = run_dir / "pseudo_labels.csv"
    if csv_path.exists():
        rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
        right = sum(Path(row["path"]).parent.name == row["pseudo_label"] for row in rows)
        result.update(pseudo_labels=len(rows), pseudo_label_accuracy=right / max(len(rows), 1),
                      pool=sum(1 for _ in pool.rglob("*.png")))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["labelled", "fixed"], choices=list(VARIANTS))
    parser.add_argument("--per_class", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--ratio", type=int, default=3, help="--data.unlabeled_ratio")
    parser.add_argument("--json", type=Path, help="append each result as a JSON line")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    results: dict[str, list[dict]] = {name: [] for name in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:  # paired: every variant sees the same labelled images and seed
            labelled, pool = split_digits(Path(tmp) / f"seed{seed}", args.per_class, seed)
            for name in args.variants:
                result = run(labelled, pool, VARIANTS[name], seed, args.epochs, args.batch_size, args.ratio,
                             Path(tmp) / f"seed{seed}" / name)
                result.update(seed=seed, variant=name, ratio=args.ratio, epochs=args.epochs)
                results[name].append(result)
                print(json.dumps(result), flush=True)
                if args.json:
                    with args.json.open("a", encoding="utf-8") as handle:
                        handle.write(json.dumps(result) + "\n")
    print(f"\n{args.per_class} labelled digits a class, {args.epochs} epochs, batch {args.batch_size}, "
          f"unlabelled ratio {args.ratio}, seeds {args.seeds}")
    print("| variant | val accuracy (median, per seed) | pseudo-labels used in the last epoch (right) | s per run |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        accuracies = [r["accuracy"] for r in rows]
        used = ", ".join(f"{r['pseudo_labels']} ({r['pseudo_label_accuracy']:.0%})" for r in rows
                         if "pseudo_labels" in r) or "-"
        print(f"| {name} | {statistics.median(accuracies):.3f} ({', '.join(f'{a:.3f}' for a in accuracies)}) | "
              f"{used} | {statistics.median(r['seconds'] for r in rows):.0f} |")


if __name__ == "__main__":
    main()
