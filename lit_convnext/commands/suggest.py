"""``lit-convnext suggest``: the images of an unlabelled pool to label next, best first, as a CSV.

A light command (no Trainer: one forward pass over the pool), with ``predict``'s option names for the pool
(``--data.predict_dir``); the work is :mod:`lit_convnext.inference.suggest`, imported when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lit_convnext.errors import UserError
from lit_convnext.ranges import NonNegativeInt, PositiveInt


@dataclass
class SuggestData:
    """The pool and the run's labelled images.

    Args:
        predict_dir: The pool: a folder of unlabelled images (searched recursively), as ``predict`` reads it.
        root: The run's labelled folder, whose images are left out of the pool; default: the one the checkpoint
            records (``fit`` keeps ``--data.root`` in every checkpoint).
        labels: The run's label file instead of ``root`` (default: the one the checkpoint records).
        label_separator: What separates the class names in a ``labels`` cell.
        batch_size: Images per forward pass.
        num_workers: Loader processes decoding the pool (0: in this process).
    """

    predict_dir: Path
    root: Path | None = None
    labels: Path | None = None
    label_separator: str = ";"
    batch_size: PositiveInt = 32
    num_workers: NonNegativeInt = 0


def suggest(*, ckpt_path: Path, data: SuggestData, budget: PositiveInt, output: Path = Path("next.csv"),
            strategy: Literal["uncertainty", "diversity", "hybrid"] = "hybrid", device: str = "cpu") -> Path:
    """Write the BUDGET images of --data.predict_dir whose labels would help the model most, best first.

    Args:
        ckpt_path: A checkpoint of a single-label (``multiclass``) run.
        data: The pool and what to leave out of it.
        budget: How many images to suggest.
        output: The CSV to write: ``path,rank,predicted,probability,score``.
        strategy: ``uncertainty`` (the images the calibrated model is least sure about), ``diversity`` (images
            spread over the backbone's feature space) or ``hybrid`` (unsure and unlike the images picked before
            them: no budget spent on copies of one confusing picture; measured best in docs/improving-data.md).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
    """
    from lit_convnext.data.datamodule import ImageFolderDataModule
    from lit_convnext.data.unlabeled import find_unlabeled_images
    from lit_convnext.inference.predictor import load_checkpoint_model
    from lit_convnext.inference.suggest import run_data, suggest_images, write_suggestions

    ckpt_path = Path(ckpt_path).expanduser()
    if not ckpt_path.is_file():
        raise UserError(f"checkpoint {ckpt_path} does not exist: pass the .ckpt of a fit with --ckpt_path")
    record = run_data(ckpt_path)
    root = data.root or (Path(record["root"]) if record.get("root") else None)
    labels = data.labels or (Path(record["labels"]) if record.get("labels") else None)
    labelled: list[Path] = []
    if root is None and labels is None:
        print(f"note: {ckpt_path} records no training folder (written before checkpoints kept it): pass "
              "--data.root to leave the run's labelled images out of the pool")
    else:
        splits = ImageFolderDataModule(root=root, labels=labels, label_separator=data.label_separator).splits
        labelled = [sample.path for split in (splits.train, splits.val, splits.test) for sample in split]
    pool = find_unlabeled_images(Path(data.predict_dir), labelled, option="--data.predict_dir")
    model = load_checkpoint_model(ckpt_path, device)  # after the pool's checks: they answer at once
    if model.multilabel:
        raise UserError(f"{ckpt_path} is a multi-label model: suggest ranks single-label (multiclass) runs only")
    if budget > len(pool.paths):
        print(f"note: --budget {budget} is more than the {len(pool.paths)} unlabelled images of "
              f"{pool.root}: all of them are listed")
    suggestions, scores = suggest_images(model.eval(), pool.paths, budget, strategy, data.batch_size,
                                         data.num_workers)
    if scores.unreadable:
        print(f"note: {len(scores.unreadable)} pool image(s) cannot be read and are left out, the first: "
              f"{scores.unreadable[0][0]} ({scores.unreadable[0][1]})")
    if not suggestions:
        raise UserError(f"no image under --data.predict_dir {pool.root} can be read: nothing to suggest")
    output = Path(output).expanduser()
    write_suggestions(suggestions, output)
    classes = sorted({s.predicted for s in suggestions})
    print(f"Wrote {output}: {len(suggestions)} of {len(scores.paths)} pool images to label ({strategy}), "
          f"predicted as {len(classes)} class(es)")
    return output
