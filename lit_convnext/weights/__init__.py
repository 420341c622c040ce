"""Pretrained ConvNeXt weights, in reading order: read a file safely (``reading``, ``containers``), recognise and
convert its layout to timm (``layouts``, ``convert``, ``shapes``), load it with checks (``loading``, ``architecture``,
``report``), and save for plain timm (``saving``).

Supported layouts: timm, official facebookresearch ConvNeXt / ConvNeXt-V2 (incl. FCMAE pre-training),
torchvision, Hugging Face transformers, and this app's Lightning checkpoints (EMA or raw weights).
"""

from lit_convnext.weights.containers import extract_state_dict
from lit_convnext.weights.convert import convert_to_timm
from lit_convnext.weights.saving import export_timm_weights, sidecar_path
from lit_convnext.weights.layouts import detect_layout
from lit_convnext.weights.loading import load_pretrained
from lit_convnext.weights.reading import read_checkpoint
from lit_convnext.weights.report import LoadReport

__all__ = [
    "LoadReport",
    "convert_to_timm",
    "detect_layout",
    "export_timm_weights",
    "extract_state_dict",
    "load_pretrained",
    "read_checkpoint",
    "sidecar_path",
]
