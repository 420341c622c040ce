"""Distillation on a real folder (the sklearn digits scans, ``data/digits``): student alone vs distilled vs teacher.

From random weights (no download), with the quickstart recipe (``configs/quickstart.yaml``: lr 4e-3, 1 warm-up
epoch, no layer decay, label smoothing 0.1, crops of 60-100 %, no flips, RandAugment or erasing), at ``--size`` px:

1. the teacher: ``--teacher_model`` trained for ``--teacher_epochs`` on the training split (its checkpoint is kept
   in ``--work`` and reused by later invocations);
2. for each seed, back to back: the student (``--student_model``) alone for ``--epochs``; the same student
   distilled from the teacher with each ``--weights`` (at ``--temperatures``);
3. ``--labelled N``: the low-label case, the student trained on N labelled images per class (from the training
   split) for ``--labelled_epochs``, alone and distilled, the rest of the training split given as
   ``--data.unlabeled_root`` (the teacher, which saw those images with labels, labels them for the student).

Each run reports the validation top-1 of its final weights, the agreement of its top class with the teacher's on
the validation images, and the median seconds per training epoch. Last, the teacher's cost is measured paired
(``teacher_cost``: its forward pass and the student's training step alternated on the same batch), which the
epochs' walls on a shared machine cannot show. Prints a Markdown table (medians over seeds).

    python benchmarks/distillation.py                       # 2 seeds: ~25 minutes on 2 shared CPU cores
    python benchmarks/distillation.py --seeds 0 --epochs 2  # a quick look
    python benchmarks/distillation.py --cost_only           # the teacher's cost alone (after a first run)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from lit_convnext import ConvNeXtClassifier, ImageFolderDataModule
from lit_convnext.data.transforms import TrainAugmentation
from lit_convnext.evaluation.class_report import PerClassReport
from lit_convnext.evaluation.end_of_fit import EvaluationReport
from lit_convnext.inference.predictor import load_checkpoint_model

REPO = Path(__file__).resolve().parents[1]
RECIPE = dict(pretrained=False, lr=4e-3, warmup_epochs=1.0, weight_decay=0.05, layer_decay=None, drop_path_rate=0.0,
              head_init_scale=1.0, label_smoothing=0.1)
AUGMENTATION = TrainAugmentation(scale=(0.6, 1.0), hflip=0.0, rand_augment=None, random_erasing=0.0)


class EpochTimer(pl.Callback):
    """Wall seconds of each training epoch (loader included, validation excluded)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def fit(args: argparse.Namespace, root: Path, model_name: str, epochs: int, seed: int, out: Path,
        unlabeled: Path | None = None, **model_options) -> tuple[ConvNeXtClassifier, list[float]]:
    pl.seed_everything(seed, verbose=False)
    data = ImageFolderDataModule(root=root, batch_size=args.batch_size, num_workers=args.workers,
                                 augmentation=AUGMENTATION, unlabeled_root=unlabeled)
    model = ConvNeXtClassifier(model_name=model_name, class_names=data.class_names, image_size=args.size,
                               **RECIPE, **model_options)
    timer = EpochTimer()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, default_root_dir=out,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=out.name == "teacher",
                         callbacks=[timer, EvaluationReport(enabled=False), PerClassReport(enabled=False)])
    trainer.fit(model, datamodule=data)
    return model, timer.seconds


@torch.inference_mode()
def predictions(model: torch.nn.Module, data: ImageFolderDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """Top class of each validation image, and the true classes."""
    model.eval()
    predicted, truth = [], []
    for images, targets in data.val_dataloader():
        predicted.append(model(images).argmax(-1))
        truth.append(targets)
    return torch.cat(predicted), torch.cat(truth)


def teacher_cost(args: argparse.Namespace, checkpoint: Path, batches_per_epoch: int, repeats: int = 15) -> str:
    """The teacher's forward pass against the student's whole training step (forward, backward, AdamW) on the same
    batch, alternated and repeated (medians), converted to seconds per epoch: paired, so the machine's load affects
    both alike."""
    from lit_convnext.model.distillation import Distillation, load_teacher

    student = ConvNeXtClassifier(model_name=args.student_model, class_names=[str(i) for i in range(10)],
                                 image_size=args.size, **RECIPE)
    teacher, name = load_teacher(checkpoint, student.class_names, student.preprocessing)
    distillation = Distillation(teacher, 0.5, 1.0)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    images, targets = torch.randn(args.batch_size, 3, args.size, args.size), torch.randint(0, 10, (args.batch_size,))
    timings: dict[str, list[float]] = {"student step": [], "teacher forward": [], "distilled step": []}

    def step(distil: bool) -> None:
        logits = student(images)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        if distil:
            loss = distillation.loss(loss, images, logits, student)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for i in range(repeats + 1):
        for key, run in (("student step", lambda: step(False)), ("teacher forward", lambda: teacher(images)),
                         ("distilled step", lambda: step(True))):
            started = time.perf_counter()
            run()
            if i:  # the first round warms up
                timings[key].append(time.perf_counter() - started)
    median = {key: statistics.median(values) for key, values in timings.items()}
    return (f"Per batch of {args.batch_size} at {args.size} px (medians of {repeats}, alternated): student "
            f"{args.student_model} training step {median['student step'] * 1e3:.0f} ms, teacher {name} forward "
            f"{median['teacher forward'] * 1e3:.0f} ms, distilled step {median['distilled step'] * 1e3:.0f} ms: "
            f"+{median['distilled step'] / median['student step'] - 1:.0%}; over an epoch of {batches_per_epoch} "
            f"batches the teacher adds {median['teacher forward'] * batches_per_epoch:.1f} s to "
            f"{median['student step'] * batches_per_epoch:.1f} s of training steps")


def low_label_folder(root: Path, work: Path, per_class: int) -> tuple[Path, Path]:
    """``per_class`` labelled training images per class (the first by name) with the validation split, and the
    other training images as an unlabelled folder."""
    labelled, unlabeled = work / f"labelled{per_class}", work / f"unlabelled{per_class}"
    if not labelled.is_dir():
        for class_dir in sorted((root / "train").iterdir()):
            files = sorted(class_dir.iterdir())
            for i, file in enumerate(files):
                target = (labelled / "train" / class_dir.name if i < per_class else unlabeled / class_dir.name)
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, target / file.name)
        shutil.copytree(root / "val", labelled / "val")
    return labelled, unlabeled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / "data" / "digits")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lit_convnext_distillation"))
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--teacher_model", default="convnext_femto")
    parser.add_argument("--teacher_epochs", type=int, default=12)
    parser.add_argument("--student_model", default="convnext_atto")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5, 0.9, 1.0])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument("--labelled", type=int, default=30, help="labelled images per class in the low-label case; "
                        "0 leaves it out")
    parser.add_argument("--labelled_epochs", type=int, default=12, help="epochs of the low-label case (an epoch is "
                        "one pass over the labelled images)")
    parser.add_argument("--cost_only", action="store_true", help="only the teacher's cost per batch and epoch "
                        "(with the teacher of an earlier invocation)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.work / "teacher" / "checkpoints" / "last.ckpt"
    data = ImageFolderDataModule(root=args.root, batch_size=args.batch_size, num_workers=args.workers)
    if not checkpoint.is_file():
        started = time.perf_counter()
        _, seconds = fit(args, args.root, args.teacher_model, args.teacher_epochs, 0, args.work / "teacher")
        print(f"teacher {args.teacher_model}: {args.teacher_epochs} epochs in {time.perf_counter() - started:.0f} s "
              f"(median {statistics.median(seconds):.1f} s per epoch)", flush=True)
    batches = len(list((args.root / "train").rglob("*.png"))) // args.batch_size
    if args.cost_only:
        print(teacher_cost(args, checkpoint, batches))
        return
    teacher = load_checkpoint_model(checkpoint)
    data.preprocessing = dict(teacher.preprocessing)
    data.setup("validate")
    teacher_top, truth = predictions(teacher, data)
    rows: dict[str, list[tuple[float, float, float]]] = {}

    def record(name: str, model: torch.nn.Module, seconds: list[float]) -> None:
        top, _ = predictions(model, data)
        accuracy = float((top == truth).float().mean())
        agreement = float((top == teacher_top).float().mean())
        rows.setdefault(name, []).append((accuracy, agreement, statistics.median(seconds)))
        print(f"{name}: top-1 {accuracy:.4f}, agreement {agreement:.4f}, {statistics.median(seconds):.1f} s/epoch",
              flush=True)

    cases: list[tuple[str, Path, dict, Path | None]] = [(f"{args.student_model} alone", args.root, {}, None)]
    for weight in args.weights:
        for temperature in args.temperatures:
            cases.append((f"{args.student_model} distilled (weight {weight:g}, T {temperature:g})", args.root,
                          dict(teacher=str(checkpoint), distill_weight=weight, distill_temperature=temperature), None))
    if args.labelled:
        labelled, unlabeled = low_label_folder(args.root, args.work, args.labelled)
        few = f"{args.labelled} labelled per class"
        cases += [(f"{args.student_model} alone, {few}", labelled, {}, None),
                  (f"{args.student_model} distilled (weight {args.weights[0]:g}), {few} + the rest unlabelled",
                   labelled, dict(teacher=str(checkpoint), distill_weight=args.weights[0]), unlabeled)]
    for seed in args.seeds:
        for name, root, options, unlabeled in cases:
            epochs = args.epochs if root == args.root else args.labelled_epochs
            model, seconds = fit(args, root, args.student_model, epochs, seed, args.work / "student",
                                 unlabeled, **options)
            record(name, model, seconds)

    print(f"\nDigits at {args.size} px, {args.epochs} student epochs, batch {args.batch_size}; teacher "
          f"{args.teacher_model} ({args.teacher_epochs} epochs): top-1 {float((teacher_top == truth).float().mean()):.4f}"
          f"; medians over seeds {args.seeds}\n")
    print(teacher_cost(args, checkpoint, batches) + "\n")
    print("| run | val top-1 | agreement with the teacher | s per training epoch |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        accuracy, agreement, seconds = (statistics.median(v[i] for v in values) for i in range(3))
        print(f"| {name} | {accuracy:.4f} | {agreement:.4f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
