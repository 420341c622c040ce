"""Recognise which code base wrote a ConvNeXt state dict, from its key names alone.

Each layout names the same tensors differently; detection looks for keys only that layout has,
so the conversion step can pick the right renaming without the user having to say where the file came from.
"""

from __future__ import annotations

from collections.abc import Iterable

from lit_convnext.errors import UserError

TIMM = "timm"
OFFICIAL_V1 = "official-convnext"
OFFICIAL_V2 = "official-convnextv2"
OFFICIAL_V2_FCMAE = "official-convnextv2-fcmae"
TORCHVISION = "torchvision"
HF_V1 = "hf-transformers-convnext"
HF_V2 = "hf-transformers-convnextv2"

ALL_LAYOUTS: tuple[str, ...] = (TIMM, OFFICIAL_V1, OFFICIAL_V2, OFFICIAL_V2_FCMAE, TORCHVISION, HF_V1, HF_V2)


def detect_layout(keys: Iterable[str], *, source: str = "") -> str:
    """Return one of ``ALL_LAYOUTS`` for these state-dict keys, or raise ``UserError`` if none fits."""
    keys = list(keys)
    key_set = set(keys)
    if any(k.startswith("encoder.downsample_layers.") or k.startswith("encoder.stages.") for k in keys):
        return OFFICIAL_V2_FCMAE
    if any(".embeddings.patch_embeddings." in k or k.startswith("embeddings.patch_embeddings.") for k in keys):
        is_v2 = any(k.startswith("convnextv2.") or ".grn." in k for k in keys)
        return HF_V2 if is_v2 else HF_V1
    if "features.0.0.weight" in key_set or any(k.startswith("features.") and ".block." in k for k in keys):
        return TORCHVISION
    if "stem.0.weight" in key_set or any(k.startswith("stages.") and ".blocks." in k for k in keys):
        return TIMM
    if any(k.startswith("downsample_layers.") for k in keys) or any(
        k.startswith("stages.") and ".dwconv." in k for k in keys
    ):
        return OFFICIAL_V2 if any(".grn." in k for k in keys) else OFFICIAL_V1
    raise UserError(
        f"unrecognised weights layout in {source or 'the checkpoint'} (first keys: {keys[:4]}); "
        "expected ConvNeXt weights from timm, facebookresearch, torchvision or Hugging Face"
    )
