"""The losses: class weights (inverse frequency, soft targets), multi-label smoothing; and a fit on imbalanced
classes with class weights, the balanced sampler and the per-class report."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from tests.helpers import TINY_MODEL, make_folder

from lit_convnext.evaluation import class_report
from lit_convnext.cli.entry import main
from lit_convnext.errors import UserError
from lit_convnext.model.losses import classification_loss, multilabel_loss, resolve_class_weights


def test_auto_weights_are_inverse_frequency_with_mean_one() -> None:
    weights = resolve_class_weights("auto", ["big", "small"], [40, 4])
    assert weights.mean().item() == pytest.approx(1.0)
    assert (weights[1] / weights[0]).item() == pytest.approx(10.0)
    assert resolve_class_weights("none", ["a", "b"], [1, 2]) is None
    assert resolve_class_weights({"b": 3.0}, ["a", "b"], None).tolist() == [1.0, 3.0]
    with pytest.raises(UserError, match="unknown class"):
        resolve_class_weights({"c": 2.0}, ["a", "b"], None)


def test_soft_target_loss_weights_each_class_share() -> None:
    """Mixup's soft targets: a sample's loss is weighted by its mixed target's class weights."""
    logits = torch.randn(4, 3)
    hard = torch.tensor([0, 1, 2, 1])
    weight = torch.tensor([0.5, 1.0, 2.0])
    soft = torch.nn.functional.one_hot(hard, 3).float()
    per_sample = -(soft * weight * logits.log_softmax(-1)).sum(-1)
    assert classification_loss(logits, soft, weight).item() == pytest.approx(per_sample.mean().item(), rel=1e-5)
    # Without weights the soft loss equals the hard one, and smoothing applies to hard targets only.
    assert classification_loss(logits, soft).item() == pytest.approx(classification_loss(logits, hard).item(), rel=1e-5)
    assert classification_loss(logits, hard, label_smoothing=0.1).item() != classification_loss(logits, hard).item()


def test_multilabel_loss_smooths_binary_targets_towards_half() -> None:
    logits, targets = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([[0.95, 0.05]]))
    assert multilabel_loss(logits, targets, label_smoothing=0.1) == pytest.approx(expected.item())
    weighted = multilabel_loss(logits, targets, weight=torch.tensor([2.0, 0.0]))
    assert weighted == pytest.approx(torch.nn.functional.softplus(torch.tensor(-2.0)).item())  # (2 * loss_a + 0) / 2


def test_fit_with_auto_weights_balanced_sampler_and_per_class_report(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    plots = []
    original_plot = class_report.plot_confusion
    monkeypatch.setattr(class_report, "plot_confusion", lambda *args, **kw: plots.append(args) or original_plot(*args, **kw))
    root = tmp_path / "data"
    make_folder(root / "train", 12, {"red": (220, 30, 30), "blue": (30, 40, 220)})
    make_folder(root / "train", 4, {"green": (30, 200, 40)}, seed=77)
    make_folder(root / "val", 3, seed=500)
    main(["fit", "--model.model_name", TINY_MODEL, "--model.pretrained", "false", "--data.root", str(root),
          "--model.image_size", "32", "--data.batch_size", "8", "--data.num_workers", "0",
          "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--trainer.accelerator", "cpu",
          "--progress_bar.refresh_rate", "0", "--model.class_weights", "auto", "--data.sampler", "balanced",
          "--model.mixup_alpha", "0.8",
          "--evaluation.enabled", "false"])  # its re-validation of the best checkpoint would draw the map again
    run_dir = next(Path("runs/convnext").iterdir())
    with (run_dir / "val_per_class.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["class"] for r in rows] == ["blue", "green", "red"] and all(r["support"] == "3" for r in rows)
    with (run_dir / "val_confusion_matrix.csv").open(encoding="utf-8") as handle:
        matrix = list(csv.reader(handle))
    assert matrix[0][1:] == ["blue", "green", "red"] and sum(int(v) for r in matrix[1:] for v in r[1:]) == 9
    assert (run_dir / "val_confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    # The heat map is drawn once, when fit ends (not every epoch), from the last validation's matrix.
    assert len(plots) == 1 and plots[0][0].sum().item() == 9
    checkpoint = torch.load(next(run_dir.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["class_counts"] == [12, 4, 12]  # linked from the data, not typed
    assert "class_weight" not in checkpoint["state_dict"]
