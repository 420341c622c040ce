"""The class names that travel with a weights file, and the classifier rows matched to a folder's classes by name.

A checkpoint of this app (its ``hyper_parameters``) and an exported ``.safetensors`` (its JSON sidecar) carry the
names of their head's rows. Evaluating such weights on a folder checks the head fits; fine-tuning them on a folder
whose classes include theirs keeps each old class's row by name and adds fresh rows for the new classes
(:func:`head_rows_by_name`), so a model learns new classes without forgetting the old ones' classifier.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lit_convnext.errors import UserError
from lit_convnext.text import preview
from lit_convnext.weights.reading import read_checkpoint
from lit_convnext.weights.saving import sidecar_path

_PREVIEW = 6


def stored_class_names(source: str | Path, checkpoint: Mapping[str, Any] | None = None) -> list[str] | None:
    """Class names, in head order, of an exported ``.safetensors`` (from its JSON sidecar) or of this app's
    checkpoint (its ``hyper_parameters``); ``None`` when the weights carry none (other layouts, hub).
    ``checkpoint`` is the file's content when it was read already (it is not read twice)."""
    path = Path(source).expanduser()
    if path.suffix == ".safetensors":
        sidecar = sidecar_path(path)
        try:
            names = json.loads(sidecar.read_text(encoding="utf-8")).get("class_names") if sidecar.is_file() else None
        except (ValueError, AttributeError) as err:  # not JSON, or not an object
            raise UserError(f"{sidecar}, the sidecar of {path}, is not the JSON object an export writes: export the "
                            "weights again, or move the file away") from err
    else:
        hparams = (checkpoint if checkpoint is not None else read_checkpoint(path)).get("hyper_parameters")
        names = hparams.get("class_names") if isinstance(hparams, dict) else None
    return [str(name) for name in names] if isinstance(names, list) else None


@dataclass(frozen=True)
class HeadRows:
    """A classifier for the folder's classes built from a file's head: ``weight`` and ``bias`` in the folder's
    class order; ``kept`` the old classes (folder order), each with its row in the file; ``added`` the new ones,
    left at the model's fresh initialisation."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    kept: dict[str, int]
    added: list[str]


def head_rows_by_name(
    file_weight: torch.Tensor,
    file_bias: torch.Tensor | None,
    file_classes: Sequence[str],
    fresh_weight: torch.Tensor,
    fresh_bias: torch.Tensor | None,
    classes: Sequence[str],
    source: str,
) -> HeadRows:
    """Row ``i`` of the result is the file's row of ``classes[i]`` when the file has that class, else the fresh one.

    The file's classes must all be among ``classes`` (a class the folder lacks would lose its row, and a renamed
    folder would train a new class from scratch): otherwise a ``UserError`` names the differences.
    """
    if len(file_classes) != file_weight.shape[0] or len(set(file_classes)) != len(file_classes):
        raise UserError(f"the class names stored with {source} ({len(file_classes)}, "
                        f"{len(set(file_classes))} distinct) do not describe its {file_weight.shape[0]}-row head: "
                        "the file is inconsistent; export it again from its checkpoint")
    missing = [name for name in file_classes if name not in set(classes)]
    if missing:
        added = [name for name in classes if name not in set(file_classes)]
        also = f"; the folder's classes not in the file: [{preview(added, _PREVIEW)}]" if added else ""
        raise UserError(
            f"{source} was trained on {len(file_classes)} classes and {len(missing)} of them are not in the folder: "
            f"[{preview(missing, _PREVIEW)}]{also}; its head keeps every class by name, so add those class folders "
            "(or fix renamed ones), or pass --model.pretrained_head new to start a new head from its backbone"
        )
    if file_weight.shape[1:] != fresh_weight.shape[1:]:
        raise UserError(f"the head in {source} takes {file_weight.shape[1:]} features, the model's "
                        f"{tuple(fresh_weight.shape[1:])}: choose weights of the same architecture")
    row_of = {name: row for row, name in enumerate(file_classes)}
    kept = {name: row_of[name] for name in classes if name in row_of}
    targets = torch.tensor([i for i, name in enumerate(classes) if name in row_of], dtype=torch.long)
    sources = torch.tensor(list(kept.values()), dtype=torch.long)
    weight = fresh_weight.detach().clone()
    weight[targets] = file_weight[sources].to(weight.dtype)
    bias = None
    if fresh_bias is not None:
        bias = fresh_bias.detach().clone()
        if file_bias is not None:
            bias[targets] = file_bias[sources].to(bias.dtype)
    return HeadRows(weight, bias, kept, [name for name in classes if name not in row_of])
