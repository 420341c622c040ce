"""Linear probe vs LP-FT vs full fine-tuning on a small real folder: accuracy and time of each, and the cached probe.

timm's pretrained weights cannot be downloaded on the machine these figures come from, so the starting weights
are made here from the real data: convnext_atto is trained from random weights on the sklearn digits 0-4
(``data/digits``, all their training scans), and that checkpoint is the "pretrained" network for a small
fine-tune on the other five digits, 5-9, with ``--shots`` training scans per class, validated on all their
validation scans. Every mode trains the same epochs with the same recipe (``RECIPE``):

* ``probe, cached features``: ``freeze_backbone`` with augmentation off: the backbone runs once, the head trains on
  its features;
* ``probe, images``: ``freeze_backbone`` with the default augmentation: the frozen backbone runs at every step;
* ``LP-FT``: ``linear_probe_epochs`` = half the epochs, then every layer;
* ``full``: every layer from the first step;

LP-FT and full fine-tuning each with augmentation off and with the base recipe's (RandAugment, random erasing,
random-resized crops). The modes run in alternating order, ``--runs`` times each (seeds 0, 1, ...); the table gives
the medians of the last epoch's validation top-1, of the wall time of ``Trainer.fit`` (no report, no checkpoints;
the features' pass included) and of that time less the validations (the same 180 images every epoch in every
mode). With ``--plot`` it also draws ``docs/small_data.png``.

    python benchmarks/small_data.py --runs 3 --plot      # about 10 minutes on 2 CPU cores shared with other work
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "data" / "digits"
SOURCE, TARGET = ("0", "1", "2", "3", "4"), ("5", "6", "7", "8", "9")
#: The recipe every mode shares (the base recipe but for the lr, which is given per 256 images as there).
RECIPE = dict(image_size=32, lr=4e-3, warmup_epochs=1.0, weight_decay=0.05, layer_decay=0.9, drop_path_rate=0.1)
#: mode -> (model options, training augmentation on). "half": linear_probe_epochs is half the epochs.
MODES = {
    "probe, cached features (no augmentation)": (dict(freeze_backbone=True), False),
    "probe, images (augmented)": (dict(freeze_backbone=True), True),
    "LP-FT (no augmentation)": ("half", False),
    "full (no augmentation)": (dict(), False),
    "LP-FT (augmented)": ("half", True),
    "full (augmented)": (dict(), True),
}


def subset(dest: Path, classes: tuple[str, ...], shots: int | None) -> Path:
    """``dest/train`` and ``dest/val`` with ``classes`` of ``data/digits``, ``shots`` training scans each."""
    for split in ("train", "val"):
        for name in classes:
            files = sorted((DIGITS / split / name).glob("*.png"))
            if split == "train" and shots is not None:
                files = files[:shots]
            (dest / split / name).mkdir(parents=True)
            for file in files:
                shutil.copy(file, dest / split / name / file.name)
    return dest


def fit(root: Path, pretrained: bool | str, epochs: int, augmentation: bool, seed: int, run_dir: Path,
        **options) -> tuple[float, float, float, object]:
    """One fit; returns (seconds, seconds less validation, last validation top-1, trainer)."""
    import lightning.pytorch as pl

    from lit_convnext import ConvNeXtClassifier, ImageFolderDataModule
    from lit_convnext.data.transforms import TrainAugmentation
    from lit_convnext.evaluation.class_report import PerClassReport
    from lit_convnext.evaluation.end_of_fit import EvaluationReport

    pl.seed_everything(seed, verbose=False)
    dm = ImageFolderDataModule(root=root, batch_size=16, num_workers=0, check_files=False,
                               augmentation=TrainAugmentation(enabled=augmentation))
    model = ConvNeXtClassifier("convnext_atto", pretrained=pretrained, class_names=dm.class_names,
                               **{**RECIPE, **options})
    validation = ValidationTime()
    trainer = pl.Trainer(default_root_dir=run_dir, max_epochs=epochs, accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[EvaluationReport(enabled=False), PerClassReport(enabled=False), validation])
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    return seconds, seconds - validation.seconds, float(trainer.callback_metrics["val/acc1"]), trainer


class ValidationTime(Callback):
    """Seconds spent in validation loops (the sanity check included)."""

    def __init__(self) -> None:
        self.seconds, self._start = 0.0, 0.0

    def on_validation_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self.seconds += time.perf_counter() - self._start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=10, help="training scans per target class")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--pretrain_epochs", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--plot", action="store_true", help="draw docs/small_data.png")
    args = parser.parse_args()
    # One thread unless told otherwise: on a shared machine more threads than free cores spin and slow every run.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = subset(work / "source", SOURCE, None)
        target = subset(work / "target", TARGET, args.shots)
        seconds, _, acc, trainer = fit(source, False, args.pretrain_epochs, True, 0, work / "pretrain")
        # The backbone alone, so the target's five classes get a new head (the source's would fit their count).
        weights = work / "digits0-4.pt"
        net = trainer.lightning_module.net
        torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("head.fc.")}, weights)
        print(f"starting weights: convnext_atto trained from random init on digits 0-4 "
              f"({args.pretrain_epochs} epochs, val top-1 {acc:.3f}, {seconds:.0f} s)")

        results: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in MODES}
        for seed in range(args.runs):
            for i, (mode, (options, augmentation)) in enumerate(MODES.items()):
                if options == "half":
                    options = dict(linear_probe_epochs=args.epochs // 2)
                seconds, training, acc, _ = fit(target, str(weights), args.epochs, augmentation, seed,
                                                work / f"{i}-{seed}", **options)
                results[mode].append((seconds, training, acc))
                print(f"  seed {seed} {mode:42s} {seconds:6.1f} s ({training:5.1f} s less validation)  "
                      f"val top-1 {acc:.3f}", flush=True)

    print(f"\ndigits 5-9, {args.shots} training scans per class, {args.epochs} epochs, convnext_atto at 32 px, "
          f"medians of {args.runs} runs; {platform.machine()}, {os.cpu_count()} CPU cores (shared)\n")
    print("| mode | val top-1 | fit | fit less validation |\n|---|---|---|---|")
    rows = []
    for mode, runs in results.items():
        seconds, training, acc = (statistics.median(run[i] for run in runs) for i in range(3))
        rows.append((mode, acc, training))
        print(f"| {mode} | {acc:.3f} | {seconds:.1f} s | {training:.1f} s |")
    if args.plot:
        plot(rows, REPO / "docs" / "small_data.png", args)


def plot(rows: list[tuple[str, float, float]], out: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    names = [r[0] for r in rows]
    left.barh(names, [r[1] for r in rows], color="#4c72b0")
    left.set_xlabel("validation top-1")
    left.set_xlim(0, 1)
    right.barh(names, [r[2] for r in rows], color="#dd8452")
    right.set_xlabel("fit time less validation (s)")
    right.set_yticks([])
    right.set_xlim(0, 1.15 * max(r[2] for r in rows))  # room for the labels
    for ax, values, fmt in ((left, [r[1] for r in rows], "{:.3f}"), (right, [r[2] for r in rows], "{:.1f}")):
        for y, v in enumerate(values):
            ax.text(v, y, " " + fmt.format(v), va="center")
        ax.invert_yaxis()
    fig.suptitle(f"digits 5-9, {args.shots} per class, {args.epochs} epochs (convnext_atto pre-trained on digits "
                 f"0-4); medians of {args.runs}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
