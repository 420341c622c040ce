"""Export a fine-tuned model as plain timm weights (``.safetensors``) plus a JSON sidecar.

The weights file needs nothing from this app: plain timm loads it with
``timm.create_model(name, pretrained=True, num_classes=N, pretrained_cfg_overlay=dict(file=..., num_classes=N))``.
The sidecar keeps what the tensors cannot: class names and the preprocessing the model was trained with.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from lit_convnext.errors import UserError
from lit_convnext.private_api import uncompiled

#: pretrained_cfg entries that point timm at a download; dropped so the sidecar never redirects loading.
_SOURCE_KEYS: frozenset[str] = frozenset(
    {"url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "hf_hub_revision", "source", "tag"}
)


def export_timm_weights(
    model: nn.Module,
    path: str | Path,
    *,
    model_name: str,
    class_names: list[str],
    pretrained_cfg: dict[str, Any],
) -> Path:
    """Write ``model``'s weights in timm layout to ``path`` (``.safetensors``) and ``<stem>.json`` beside it.

    Returns the path of the weights file. ``pretrained_cfg`` supplies the preprocessing (mean, std,
    interpolation, crop_pct, input_size, ...) recorded in the sidecar.
    """
    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        raise UserError(f"export path {path} must end with .safetensors; e.g. {path.with_suffix('.safetensors')}")
    net = uncompiled(model)  # keys without the prefix of a torch.compile wrapper
    num_classes = getattr(net, "num_classes", None)
    if num_classes is not None and num_classes != len(class_names):
        raise UserError(
            f"cannot export {model_name} to {path}: the model has {num_classes} classes "
            f"but {len(class_names)} class names were given"
        )
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    cfg = _json_safe({k: v for k, v in pretrained_cfg.items() if k not in _SOURCE_KEYS})
    cfg["num_classes"] = len(class_names)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"format": "pt", "model_name": model_name,
                                                "num_classes": str(len(class_names))})
        sidecar_path(path).write_text(json.dumps(_sidecar(path, model_name, class_names, cfg), indent=2) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write exported weights to {path}: {exc.strerror or exc}; check the folder") from exc
    return path


def sidecar_path(weights_path: str | Path) -> Path:
    """The JSON sidecar that belongs to an exported weights file: ``<stem>.json`` in the same folder."""
    weights_path = Path(weights_path)
    return weights_path.with_name(weights_path.stem + ".json")


def _sidecar(path: Path, model_name: str, class_names: list[str], cfg: dict[str, Any]) -> dict[str, Any]:
    """Content of the sidecar JSON."""
    n = len(class_names)
    return {
        "format": "timm",
        "weights": path.name,
        "model_name": model_name,
        "num_classes": n,
        "class_names": list(class_names),
        "pretrained_cfg": cfg,
        "timm_usage": (
            f"timm.create_model({model_name!r}, pretrained=True, num_classes={n}, "
            f"pretrained_cfg_overlay=dict(file={path.name!r}, num_classes={n}))"
        ),
    }


def _json_safe(value: Any) -> Any:
    """Tuples to lists, non-finite floats and unknown objects to strings, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
