"""Build a timm ConvNeXt (V1 or V2) for fine-tuning: name check, regularisers, head, pretrained weights.

timm does the architecture and the hub download; this module only chooses the options and turns
failures into messages a user can act on.
"""

from __future__ import annotations

import difflib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import timm
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lit_convnext.errors import UserError


@lru_cache(maxsize=1)
def convnext_architectures() -> tuple[str, ...]:
    """Every ConvNeXt V1/V2 architecture timm registers."""
    return tuple(timm.list_models(["convnext_*", "convnextv2_*"]))


def check_model_name(model_name: str) -> str:
    """Return the architecture part of ``model_name`` (``arch[.tag]``) or raise a ``UserError``."""
    arch, _, tag = model_name.partition(".")
    known = convnext_architectures()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see `timm.list_models('convnext*')`"
        raise UserError(f"unknown ConvNeXt model {model_name!r}: {hint}")
    if tag and model_name not in timm.list_pretrained(f"{arch}.*"):
        tags = [name.partition(".")[2] for name in timm.list_pretrained(f"{arch}.*")]
        raise UserError(
            f"{arch} has no pretrained tag {tag!r}; available: {', '.join(tags) or 'none'}"
        )
    return arch


def build_convnext(
    model_name: str,
    num_classes: int,
    pretrained: bool | str,
    drop_path_rate: float,
    layer_scale_init_value: float | None,
    head_init_scale: float,
    pretrained_use_ema: bool = True,
    allow_missing_keys: bool = False,
) -> tuple[nn.Module, dict[str, Any] | None]:
    """Create the network and load its starting weights.

    Returns the model and, when weights came from a local file, a JSON-safe load report.
    A new class count gets a freshly initialised head (scaled by ``head_init_scale``).
    """
    check_model_name(model_name)
    options: dict[str, Any] = dict(
        num_classes=num_classes, drop_path_rate=drop_path_rate, head_init_scale=head_init_scale
    )
    if layer_scale_init_value is not None:
        options["ls_init_value"] = layer_scale_init_value
    if pretrained is True:
        return _from_hub(model_name, options), None
    net = timm.create_model(model_name, pretrained=False, **options)
    if pretrained is False or pretrained in ("", "false", "False"):
        return net, None
    from lit_convnext.weights import load_pretrained  # the file formats live there

    report = load_pretrained(net, Path(pretrained), use_ema=pretrained_use_ema, allow_missing=allow_missing_keys)
    rank_zero_info(report.summary())
    return net, report.to_dict()


def _from_hub(model_name: str, options: dict[str, Any]) -> nn.Module:
    try:
        net = timm.create_model(model_name, pretrained=True, **options)
    except RuntimeError as err:
        if "No pretrained weights exist" in str(err):
            raise UserError(f"timm has no pretrained weights for {model_name!r}: pick a tagged name "
                            f"(e.g. {', '.join(timm.list_pretrained(model_name.partition('.')[0] + '.*')[:3])}) "
                            "or pass --model.pretrained false") from err
        raise
    except OSError as err:  # huggingface_hub's offline / not-cached / connection errors are OSErrors
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise UserError(
            f"could not get the pretrained weights of {model_name!r} from the Hugging Face hub"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''} and they are not in the local cache: "
            "download them once on a connected machine (same HF_HOME), or pass a weights file with "
            "--model.pretrained PATH"
        ) from err
    rank_zero_info(f"Loaded pretrained weights of {model_name} from the Hugging Face hub (timm).")
    return net
