"""The report's pictures, as PIL images or PNG bytes; nothing here reads the run directory."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import IO, Any

import torch
from PIL import Image

from lit_convnext.text import preview

#: The confusion matrix shows at most this many classes (those with the most confusions) so labels stay legible.
CONFUSION_MAX_CLASSES = 30


def as_written(label: str) -> str:
    """``label`` for matplotlib, drawn as written: matplotlib reads text between two ``$`` as math, so a class
    named ``$5-$10`` would lose its dollar signs and one named ``$$`` would stop the plot with a parse error."""
    return label.replace("$", r"\$")


def _figure(width: float, height: float) -> Any:
    """A figure whose layout matplotlib fits to its labels (for figures with class names, of any length)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _panels(count: int, width: float, height: float, left: float, bottom: float, gap: float) -> tuple[Any, Any]:
    """A figure of ``count`` side-by-side panels with fixed margins in inches, and its axes.

    For figures whose labels are ours (numbers, fixed titles): fitting the layout to the labels, as
    :func:`_figure` does, draws the figure twice and took 40% of its time (0.15 s a figure on 2 cores).
    ``left`` and ``gap`` leave room for tick labels of up to seven characters and a y label.
    """
    figure = _figure(width, height)
    figure.set_layout_engine(None)
    right, top = 0.25, 0.35  # half a tick label at the right end; a title above each panel, beside the offset text
    panel = (width - left - right - gap * (count - 1)) / count
    figure.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                           top=1 - top / height, wspace=gap / panel)
    return figure, figure.subplots(1, count, squeeze=False)[0]


def png_bytes(figure_or_image: Any, dpi: int = 90) -> bytes:
    buffer = io.BytesIO()
    if isinstance(figure_or_image, Image.Image):
        figure_or_image.save(buffer, format="PNG", optimize=True)
    else:
        save_png(figure_or_image, buffer, dpi)
    return buffer.getvalue()


#: matplotlib's warning for a character its font cannot draw (one per character and figure; it draws a box).
MISSING_GLYPH = re.compile(r"Glyph (\d+) .*missing from font\(s\) (.+?)\.?$")
#: Characters already reported as drawn as boxes in this process.
_REPORTED_GLYPHS: set[str] = set()


def save_png(figure: Any, target: str | Path | IO[bytes], dpi: int) -> None:
    """``figure.savefig`` as PNG; matplotlib's line per character its font lacks (class names in Chinese, say)
    becomes one line of ours naming the characters and how to get them drawn."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.savefig(target, format="png", dpi=dpi)
    missing: dict[str, str] = {}
    for warning in caught:
        match = MISSING_GLYPH.search(str(warning.message))
        if match:
            missing.setdefault(chr(int(match.group(1))), match.group(2))
        else:  # anything else goes on as it came
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    new = [c for c in missing if c not in _REPORTED_GLYPHS]
    if new:
        _REPORTED_GLYPHS.update(new)
        shown = preview(new, 10, separator="")
        warnings.warn(f"the figures draw {len(new)} character(s) as boxes ({shown}): matplotlib's font "
                      f"({missing[new[0]]}) has no glyph for them; the CSVs and the report's text keep them. A "
                      "matplotlibrc with a font that has them draws them, e.g. `font.family: DejaVu Sans, "
                      "Noto Sans CJK JP`", UserWarning, stacklevel=2)


def learning_rate_curves(scalars: dict[str, list[tuple[int, float]]]) -> dict[str, str]:
    """The learning-rate curves worth drawing, tag -> legend label: the parameter group with the largest and the
    one with the smallest peak lr (layer decay gives every depth its own group; LearningRateMonitor names them
    ``pg1``, ``pg2``, ... in optimizer order, which says nothing on the plot), or one curve when all groups share it."""
    tags = [k for k in scalars if k.startswith("lr-") and scalars[k]]
    if not tags:
        return {}
    peak = {tag: max(value for _, value in scalars[tag]) for tag in tags}
    largest, smallest = max(tags, key=peak.get), min(tags, key=peak.get)
    if len(tags) == 1 or peak[smallest] >= peak[largest] * (1 - 1e-6):
        return {largest: f"lr ({len(tags)} group{'s' if len(tags) > 1 else ''})"}
    return {largest: f"largest of {len(tags)} groups",
            smallest: f"smallest ({peak[smallest] / peak[largest]:.3g} x the largest)"}


def training_curves(scalars: dict[str, list[tuple[int, float]]]) -> bytes | None:
    """Loss, accuracy and learning rate against the optimizer step, one panel each, from the logged values."""
    panels = [
        ("loss", {k: k for k in ("train/loss_step", "train/loss_epoch", "val/loss") if k in scalars}),
        ("accuracy", {k: k for k in ("train/acc1", "val/acc1", "val/acc5", "val/f1", "val/teacher_agreement")
                      if k in scalars}),
        ("learning rate", learning_rate_curves(scalars)),
    ]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        return None
    figure, axes_row = _panels(len(panels), 4.2 * len(panels), 3.2, left=0.6, bottom=0.5, gap=0.8)
    for axes, (title, keys) in zip(axes_row, panels):
        for key, label in keys.items():
            steps, values = zip(*scalars[key])
            style = {"marker": "o", "markersize": 3} if len(steps) < 50 else {}
            axes.plot(steps, values, label=label, **style)
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    return png_bytes(figure)


def confusion_classes(confusion: torch.Tensor, limit: int = CONFUSION_MAX_CLASSES) -> list[int]:
    """All classes when they fit, else the ``limit`` classes with the most errors (as true or as predicted)."""
    n = confusion.shape[0]
    if n <= limit:
        return list(range(n))
    errors = confusion.clone().fill_diagonal_(0)
    involvement = errors.sum(dim=0) + errors.sum(dim=1)
    return sorted(involvement.argsort(descending=True)[:limit].tolist())


def normalised_confusion(confusion: torch.Tensor, names: list[str], classes: list[int]) -> bytes:
    """Heat map of the confusion matrix normalised per true class (rows sum to 1 over *all* classes)."""
    rows = confusion.double() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    shown = rows[classes][:, classes].numpy()
    n = len(classes)
    side = min(3.5 + 0.28 * n, 12)
    figure = _figure(side + 1, side)
    axes = figure.add_subplot()
    image = axes.imshow(shown, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true class")
    labels = [as_written(names[i]) for i in classes]
    size = 9 if n <= 15 else 7
    axes.set_xticks(range(n), labels=labels, rotation=90, fontsize=size)
    axes.set_yticks(range(n), labels=labels, fontsize=size)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if shown[i, j] >= 0.005:
                    axes.text(j, i, f"{shown[i, j]:.2f}", ha="center", va="center", fontsize=7,
                              color="white" if shown[i, j] > 0.5 else "black")
    return png_bytes(figure)


def reliability_diagram(summary: dict[str, Any]) -> bytes:
    """Accuracy against confidence per bin, before and after the temperature, with the diagonal of perfect trust."""
    figure, axes_row = _panels(2, 8.4, 3.6, left=0.65, bottom=0.5, gap=0.75)
    for axes, name in zip(axes_row, ("before", "after")):
        bins = summary[f"reliability_{name}"]
        width = 1.0 / summary["bins"]
        centres = [(i + 0.5) * width for i in range(summary["bins"])]
        filled = [i for i, c in enumerate(bins["count"]) if c]
        axes.bar([centres[i] for i in filled], [bins["accuracy"][i] for i in filled], width=width * 0.9,
                 color="#4c78a8", label="accuracy")
        axes.plot([bins["confidence"][i] for i in filled], [bins["accuracy"][i] for i in filled], "o",
                  color="#e45756", markersize=4, label="mean confidence")
        axes.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
        t = 1.0 if name == "before" else summary["temperature"]
        axes.set_title(f"{name}: T = {t:.2f}, ECE = {summary[f'ece_{name}']:.3f}")
        axes.set_xlabel("confidence")
        axes.set_ylabel("accuracy")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.legend(fontsize=7, loc="upper left")
    return png_bytes(figure)


def denormalise(images: torch.Tensor, preprocessing: dict[str, Any]) -> torch.Tensor:
    """Normalised model input back to 0..1 RGB, for showing what the network was given."""
    mean = torch.tensor(preprocessing["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing["std"]).view(1, -1, 1, 1)
    return (images.float().cpu() * std + mean).clamp(0, 1)


def augmentation_mosaic(images: torch.Tensor, targets: torch.Tensor, model: Any) -> Image.Image:
    """A training batch as the network sees it: after the loader's augmentation and the model's Mixup/CutMix.

    Tiles are titled with the label (the two largest shares when Mixup/CutMix mixed them).
    """
    images, targets = images.float(), targets
    mixup = getattr(model, "mixup", None)
    if mixup is not None and len(images) >= 2:
        images = images[: len(images) // 2 * 2].clone()  # timm's Mixup pairs images: it needs an even batch
        images, soft = mixup(images, targets[: len(images)])
    else:
        soft = torch.nn.functional.one_hot(targets, len(model.class_names)).float()
    pictures = denormalise(images, model.preprocessing)
    titles: list[tuple[str, ...]] = []
    for shares, classes in zip(*soft.topk(min(2, soft.shape[1]), dim=1)):
        if len(shares) > 1 and shares[1] > 0.2:
            titles.append((model.class_names[classes[0]], f" {shares[0]:.0%}/", model.class_names[classes[1]]))
        else:
            titles.append((model.class_names[classes[0]],))
    return _captioned_grid(pictures, titles)


#: Mosaic layout: tiles per row, tile side in pixels, caption strip height.
MOSAIC_COLUMNS, MOSAIC_TILE, MOSAIC_CAPTION = 8, 96, 14


def _captioned_grid(pictures: torch.Tensor, titles: list[tuple[str, ...]]) -> Image.Image:
    """Tiles (0..1 RGB) in rows of :data:`MOSAIC_COLUMNS`, each with its title above it, on white.

    A title is class names with separators between them (``("cat", " 60%/", "dog")``); when it is too wide,
    the longest name is cut first, so a mixed tile still shows both classes and the share.

    Drawn with torchvision's ``make_grid`` and Pillow rather than one matplotlib axes per tile: with 32
    tiles matplotlib's layout took about a second of every ``fit``'s end-of-fit analysis.
    """
    from PIL import ImageDraw, ImageFont
    from torchvision.utils import make_grid

    tiles = torch.nn.functional.interpolate(pictures, size=(MOSAIC_TILE, MOSAIC_TILE), mode="nearest-exact")
    # The caption strip is part of each tile (white), so make_grid keeps tile and caption together.
    tiles = torch.nn.functional.pad(tiles, (0, 0, MOSAIC_CAPTION, 0), value=1.0)
    grid = make_grid(tiles, nrow=MOSAIC_COLUMNS, padding=4, pad_value=1.0)
    image = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=10)
    step = MOSAIC_TILE + 4
    for i, parts in enumerate(titles):
        title = fit_caption(parts, MOSAIC_TILE, lambda text: draw.textlength(text, font=font))
        left = 4 + (i % MOSAIC_COLUMNS) * step
        top = 4 + (i // MOSAIC_COLUMNS) * (step + MOSAIC_CAPTION)
        draw.text((left + MOSAIC_TILE / 2, top + MOSAIC_CAPTION / 2), title, fill="black", font=font, anchor="mm")
    return image


def fit_caption(parts: tuple[str, ...], width: float, measure: Any) -> str:
    """Join ``parts`` (names at even positions, separators between them) into a caption no wider than ``width``
    as ``measure`` counts it, cutting the longest name first (long names are cut, never overlap the next tile)."""
    parts = list(parts)
    while measure("".join(parts)) > width:
        longest = max(range(0, len(parts), 2), key=lambda k: len(parts[k]))
        if len(parts[longest]) <= 2:
            break
        parts[longest] = parts[longest][:-2] + "…"
    return "".join(parts)


def thumbnail(image: Image.Image, size: int = 160) -> bytes:
    """A JPEG of at most ``size`` pixels per side (galleries stay small with hundreds of images)."""
    image = image.convert("RGB")
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.NEAREST if scale > 2 else Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
