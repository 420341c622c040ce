"""The augmentation mosaic of the run report: every tile shows its image under its label."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from lit_convnext.evaluation.report.figures import MOSAIC_CAPTION, MOSAIC_COLUMNS, MOSAIC_TILE, augmentation_mosaic, fit_caption

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def test_mosaic_shows_each_image_denormalised_in_its_tile_under_a_caption() -> None:
    names = ["cat", "a_class_name_far_too_long_for_one_tile", "dog"]
    model = SimpleNamespace(mixup=None, class_names=names, preprocessing={"mean": MEAN, "std": STD})
    colours = torch.rand(11, 3)  # one flat colour per image, 11 tiles: one full row and a partial one
    pictures = colours.view(11, 3, 1, 1).expand(11, 3, 20, 20)
    normalised = (pictures - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    targets = torch.arange(11) % 3

    mosaic = np.asarray(augmentation_mosaic(normalised, targets, model).convert("RGB")).astype(int)

    step = MOSAIC_TILE + 4
    for i, colour in enumerate(colours):
        left, top = 4 + (i % MOSAIC_COLUMNS) * step, 4 + (i // MOSAIC_COLUMNS) * (step + MOSAIC_CAPTION)
        tile = mosaic[top + MOSAIC_CAPTION: top + MOSAIC_CAPTION + MOSAIC_TILE, left: left + MOSAIC_TILE]
        assert np.abs(tile - (colour * 255).round().numpy()).max() <= 1  # the image, upscaled, not resampled
        caption = mosaic[top: top + MOSAIC_CAPTION, left: left + MOSAIC_TILE]
        assert (caption.sum(axis=2) < 200).any()  # dark text on white
        beside = mosaic[top: top + MOSAIC_CAPTION, left + MOSAIC_TILE: left + MOSAIC_TILE + 4]
        assert (beside == 255).all()  # the long name is cut to its tile, not drawn over the gap
    last_left = 4 + (MOSAIC_COLUMNS - 1) * step
    empty = mosaic[4 + step + MOSAIC_CAPTION:, last_left: last_left + MOSAIC_TILE]
    assert (empty == 255).all()  # no tile where there is no image


def test_a_mixed_tile_keeps_both_classes_and_the_share_when_names_are_long() -> None:
    caption = fit_caption(("n072_long_species_name", " 66%/", "n019_other_long_name"), 20, len)
    assert len(caption) <= 20 and " 66%/" in caption
    assert caption.startswith("n0") and caption.split("/")[1].startswith("n0")  # each name cut, neither dropped
    assert fit_caption(("cat", " 60%/", "dog"), 20, len) == "cat 60%/dog"  # short captions untouched


def test_class_names_with_dollar_signs_are_drawn_as_written(tmp_path) -> None:
    """matplotlib reads text between two ``$`` as math: ``$$`` stopped the end-of-fit confusion matrices with a
    parse error, and ``$5-$10`` would have lost its dollars."""
    from matplotlib.cbook import is_math_text

    from lit_convnext.evaluation.class_report import plot_confusion
    from lit_convnext.evaluation.report.figures import as_written, normalised_confusion

    names = ["$$", "$5-$10", r"x_1 $\alpha$", "plain"]
    for name in names:
        label = as_written(name)
        assert not is_math_text(label) and label.replace(r"\$", "$") == name  # what matplotlib then shows
    confusion = torch.tensor([[3, 1, 0, 0], [0, 2, 1, 0], [1, 0, 2, 0], [0, 0, 0, 4]])
    plot_confusion(confusion, names, tmp_path / "confusion.png", title="val confusion matrix")
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert normalised_confusion(confusion, names, list(range(4)))[:4] == b"\x89PNG"


def test_the_counts_png_of_many_classes_shows_those_with_the_most_errors(tmp_path, monkeypatch) -> None:
    """At 100 classes the counts PNG shows the 30 classes most involved in errors, with a title that says so and
    points at the CSV; cells without images stay empty."""
    from lit_convnext.evaluation import class_report

    figures = []
    monkeypatch.setattr(class_report, "save_png", lambda figure, path, dpi: figures.append(figure))
    n = 100
    confusion = torch.diag(torch.full((n,), 4))
    confusion[3, 7], confusion[7, 3], confusion[99, 0] = 9, 8, 7  # the largest errors
    for true, predicted in [(50, 51)] + [(10 + i, 60 + i) for i in range(26)]:  # 54 classes with one error each
        confusion[true, predicted] = 1
    names = [f"class {i}" for i in range(n)]
    class_report.plot_confusion(confusion, names, tmp_path / "val_confusion_matrix.png", "val confusion matrix")
    axes = figures[0].axes[0]
    shown = [label.get_text() for label in axes.get_yticklabels()]
    involved = {3, 7, 50, 51, 99, 0} | {10 + i for i in range(26)} | {60 + i for i in range(26)}
    assert len(shown) == 30 and {int(name.split()[1]) for name in shown} <= involved
    assert {"class 3", "class 7", "class 99", "class 0"} <= set(shown)  # the largest errors are never left out
    assert "the 30 of 100 classes with the most errors" in axes.get_title()
    assert "val_confusion_matrix.csv" in axes.get_title()
    texts = [text.get_text() for text in axes.texts]
    assert "0" not in texts and texts.count("4") == 30  # the diagonal's counts, no zeros


def test_characters_the_font_lacks_are_one_line_of_ours(tmp_path, monkeypatch) -> None:
    """matplotlib warns once per missing character and figure in its own words; the app says it once, naming the
    characters, and the matplotlibrc fallback it suggests draws them (STIX stands in for a CJK font here)."""
    import warnings

    import matplotlib

    from lit_convnext.evaluation.class_report import plot_confusion
    from lit_convnext.evaluation.report import figures

    monkeypatch.setattr(figures, "_REPORTED_GLYPHS", set())
    names, confusion = ["\U0001d49c class", "plain"], torch.tensor([[2, 1], [0, 3]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion(confusion, names, tmp_path / "confusion.png", title="val confusion matrix")
        figures.normalised_confusion(confusion, names, [0, 1])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "1 character(s) as boxes (\U0001d49c)" in messages[0], messages
    monkeypatch.setattr(figures, "_REPORTED_GLYPHS", set())
    fallback = {"font.family": ["DejaVu Sans", "STIXGeneral"]}
    with matplotlib.rc_context(fallback), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures.normalised_confusion(confusion, names, [0, 1])
    assert not caught, [str(w.message) for w in caught]
