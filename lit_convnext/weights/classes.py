"""The class names that travel with a weights file, so evaluating it on a folder can check the head fits."""

from __future__ import annotations

import json
from pathlib import Path

from lit_convnext.weights.saving import sidecar_path
from lit_convnext.weights.reading import read_checkpoint


def stored_class_names(source: str | Path) -> list[str] | None:
    """Class names, in head order, of an exported ``.safetensors`` (from its JSON sidecar) or of this app's
    checkpoint (its ``hyper_parameters``); ``None`` when the weights carry none (other layouts, hub)."""
    path = Path(source).expanduser()
    if path.suffix == ".safetensors":
        sidecar = sidecar_path(path)
        names = json.loads(sidecar.read_text(encoding="utf-8")).get("class_names") if sidecar.is_file() else None
    else:
        hparams = read_checkpoint(path).get("hyper_parameters")
        names = hparams.get("class_names") if isinstance(hparams, dict) else None
    return [str(name) for name in names] if isinstance(names, list) else None
