"""The report's fixed-margin figures (training curves, reliability diagram): every label inside the picture."""

from __future__ import annotations

import math

import pytest

from lit_convnext.evaluation.report import figures


def drawn_panels(monkeypatch: pytest.MonkeyPatch, draw) -> list:
    """The bounding boxes (pixels) of each panel with its title, tick labels, axis labels, offset text and legend,
    and the figure's own box, as ``draw`` lays them out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    kept: list = []
    monkeypatch.setattr(figures, "png_bytes", lambda figure, dpi=90: kept.append(figure) or b"")
    draw()
    (figure,) = kept
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    return [axes.get_tightbbox(renderer) for axes in figure.axes], figure.bbox


def assert_inside_and_apart(panels: list, bounds) -> None:
    for box in panels:
        assert bounds.x0 <= box.x0 and box.x1 <= bounds.x1 and bounds.y0 <= box.y0 and box.y1 <= bounds.y1, box
    for left, right in zip(panels, panels[1:]):
        assert left.x1 <= right.x0  # no panel's labels reach into its neighbour


@pytest.mark.parametrize(("peak_lr", "loss"), [(3.6e-4, 2.3), (3.6e-3, 0.05), (4e-6, 1234.5), (0.36, 50.0)])
def test_training_curves_keep_long_tick_labels_inside(monkeypatch: pytest.MonkeyPatch, peak_lr, loss) -> None:
    """Learning rates give the longest tick labels ("0.00035", or an offset text "1e-6" above the panel)."""
    steps = range(0, 120_000, 400)
    scalars = {
        "train/loss_step": [(s, loss * math.exp(-s / 40_000)) for s in steps],
        "val/loss": [(s, loss * math.exp(-s / 40_000)) for s in steps[::25]],
        "train/acc1": [(s, 1 - math.exp(-s / 40_000)) for s in steps[::25]],
        "val/acc1": [(s, 1 - math.exp(-s / 30_000)) for s in steps[::25]],
        **{f"lr-AdamW/pg{g}": [(s, peak_lr * 0.9 ** g * (1 + math.cos(math.pi * s / 120_000)) / 2) for s in steps]
           for g in (1, 2, 3)},
    }
    panels, bounds = drawn_panels(monkeypatch, lambda: figures.training_curves(scalars))
    assert len(panels) == 3
    assert_inside_and_apart(panels, bounds)


def test_the_learning_rate_panel_draws_the_largest_and_smallest_group_or_one_shared_curve() -> None:
    steps = range(0, 100, 10)
    layered = {f"lr-AdamW/pg{g}": [(s, 1e-3 * 0.8 ** (13 - g) * (1 - s / 100)) for s in steps] for g in range(1, 15)}
    # pg14 (the head, scale 1) and pg1 (the stem); sorted names would have given pg1, pg10, pg11.
    assert figures.learning_rate_curves({**layered, "val/acc1": [(0, 0.5)]}) == {
        "lr-AdamW/pg14": "largest of 14 groups", "lr-AdamW/pg1": f"smallest ({0.8 ** 13:.3g} x the largest)"}
    shared = {f"lr-AdamW/pg{g}": [(s, 1e-3) for s in steps] for g in (1, 2)}  # decay and no-decay, no layer decay
    assert figures.learning_rate_curves(shared) == {"lr-AdamW/pg1": "lr (2 groups)"}
    assert figures.learning_rate_curves({"val/acc1": [(0, 0.5)]}) == {}


def test_reliability_diagram_keeps_its_labels_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    """Confidence runs to exactly 1.0, so the last tick label sits on the right edge of each panel."""
    bins = 15
    reliability = {"count": [10] * bins, "accuracy": [(i + 0.5) / bins for i in range(bins)],
                   "confidence": [(i + 0.5) / bins for i in range(bins)]}
    summary = {"bins": bins, "temperature": 1.234, "ece_before": 0.1234, "ece_after": 0.0123,
               "reliability_before": reliability, "reliability_after": reliability}
    panels, bounds = drawn_panels(monkeypatch, lambda: figures.reliability_diagram(summary))
    assert len(panels) == 2
    assert_inside_and_apart(panels, bounds)


def test_the_report_draws_the_curves_of_a_csv_logger_run(tmp_path) -> None:
    """``--trainer.logger CSVLogger`` writes metrics.csv instead of TensorBoard events: the report reads it."""
    from lit_convnext.evaluation.report.html import logged_scalars

    (tmp_path / "metrics.csv").write_text(
        "epoch,step,train/loss_step,lr-AdamW/pg1,val/acc1,val/f1/blue\n"
        "0,9,2.3,1e-4,,\n"
        "0,19,2.1,2e-4,,\n"
        "0,19,,,0.5,0.4\n"
        "1,29,1.9,oops,,\n"  # a cell that is no number is left out, not the report
        ",,,,,\n", encoding="utf-8")
    scalars = logged_scalars(tmp_path)
    assert scalars == {"train/loss_step": [(9, 2.3), (19, 2.1), (29, 1.9)],
                       "lr-AdamW/pg1": [(9, 1e-4), (19, 2e-4)], "val/acc1": [(19, 0.5)]}  # no per-class tags
    assert figures.training_curves(scalars)[:4] == b"\x89PNG"
    assert logged_scalars(tmp_path / "nothing") == {}
