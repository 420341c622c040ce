"""What an exported model carries in its own metadata so it can be used without this app.

The same plain string entries in every format: ONNX ``metadata_props``, OpenVINO ``rt_info`` (under
``lit_convnext``), a LiteRT flatbuffer metadata entry (``lit_convnext``, the entries as one JSON object) and Core
ML's user-defined metadata. Readable with the format's own library alone, e.g.::

    session = onnxruntime.InferenceSession("model.onnx")
    props = session.get_modelmeta().custom_metadata_map
    class_names = json.loads(props["class_names"])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lit_convnext.errors import UserError

#: Names of the graph's input and output.
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ModelCard:
    """Everything besides the weights needed to use a classifier correctly."""

    model_name: str
    class_names: list[str]
    #: timm data config: ``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``.
    preprocessing: dict[str, Any]
    #: Temperature already divided into the exported logits (1.0: none was fitted).
    temperature: float = 1.0
    task: str = "multiclass"
    #: Calibration entries not baked into the graph (e.g. multi-label ``thresholds``).
    calibration: dict[str, Any] = field(default_factory=dict)

    def to_props(self, version: str) -> dict[str, str]:
        return {
            "model_name": self.model_name,
            "class_names": json.dumps(self.class_names, ensure_ascii=False),
            "preprocessing": json.dumps(self.preprocessing),
            "temperature_applied": repr(float(self.temperature)),
            "task": self.task,
            "calibration": json.dumps(self.calibration),
            "lit_convnext_version": version,
            "input_name": INPUT_NAME,
            "output": f"{OUTPUT_NAME}: logits already divided by temperature_applied; "
                      f"{'sigmoid' if self.task == 'multilabel' else 'softmax'} gives the probabilities",
        }

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> ModelCard:
        missing = [key for key in ("model_name", "class_names", "preprocessing") if key not in props]
        if missing:
            raise UserError(f"{source} has no {', '.join(missing)} in its metadata: it was not written by "
                            "`lit-convnext export`; export it again from the checkpoint")
        return cls(
            model_name=props["model_name"],
            class_names=list(json.loads(props["class_names"])),
            preprocessing=dict(json.loads(props["preprocessing"])),
            temperature=float(props.get("temperature_applied", "1.0")),
            task=props.get("task", "multiclass"),
            calibration=dict(json.loads(props.get("calibration", "{}"))),
        )
