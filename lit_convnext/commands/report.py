"""``lit-convnext report``: rebuild a run's ``report.html`` from its directory and a checkpoint."""

from pathlib import Path

from lit_convnext.errors import UserError
from lit_convnext.ranges import PositiveInt


def report(run_dir: Path, ckpt_path: Path | None = None, gallery_size: PositiveInt = 24) -> Path:
    """Write RUN_DIR/report.html from the files a ``fit`` (or ``validate``) wrote there.

    Args:
        run_dir: A run directory (``runs/convnext/version_N``) holding ``val_predictions.csv``.
        ckpt_path: Checkpoint for the class-activation overlays; default: the run's ``checkpoints/best-*.ckpt``.
            ``none`` builds the report without overlays.
        gallery_size: Images per gallery (worst errors, suspected label errors).
    """
    from lit_convnext.model.classifier import ConvNeXtClassifier
    from lit_convnext.evaluation.report import build_report

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist: pass a runs/<name>/version_N folder")
    if ckpt_path is None:
        best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
        ckpt_path = best[-1] if best else None
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
