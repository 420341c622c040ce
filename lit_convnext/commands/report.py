"""``lit-convnext report``: rebuild a run's ``report.html`` from its directory and a checkpoint."""

import re
from pathlib import Path

from lit_convnext.errors import UserError
from lit_convnext.ranges import PositiveInt


def report(run_dir: Path, ckpt_path: Path | None = None, gallery_size: PositiveInt = 24) -> Path:
    """Write RUN_DIR/report.html from the files a ``fit`` (or ``validate``) wrote there.

    Args:
        run_dir: A run directory (``runs/convnext/version_N``) holding ``val_predictions.csv``.
        ckpt_path: Checkpoint for the class-activation overlays; default: the run's best checkpoint (see
            :func:`best_checkpoint`). ``none`` builds the report without overlays.
        gallery_size: Images per gallery (worst errors, suspected label errors).
    """
    from lit_convnext.model.classifier import ConvNeXtClassifier
    from lit_convnext.evaluation.report import build_report

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist: pass a runs/<name>/version_N folder")
    if ckpt_path is None:
        ckpt_path = best_checkpoint(run_dir / "checkpoints")
    model = None
    if ckpt_path is not None:
        if not Path(ckpt_path).is_file():
            raise UserError(f"checkpoint {ckpt_path} does not exist: pass the path of a .ckpt file with --ckpt_path")
        model = ConvNeXtClassifier.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True,
                                                        pretrained=False)
        model.eval()
    path = build_report(run_dir, model, gallery_size=gallery_size)
    print(f"Wrote {path}")
    return path


#: The score in a checkpoint's name, as the default ``--checkpoint.filename`` writes it: ``best-epoch003-acc0.9123``
#: (``val/acc1``), ``...-map0.8512`` (``val/map``); a name of the user's own may hold a ``loss`` (lower is better).
SCORE_IN_NAME = re.compile(r"(acc\d?|map|loss)[^0-9-]*(-?\d+(?:\.\d+)?)$")


def best_checkpoint(folder: Path) -> Path | None:
    """The best of a run's ``best-*.ckpt`` files (``None`` without any).

    With ``--checkpoint.save_top_k`` above 1 there are several, and the highest epoch is not the best score. The run's
    checkpoint callback recorded which is best (``best_model_path`` in its state, which every checkpoint holds): the
    newest checkpoint's record is used when it names one of the files. Else the score in the names decides (accuracy
    and mAP higher, a loss lower), else the newest file.
    """
    candidates = sorted(Path(folder).glob("best-*.ckpt"))
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    recorded = _recorded_best(Path(folder))
    if recorded is not None and recorded in candidates:
        return recorded
    scored = [(match, path) for path in candidates if (match := SCORE_IN_NAME.search(path.stem))]
    if len(scored) == len(candidates) and len({match[1] for match, _ in scored}) == 1:
        pick = min if scored[0][0][1] == "loss" else max
        return pick(scored, key=lambda item: float(item[0][2]))[1]
    return max(candidates, key=lambda path: path.stat().st_mtime)


def _recorded_best(folder: Path) -> Path | None:
    """The best checkpoint as the newest checkpoint's ModelCheckpoint state names it, in ``folder`` (the run may have
    been moved since, so only the file name counts). Memory-mapped: the weights are not read."""
    import pickle

    import torch

    newest = max(folder.glob("*.ckpt"), key=lambda path: path.stat().st_mtime)
    try:
        checkpoint = torch.load(newest, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError):  # not one torch can map: the names decide
        return None
    for state in (checkpoint.get("callbacks") or {}).values():
        best = state.get("best_model_path") if isinstance(state, dict) else None
        if best:
            return folder / Path(best).name
    return None
