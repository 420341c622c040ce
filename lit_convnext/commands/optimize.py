"""``lit-convnext optimize``: write a folder or label file as a litdata optimized dataset, to train from with
``fit --data.root OUT`` (local or ``s3://``). The work is in :mod:`lit_convnext.data.streaming`; this module holds
the command's signature, so that ``lit-convnext optimize --help`` starts without torch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from lit_convnext.ranges import NonNegativeInt, OpenFraction, PositiveInt


def optimize(root: Path, out: str, labels: Path | None = None, label_separator: str = ";",
             task: Literal["multiclass", "multilabel"] | None = None, val_fraction: OpenFraction = 0.2,
             split_seed: int = 42, split_manifest: Path | None = None,
             storage: Literal["encoded", "decoded"] = "decoded", short_side: PositiveInt = 256,
             check_files: bool = True, skip_bad_files: bool = False, workers: NonNegativeInt | None = None) -> int:
    """Write the images of a data folder (or label file) as litdata chunks, split as ``fit`` would split them.

    Args:
        root: The data folder, in any layout ``fit --data.root`` accepts; with ``labels``, the folder the label
            file's relative paths start from.
        out: A new (or empty) directory, or an ``s3://bucket/prefix``, for the optimized dataset.
        labels: A label file (as ``fit --data.labels``) instead of class folders.
        label_separator: What separates the class names in a ``labels`` cell.
        task: As ``fit --data.task``: ``None`` decides from the data.
        val_fraction: As ``fit --data.val_fraction``: the validation share drawn when there is no ``val/``.
        split_seed: As ``fit --data.split_seed``.
        split_manifest: As ``fit --data.split_manifest``: an earlier run's split, reproduced.
        storage: ``decoded``: RGB pixels, reduced to ``short_side``: no decoding while training, measured 1.6x the
            training images/s of ``encoded`` on small JPEGs, for chunks 2.6x their size (docs/data.md); ``encoded``:
            each file's bytes as they are (the smallest chunks, for streaming over a slow network; any
            ``--model.image_size`` can train from them).
        short_side: With ``decoded``: larger images are reduced so that their short side is this many pixels: at
            least the training resolution divided by the model's crop fraction (256 for ConvNeXt at 224), which
            ``fit`` checks.
        check_files: Decode every file first (as ``fit`` does before training; cached) and stop at bad ones.
        skip_bad_files: Leave undecodable files out (with a warning) instead of stopping.
        workers: Processes writing the chunks; default one per CPU core.
    """
    import os

    from lit_convnext.checks.bad_files import check_samples
    from lit_convnext.data.datamodule import ImageFolderDataModule
    from lit_convnext.data.streaming import check_output, require_litdata, write_optimized

    require_litdata("lit-convnext optimize")
    check_output(out)
    data = ImageFolderDataModule(root=root, labels=labels, label_separator=label_separator, task=task,
                                 val_fraction=val_fraction, split_seed=split_seed, split_manifest=split_manifest)
    splits = data.splits
    if check_files:
        for name in ("train", "val", "test"):
            if getattr(splits, name):
                setattr(splits, name, check_samples(getattr(splits, name), name, skip_bad_files, workers))
    source = {"root": str(Path(root).expanduser().resolve()),
              "labels": str(Path(labels).expanduser().resolve()) if labels is not None else None,
              "val_fraction": val_fraction, "split_seed": split_seed}
    start = time.perf_counter()
    metadata = write_optimized(splits, data.task, out, storage, short_side, workers or os.cpu_count() or 1, source)
    counts = ", ".join(f"{len(rows)} {name}" for name, rows in metadata["splits"].items())
    print(f"Wrote {out}: {counts} images of {len(splits.class_names)} classes ({storage}) in "
          f"{time.perf_counter() - start:.1f} s; train from it with `lit-convnext fit --data.root {out}`")
    return 0
