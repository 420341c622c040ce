"""Load pretrained ConvNeXt weights of any supported layout into a freshly built timm model.

The model is built with the target class count, so the classifier is the one part allowed to differ:
it is kept when its shape matches and left at its fresh init otherwise. When both the file and the model name their
classes (a checkpoint of this app or an export, fine-tuned on a folder), the rows are matched by name instead: old
classes keep theirs, new classes get fresh ones (``weights.classes.head_rows_by_name``). Everything else must match,
because silently skipping backbone tensors would fine-tune from a partly random network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from lit_convnext.errors import UserError
from lit_convnext.weights import layouts
from lit_convnext.weights.architecture import guess_timm_name, model_name, signature
from lit_convnext.weights.classes import head_rows_by_name, stored_class_names
from lit_convnext.weights.containers import extract_state_dict
from lit_convnext.weights.convert import convert_to_timm
from lit_convnext.weights.reading import read_checkpoint
from lit_convnext.weights.report import HeadStatus, LoadReport
from lit_convnext.weights.shapes import Shape, model_shapes
from lit_convnext.private_api import uncompiled
from lit_convnext.text import preview

CLASSIFIER_KEYS: tuple[str, ...] = ("head.fc.weight", "head.fc.bias")
FINAL_NORM_KEYS: tuple[str, ...] = ("head.norm.weight", "head.norm.bias")
_PREVIEW = 5


def load_pretrained(
    model: nn.Module,
    source: str | Path,
    *,
    use_ema: bool = True,
    allow_missing: bool = False,
    class_names: Sequence[str] | None = None,
    new_head: bool = False,
) -> LoadReport:
    """Load the weights in ``source`` into ``model`` (a timm ConvNeXt built with the target classes).

    ``use_ema`` prefers EMA weights when the file has them (``model_ema``, ``state_dict_ema``, or the
    Lightning ``state_dict`` next to ``current_model_state``); ``False`` takes the raw weights.
    ``allow_missing`` tolerates (and reports) missing or unexpected backbone keys; a different
    architecture is always an error. ``class_names`` (the model's classes, in head order) matches the rows of a
    file that names its classes by name: see the module docstring; ``new_head`` leaves the model's fresh head
    whatever the file holds (its backbone alone is the starting point).
    """
    model = uncompiled(model)  # a torch.compile wrapper shares the parameters
    path = Path(source).expanduser()
    checkpoint = read_checkpoint(path)
    file_classes = stored_class_names(path, checkpoint) if class_names and not new_head else None
    extracted = extract_state_dict(checkpoint, use_ema=use_ema, source=str(path))
    layout = layouts.detect_layout(extracted.state_dict, source=str(path))
    ignored = list(extracted.ignored)
    if layout == layouts.OFFICIAL_V2_FCMAE:
        ignored += [k for k in extracted.state_dict if not k.startswith("encoder.")]
    target = model_shapes(model)
    converted = convert_to_timm(extracted.state_dict, layout, target)

    head_keys = set(CLASSIFIER_KEYS)
    if layout == layouts.OFFICIAL_V2_FCMAE and not any(k in converted for k in FINAL_NORM_KEYS):
        head_keys |= set(FINAL_NORM_KEYS)  # FCMAE encoders have no final norm: it stays at init like the head
    backbone = {k: v for k, v in converted.items() if k not in head_keys}
    model_backbone = {k: s for k, s in target.items() if k not in head_keys}
    _check_architecture(backbone, model_backbone, model, path, layout)

    missing = [k for k in model_backbone if k not in backbone]
    unexpected = [k for k in backbone if k not in model_backbone]
    if (missing or unexpected) and not allow_missing:
        raise UserError(_key_problem(path, missing, unexpected))

    kept: dict[str, int] = {}
    added: list[str] = []
    if new_head and "head.fc.weight" in target:
        head, reason, head_tensors = "reset", "--model.pretrained_head new: a new head from the file's backbone", {}
    elif file_classes is not None and class_names and list(file_classes) != list(class_names):
        head, reason, head_tensors, kept, added = _head_by_name(converted, model, file_classes, class_names, path)
    else:
        head, reason, head_tensors = _decide_head(converted, target, layout)
    to_load = {k: v for k, v in backbone.items() if k in model_backbone}
    to_load.update(head_tensors)
    with torch.no_grad():
        model.load_state_dict(to_load, strict=False)  # only the model's own keys, every shape checked

    return LoadReport(
        source=str(path),
        layout=layout,
        container=extracted.container + (f" (stripped {', '.join(extracted.stripped_prefixes)})"
                                         if extracted.stripped_prefixes else ""),
        tensors_loaded=len(to_load),
        head=head,
        head_reason=reason,
        ema_used=extracted.ema_used,
        ema_available=extracted.ema_available,
        missing=missing,
        unexpected=unexpected,
        ignored=ignored,
        classes_kept=kept,
        classes_added=added,
    )


def _check_architecture(
    backbone: Mapping[str, torch.Tensor],
    model_backbone: Mapping[str, Shape],
    model: nn.Module,
    path: Path,
    layout: str,
) -> None:
    """Raise ``UserError`` if the weights belong to another ConvNeXt size or version than the model."""
    file_shapes = {k: tuple(v.shape) for k, v in backbone.items()}
    file_sig, model_sig = signature(file_shapes), signature(model_backbone)
    if not any(k.startswith("stages.") and k.endswith(".conv_dw.weight") for k in file_shapes):
        raise UserError(
            f"the weights in {path} hold no ConvNeXt blocks (read as {layout} layout; first keys "
            f"{list(file_shapes)[:3]}); they are not ConvNeXt weights, choose a ConvNeXt checkpoint"
        )
    name = model_name(model, model_sig)
    first_bad = next(  # in model order: files (e.g. safetensors) may store keys sorted by name
        (k for k, s in model_backbone.items() if k in file_shapes and file_shapes[k] != tuple(s)), None
    )
    if file_sig.compatible(model_sig) and first_bad is None:
        return
    guess = guess_timm_name(file_sig)
    looks_like = f"{guess}, " if guess else ""
    if first_bad is not None:
        file_shape, model_shape = file_shapes[first_bad], tuple(model_backbone[first_bad])
        detail = f"first mismatch {first_bad}: file {file_shape} vs model {model_shape}"
    else:
        extra = [k for k in file_shapes if k not in model_backbone]
        lacking = [k for k in model_backbone if k not in file_shapes]
        details = [f"{len(keys)} keys only in the {where} (first {keys[0]})"
                   for keys, where in ((extra, "file"), (lacking, "model")) if keys]
        detail = ", ".join(details) or "different stage depths or widths"
    raise UserError(
        f"the weights in {path} look like a different architecture ({looks_like}{file_sig.describe()}, "
        f"{len(file_shapes)} backbone tensors) than the model {name} ({model_sig.describe()}, "
        f"{len(model_backbone)} backbone tensors); {detail}; choose the matching model name or other weights"
    )


def _decide_head(
    converted: Mapping[str, torch.Tensor], target: Mapping[str, Shape], layout: str
) -> tuple[HeadStatus, str, dict[str, torch.Tensor]]:
    """Keep the file's classifier if it fits the model, else leave the model's fresh one (and say why)."""
    if "head.fc.weight" not in target:
        return "none", "the model has no classifier (num_classes=0); the file's head is not used", {}
    norm_note = ""
    if layout == layouts.OFFICIAL_V2_FCMAE and not any(k in converted for k in FINAL_NORM_KEYS):
        norm_note = "; FCMAE pre-training checkpoint: no classifier and no final norm, both keep their fresh init"
    if not all(k in converted for k in CLASSIFIER_KEYS if k in target):
        return "reset", "the file has no classifier head" + norm_note, {}
    file_w, model_w = tuple(converted["head.fc.weight"].shape), target["head.fc.weight"]
    if file_w == model_w and all(tuple(converted[k].shape) == target[k] for k in CLASSIFIER_KEYS if k in target):
        return "kept", f"the file's {file_w[0]}-class head fits the model" + norm_note, {
            k: converted[k] for k in CLASSIFIER_KEYS if k in target
        }
    if file_w[0] != model_w[0]:
        return "reset", f"the file has {file_w[0]} classes, the model {model_w[0]}" + norm_note, {}
    return "reset", f"the file's head takes {file_w[-1]} features, the model's {model_w[-1]}" + norm_note, {}


def _head_by_name(
    converted: Mapping[str, torch.Tensor], model: nn.Module, file_classes: Sequence[str], classes: Sequence[str],
    path: Path,
) -> tuple[HeadStatus, str, dict[str, torch.Tensor], dict[str, int], list[str]]:
    """The file's head rows matched to ``classes`` by name (old rows kept, new rows fresh); a file whose classes are
    none of the folder's gives a new head, one with only some of them is refused (``head_rows_by_name``)."""
    if not set(file_classes) & set(classes):
        return ("reset", f"the file's classes ({preview(list(file_classes), _PREVIEW)}) are none of the folder's: "
                "a new head on its backbone", {}, {}, [])
    if not all(k in converted for k in CLASSIFIER_KEYS):
        raise UserError(f"{path} names its classes but holds no classifier head: export it again from its "
                        "checkpoint, or pass --model.pretrained_head new")
    fc = model.get_classifier()
    rows = head_rows_by_name(converted["head.fc.weight"], converted["head.fc.bias"], file_classes,
                             fc.weight, fc.bias, classes, str(path))
    what = (f"{len(rows.kept)} classes' rows kept by name" + (" in the folder's order" if not rows.added else "")
            + (f", {len(rows.added)} new classes' rows added at init ({preview(rows.added, _PREVIEW)})"
               if rows.added else ""))
    tensors = {"head.fc.weight": rows.weight}
    if rows.bias is not None:
        tensors["head.fc.bias"] = rows.bias
    return "by_name", what, tensors, rows.kept, rows.added


def _key_problem(path: Path, missing: list[str], unexpected: list[str]) -> str:
    """One-line message listing missing/unexpected backbone keys."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} model keys missing from the file ({preview(missing, _PREVIEW)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys in the file ({preview(unexpected, _PREVIEW)})")
    return (f"weights in {path} do not match the model: {'; '.join(parts)}; "
            "use other weights, or allow_missing=True to load the rest and leave these at init")
