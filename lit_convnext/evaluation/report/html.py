"""Assemble ``report.html`` from a run directory: one file, images embedded as data URIs, opens offline.

Everything is read from the files the run wrote (config, TensorBoard events or a CSVLogger's ``metrics.csv``,
CSVs, ``val_calibration.json``), so ``lit-convnext report RUN_DIR`` rebuilds the same page later. Tables and
galleries are capped so the page stays fast at 1,000 classes and a million validation images (the per-image CSV is
read in one pass, keeping only the gallery's rows); the CSVs beside it hold everything.
"""

from __future__ import annotations

import base64
import csv
import heapq
import html
import importlib.util
import itertools
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image

from lit_convnext.data.images import load_rgb
from lit_convnext.errors import UserError
from lit_convnext.evaluation.report import figures
from lit_convnext.evaluation.report.cam import CAM_MISSING, cam_available, cam_overlays
from lit_convnext.evaluation.teacher_comparison import COMPARISON, TEACHER_PREDICTIONS, compare
from lit_convnext.text import preview

#: Rows of the per-class table (worst F1 first) and of the confused-pairs table.
TABLE_ROWS = 200
PAIR_ROWS = 30

STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px 40px;color:#222}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ddd;padding-top:12px} nav a{margin-right:12px}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{max-height:420px;overflow:auto;display:inline-block} .note{color:#666;font-size:13px}
.gallery{display:flex;flex-wrap:wrap;gap:10px} .card{border:1px solid #ddd;padding:6px;font-size:12px;width:330px}
.card img{width:160px;height:160px;object-fit:contain;background:#eee;image-rendering:pixelated}
.bad{color:#b00} .card .note{word-break:break-all} img.figure{max-width:100%}
"""


def build_report(run_dir: Path, model: Any = None, gallery_size: int = 24,
                 analysis_seconds: float | None = None) -> Path:
    """Write ``run_dir/report.html`` from the run's files; ``model`` (best weights) adds Grad-CAM overlays."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    predictions_csv = run_dir / "val_predictions.csv"
    if not predictions_csv.is_file():
        raise UserError(f"{predictions_csv} not found: the report needs the per-image results of the run; "
                        f"run `lit-convnext validate --config {run_dir / 'config.yaml'} --ckpt_path CKPT` into it")
    results = read_predictions(predictions_csv, gallery_size)
    names = list(model.class_names) if model is not None else _class_names(run_dir, results)
    scalars = logged_scalars(run_dir)  # read once: the TensorBoard event files are the largest input
    sections = [
        ("Summary", _summary(run_dir, results, names, model, scalars)),
        ("Training curves", _curves(scalars)),
        ("Per-class results", _per_class(run_dir)),
        ("Confusion matrix", _confusion(run_dir)),
        ("Most confused pairs", _pairs(run_dir)),
        ("Calibration", _calibration(run_dir)),
        *([("Teacher and student", _teacher(run_dir))] if (run_dir / COMPARISON).is_file() else []),
        ("Worst errors", _worst_errors(results, names, model)),
        ("Suspected label errors", _label_issues(run_dir, gallery_size)),
        ("Augmented training batch", _mosaic(run_dir)),
        ("Files", _files()),
    ]
    elapsed = time.perf_counter() - started
    timing = f"Report built in {elapsed:.1f} s"
    if analysis_seconds is not None:
        timing += f"; validating the best checkpoint for it took {analysis_seconds:.1f} s"
    nav = " ".join(f'<a href="#s{i}">{html.escape(title)}</a>' for i, (title, _) in enumerate(sections))
    body = "\n".join(f'<h2 id="s{i}">{html.escape(title)}</h2>\n{content}' for i, (title, content) in enumerate(sections))
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>lit-convnext report: "
            f"{html.escape(run_dir.name)}</title><style>{STYLE}</style></head><body>"
            f"<h1>Run report: {html.escape(str(run_dir))}</h1><nav>{nav}</nav>\n{body}\n"
            f'<p class=note>{timing}.</p></body></html>\n')
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ reading
def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@dataclass
class ValidationResults:
    """What the report uses of ``val_predictions.csv``: counts, the class names seen and the ``worst``
    misclassified rows (highest loss first, as many as the gallery shows). Read in one pass without keeping the
    other rows: the file has a row per validation image, and a million rows as dicts would take gigabytes."""

    images: int = 0
    correct: int = 0
    errors: int = 0
    names: set[str] = field(default_factory=set)
    worst: list[dict[str, str]] = field(default_factory=list)


def read_predictions(path: Path, gallery_size: int) -> ValidationResults:
    """:class:`ValidationResults` of a ``val_predictions.csv``."""
    results = ValidationResults()

    def misclassified(rows: Iterable[dict[str, str]]) -> Iterator[dict[str, str]]:
        for row in rows:
            results.images += 1
            results.names.update((row["true"], row["predicted"]))
            if row["correct"] == "0":
                results.errors += 1
                yield row
            else:
                results.correct += 1

    with path.open(newline="", encoding="utf-8") as handle:
        # nlargest keeps only gallery_size rows; ties stay in file order, as a stable sort would leave them
        results.worst = heapq.nlargest(gallery_size, misclassified(csv.DictReader(handle)),
                                       key=lambda row: float(row["loss"]))
    return results


def _class_names(run_dir: Path, results: ValidationResults) -> list[str]:
    per_class = run_dir / "val_per_class.csv"
    if per_class.is_file():
        return [row["class"] for row in _read_csv(per_class)]
    return sorted(results.names)


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar the run logged to TensorBoard: tag -> [(step, value)] (and ``_wall`` -> [(first, last)])."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars: dict[str, list[tuple[int, float]]] = {}
    walls: list[float] = []
    for tag in accumulator.Tags().get("scalars", []):
        if tag.count("/") > 1 and not tag.startswith("lr-"):  # per-class curves (val/recall/<class>): not drawn
            continue
        events = accumulator.Scalars(tag)
        scalars[tag] = [(event.step, event.value) for event in events]
        walls += [events[0].wall_time, events[-1].wall_time]
    if walls:
        scalars["_wall"] = [(0, min(walls)), (0, max(walls))]
    return scalars


# ------------------------------------------------------------------------------------------ sections
def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cells = "".join(
        "<tr>" + "".join(f'<td class=num>{v}</td>' if isinstance(v, (int, float)) else f"<td>{html.escape(str(v))}</td>"
                         for v in row) + "</tr>" for row in rows)
    return f"<div class=scroll><table><tr>{head}</tr>{cells}</table></div>"


def _img(data: bytes, mime: str = "image/png", css: str = "figure", alt: str = "") -> str:
    return f'<img class="{css}" alt="{html.escape(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode()}">'


def _summary(run_dir: Path, results: ValidationResults, names: list[str], model: Any,
             scalars: dict[str, list[tuple[int, float]]]) -> str:
    config: dict[str, Any] = {}
    if (run_dir / "config.yaml").is_file():
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    data, mdl, trainer = (config.get(k) or {} for k in ("data", "model", "trainer"))
    accuracy = results.correct / max(1, results.images)
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt")) if (run_dir / "checkpoints").is_dir() else []
    items: list[list[Any]] = [
        ["data", str(data.get("root", "?"))],
        ["classes", f"{len(names)}: {preview(names, 12)}"],
        ["validation images", results.images],
        ["model", f"{mdl.get('model_name', getattr(model, 'hparams', {}).get('model_name', '?'))}, "
                  f"pretrained={mdl.get('pretrained', '?')}, image size {mdl.get('image_size') or 'pretrained'}"],
        ["recipe", f"{trainer.get('max_epochs', '?')} epochs, batch {data.get('batch_size', '?')}, lr {mdl.get('lr', '?')}, "
                   f"weight decay {mdl.get('weight_decay', '?')}, label smoothing {mdl.get('label_smoothing', '?')}, "
                   f"mixup {mdl.get('mixup_alpha', 0)}, cutmix {mdl.get('cutmix_alpha', 0)}"],
        ["augmentation", json.dumps(data.get("augmentation", {}), default=str)[:300]],
        ["best checkpoint", ", ".join(p.name for p in best) or "?"],
        ["validation top-1 (best checkpoint)", f"{accuracy:.4f}"],
    ]
    old_classes = run_dir / "old_classes.json"  # a fine-tune that added classes to pretrained weights by name
    if old_classes.is_file():
        figures = json.loads(old_classes.read_text(encoding="utf-8"))
        before, after = figures.get("before") or {}, figures.get("after") or {}
        items.append([f"old classes ({len(figures['old_classes'])}): accuracy before, after",
                      f"{before.get('accuracy', float('nan')):.4f}, {after.get('accuracy', float('nan')):.4f} "
                      f"on {after.get('images', '?')} images; new classes ({len(figures['new_classes'])}): "
                      f"{after.get('new_accuracy', float('nan')):.4f}"])
    if "_wall" in scalars:
        (_, first), (_, last) = scalars["_wall"]
        items.append(["training time (first to last logged value)", f"{(last - first) / 60:.1f} min"])
    return _table(["", "this run"], items)


def logged_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The run's logged values, tag -> [(step, value)]: from its TensorBoard events (the default logger), else from
    the ``metrics.csv`` of Lightning's CSVLogger (``--trainer.logger CSVLogger``, no wall times there)."""
    if any(run_dir.glob("events.out.tfevents.*")):
        return read_scalars(run_dir)
    if (run_dir / "metrics.csv").is_file():
        return read_metrics_csv(run_dir / "metrics.csv")
    return {}


def read_metrics_csv(path: Path) -> dict[str, list[tuple[int, float]]]:
    """A CSVLogger's ``metrics.csv`` (a ``step`` column, one column a tag, empty where a row lacks it) as
    tag -> [(step, value)], leaving out the per-class tags as :func:`read_scalars` does."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for row in _read_csv(path):
        step = _number(row.get("step"))
        if step is None:
            continue
        for tag, text in row.items():
            value = _number(text)
            if tag in (None, "epoch", "step") or value is None or (tag.count("/") > 1 and not tag.startswith("lr-")):
                continue
            scalars.setdefault(tag, []).append((int(step), value))
    return scalars


def _number(text: Any) -> float | None:
    """A CSV cell as a number; None for an empty cell or one that is not a number (left out, not the report)."""
    try:
        return float(text) if isinstance(text, str) and text.strip() else None
    except ValueError:
        return None


def _curves(scalars: dict[str, list[tuple[int, float]]]) -> str:
    png = figures.training_curves(scalars) if scalars else None
    if png is None:
        return ("<p class=note>No logged values in this run directory to draw (TensorBoard events, or a CSVLogger's "
                "metrics.csv): the run used another logger, or none.</p>")
    return _img(png, alt="training curves")


def _per_class(run_dir: Path) -> str:
    path = run_dir / "val_per_class.csv"
    if not path.is_file():
        return "<p class=note>val_per_class.csv is missing (the class report was off: --class_report.enabled).</p>"
    rows = sorted(_read_csv(path), key=lambda r: float(r["f1"]))
    shown = [[r["class"], float(r["precision"]), float(r["recall"]), float(r["f1"]), int(r["support"])]
             for r in rows[:TABLE_ROWS]]
    note = (f"<p class=note>Worst F1 first; {len(shown)} of {len(rows)} classes shown, all in val_per_class.csv.</p>"
            if len(rows) > TABLE_ROWS else "<p class=note>Worst F1 first.</p>")
    return note + _table(["class", "precision", "recall", "F1", "images"], shown)


def _confusion(run_dir: Path) -> str:
    path = run_dir / "val_confusion_matrix.csv"
    if not path.is_file():
        return "<p class=note>val_confusion_matrix.csv is missing (the class report was off: --class_report.enabled).</p>"
    with path.open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    names = header[1:]
    confusion = torch.tensor([[int(count) for count in row[1:]] for row in rows], dtype=torch.long)
    n = len(names)
    classes = figures.confusion_classes(confusion)
    note = "Rows are true classes, normalised to sum to 1; counts in val_confusion_matrix.csv."
    if len(classes) < n:
        note += (f" Only the {len(classes)} of {n} classes most involved in errors are drawn, so that labels stay "
                 "readable; their rows still count every prediction.")
    return f"<p class=note>{note}</p>" + _img(figures.normalised_confusion(confusion, names, classes), alt="confusion")


def _pairs(run_dir: Path) -> str:
    path = run_dir / "val_confused_pairs.csv"
    if not path.is_file():
        return "<p class=note>val_confused_pairs.csv is missing.</p>"
    rows = _read_csv(path)
    if not rows:
        return "<p>No validation image was misclassified.</p>"
    shown = [[r["true"], r["predicted"], int(r["count"]), f"{float(r['share_of_true']):.1%}"] for r in rows[:PAIR_ROWS]]
    return (f"<p class=note>{len(shown)} of {len(rows)} pairs shown; all in val_confused_pairs.csv.</p>"
            + _table(["true", "predicted as", "images", "share of the true class"], shown))


def _calibration(run_dir: Path) -> str:
    path = run_dir / "val_calibration.json"
    if not path.is_file():
        return "<p class=note>val_calibration.json is missing.</p>"
    summary = json.loads(path.read_text(encoding="utf-8"))
    text = (f"<p>Temperature T = {summary['temperature']:.3f} (probabilities are softmax(logits / T) in validate, "
            f"test and predict). Expected calibration error on {summary['images']} validation images: "
            f"<b>{summary['ece_before']:.4f}</b> raw, <b>{summary['ece_after']:.4f}</b> calibrated "
            f"(NLL {summary['nll_before']:.4f} -> {summary['nll_after']:.4f}). The temperature was fitted on these same "
            "images, so the calibrated figure is optimistic; check it on test with <code>lit-convnext test</code>.</p>")
    return text + _img(figures.reliability_diagram(summary), alt="reliability diagram")


def _teacher(run_dir: Path) -> str:
    """A distilling run's teacher beside the student (:mod:`lit_convnext.evaluation.teacher_comparison`)."""
    compared = compare(run_dir) or {}
    rows = []
    for label, key, shown in (("model", "model_name", str), ("parameters", "parameters", lambda v: f"{v / 1e6:.2f} M"),
                              ("weights", "megabytes", lambda v: f"{v:g} MB"),
                              ("images/s (validation batches)", "images_per_s", lambda v: f"{v:g}"),
                              ("validation top-1", "accuracy", lambda v: f"{v:.4f}")):
        student, teacher = compared["student"].get(key), compared["teacher"].get(key)
        rows.append([label, "?" if student is None else shown(student), "?" if teacher is None else shown(teacher)])
    agreement = (f"The student's top class is the teacher's on <b>{compared['agreement']:.1%}</b> of the "
                 f"{compared['images']} validation images (best checkpoint)." if "agreement" in compared
                 else "val_predictions.csv or val_teacher_predictions.csv is missing: no agreement to show.")
    note = (f"Distilled with weight {compared['distill_weight']} and temperature {compared['distill_temperature']} "
            f"from {html.escape(str(compared['teacher'].get('source', '?')))}. Speed timed on "
            f"{html.escape(compared['timed_on'])}; the teacher's answers per image are in {TEACHER_PREDICTIONS}; "
            "the agreement per validation is the logged val/teacher_agreement.")
    return f"<p>{agreement}</p>" + _table(["", "student", "teacher"], rows) + f"<p class=note>{note}</p>"


def _picture(path: str) -> bytes | None:
    try:
        return figures.thumbnail(load_rgb(Path(path)))
    except (OSError, ValueError, SyntaxError):
        return None


def _card(picture: bytes | None, overlay: Image.Image | None, lines: list[str], path: str) -> str:
    images = _img(picture, "image/jpeg", "thumb", path) if picture else f"<span class=bad>cannot read {html.escape(path)}</span>"
    if overlay is not None:
        images += _img(figures.thumbnail(overlay), "image/jpeg", "thumb", "class activation")
    text = "<br>".join(lines)
    return f'<div class=card>{images}<br>{text}<br><span class=note>{html.escape(path)}</span></div>'


def _worst_errors(results: ValidationResults, names: list[str], model: Any) -> str:
    if not results.errors:
        return "<p>No validation image was misclassified.</p>"
    shown = results.worst
    overlays: list[Image.Image | None] = [None] * len(shown)
    note = (f"{len(shown)} of {results.errors} misclassified images, highest loss first (all in "
            "val_predictions.csv). ")
    if model is None:
        note += "Pass a checkpoint to `lit-convnext report --ckpt_path` for class-activation overlays."
    elif not cam_available():
        note += CAM_MISSING
    else:
        index = {name: i for i, name in enumerate(names)}
        try:
            overlays = list(cam_overlays(model, [Path(r["path"]) for r in shown], [index[r["predicted"]] for r in shown]))
            note += "Right: Grad-CAM of the predicted class on the last ConvNeXt stage (where the model looked)."
        except (OSError, ValueError, SyntaxError) as err:
            rank_zero_warn(f"class-activation overlays failed: {err}")
            note += f"Class-activation overlays failed: {html.escape(str(err))}."
    cards = [
        _card(_picture(r["path"]), overlay,
              [f"true <b>{html.escape(r['true'])}</b>", f"predicted <b class=bad>{html.escape(r['predicted'])}</b> "
               f"({float(r['confidence']):.1%})", f"loss {float(r['loss']):.2f}"], r["path"])
        for r, overlay in zip(shown, overlays)
    ]
    return f"<p class=note>{note}</p><div class=gallery>{''.join(cards)}</div>"


def _label_issues(run_dir: Path, size: int) -> str:
    path = run_dir / "val_label_issues.csv"
    if not path.is_file():
        if importlib.util.find_spec("cleanlab") is None:  # the run's one mention of the extra (it ends without a warning)
            return ("<p class=note>Likely label errors are found with cleanlab, which this installation does not have: "
                    "<code>pip install 'lit-convnext[report]'</code>, and the next <code>fit</code> or "
                    "<code>validate</code> lists them in val_label_issues.csv.</p>")
        return ("<p class=note>val_label_issues.csv is missing: the label-issue search was off "
                "(<code>--evaluation.label_issues</code>), or cleanlab was not installed when the run was made.</p>")
    with path.open(newline="", encoding="utf-8") as handle:  # the gallery's rows kept, the others counted
        reader = csv.DictReader(handle)
        rows = list(itertools.islice(reader, size))
        total = len(rows) + sum(1 for _ in reader)
    if not total:
        return "<p>cleanlab found no likely label errors in the validation split.</p>"
    cards = [
        _card(_picture(r["path"]), None,
              [f"#{r['rank']} labelled <b class=bad>{html.escape(r['given'])}</b> "
               f"({float(r['given_probability']):.1%})",
               f"model believes <b>{html.escape(r['suggested'])}</b> ({float(r['suggested_probability']):.1%})"],
              r["path"])
        for r in rows
    ]
    return (f"<p class=note>{len(cards)} of {total} images whose label cleanlab (confident learning on the "
            "validation probabilities) flags as likely wrong, most likely first; all in val_label_issues.csv.</p>"
            f"<div class=gallery>{''.join(cards)}</div>")


def _mosaic(run_dir: Path) -> str:
    path = run_dir / "train_batch_mosaic.png"
    if not path.is_file():
        return "<p class=note>train_batch_mosaic.png is written by fit; this run directory has none.</p>"
    return ("<p class=note>The first training batch after the loader's augmentation and Mixup/CutMix, as the network "
            "received it (titles: label, or the two largest label shares when images were mixed).</p>"
            + _img(path.read_bytes(), alt="augmented batch"))


def _files() -> str:
    files = [
        ["val_predictions.csv", "one row per validation image: path, true, predicted, confidence, loss, top-k"],
        ["val_confused_pairs.csv", "misclassified (true, predicted) pairs with counts and share of the true class"],
        ["val_label_issues.csv", "likely label errors (cleanlab), ranked, with the class the model believes"],
        ["val_calibration.json", "temperature, ECE and NLL before/after, reliability bins"],
        ["val_per_class.csv, val_confusion_matrix.csv", "per-class precision/recall/F1 and confusion counts"],
        ["train_batch_mosaic.png", "an augmented training batch"],
        [f"{TEACHER_PREDICTIONS}, {COMPARISON}", "a distilling run: the teacher's answers, both models' size and speed"],
        ["checkpoints/best-*.ckpt", "best weights, with the temperature under checkpoint['calibration']"],
    ]
    return _table(["file", "what it holds"], files)
