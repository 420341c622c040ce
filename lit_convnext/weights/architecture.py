"""Describe a ConvNeXt by its depths, widths and version, read from state-dict shapes.

Used to tell a user that weights belong to another model size (e.g. convnext_small weights for a
convnext_tiny model) and which timm name would match them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import timm
from torch import nn

from lit_convnext.weights.shapes import Shape

_BLOCK_KEY = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.")

#: (depths, dims) of the timm ConvNeXt sizes; prefixed with ``convnext_`` or ``convnextv2_``.
_KNOWN_SIZES: dict[tuple[tuple[int, ...], tuple[int, ...]], str] = {
    ((2, 2, 6, 2), (40, 80, 160, 320)): "atto",
    ((2, 2, 6, 2), (48, 96, 192, 384)): "femto",
    ((2, 2, 6, 2), (64, 128, 256, 512)): "pico",
    ((2, 2, 8, 2), (80, 160, 320, 640)): "nano",
    ((3, 3, 9, 3), (96, 192, 384, 768)): "tiny",
    ((3, 3, 27, 3), (96, 192, 384, 768)): "small",
    ((3, 3, 27, 3), (128, 256, 512, 1024)): "base",
    ((3, 3, 27, 3), (192, 384, 768, 1536)): "large",
    ((3, 3, 27, 3), (256, 512, 1024, 2048)): "xlarge",
    ((3, 3, 27, 3), (352, 704, 1408, 2816)): "huge",
    ((3, 4, 30, 3), (384, 768, 1536, 3072)): "xxlarge",
}


@dataclass(frozen=True)
class ArchSignature:
    """Blocks per stage, channels per stage (None if unknown) and whether blocks use GRN (V2)."""

    depths: tuple[int, ...]
    dims: tuple[int | None, ...]
    v2: bool

    def describe(self) -> str:
        """E.g. ``ConvNeXt-V2 depths (2, 2, 6, 2) dims (40, 80, 160, 320)``."""
        version = "ConvNeXt-V2" if self.v2 else "ConvNeXt"
        return f"{version} depths {self.depths} dims {self.dims}"

    def compatible(self, other: "ArchSignature") -> bool:
        """Same version, depths, and widths wherever both are known."""
        if self.v2 != other.v2 or self.depths != other.depths:
            return False
        return all(a is None or b is None or a == b for a, b in zip(self.dims, other.dims))


def signature(shapes: Mapping[str, Shape]) -> ArchSignature:
    """Read depths/dims/version from timm-layout keys and shapes."""
    depths: dict[int, int] = {}
    for key in shapes:
        match = _BLOCK_KEY.match(key)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            depths[stage] = max(depths.get(stage, 0), block + 1)
    n_stages = max(depths, default=-1) + 1
    dims = tuple(_stage_width(shapes, stage) for stage in range(n_stages))
    v2 = any(".mlp.grn." in key for key in shapes)
    return ArchSignature(tuple(depths.get(s, 0) for s in range(n_stages)), dims, v2)


def guess_timm_name(sig: ArchSignature) -> str | None:
    """The timm model name with this signature, if it is a standard size."""
    dims = tuple(d for d in sig.dims if d is not None)
    size = _KNOWN_SIZES.get((sig.depths, dims))
    if size is None:
        return None
    name = f"convnextv2_{size}" if sig.v2 else f"convnext_{size}"
    return name if timm.is_model(name) else None


def model_name(model: nn.Module, sig: ArchSignature) -> str:
    """The name the model was built under (timm records it), else a guess from its shapes."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("architecture"):
        return str(cfg["architecture"])
    return guess_timm_name(sig) or type(model).__name__


def _stage_width(shapes: Mapping[str, Shape], stage: int) -> int | None:
    """Channels of one stage, from a depthwise conv, else its downsample conv, else the stem."""
    for key, shape in shapes.items():
        if key.startswith(f"stages.{stage}.blocks.") and key.endswith(".conv_dw.weight"):
            return shape[0]
    for key in (f"stages.{stage}.downsample.1.weight", "stem.0.weight" if stage == 0 else ""):
        if key in shapes:
            return shapes[key][0]
    return None
