"""Find the model's state dict inside a checkpoint and strip the wrappers that training adds.

Checkpoints nest the weights differently: official ConvNeXt training writes ``{"model", "model_ema"}``,
timm's train script ``{"state_dict", "state_dict_ema"}``, Lightning ``{"state_dict"}`` plus, with
``WeightAveraging`` (EMA), ``current_model_state`` for the raw weights. Keys may carry ``module.`` (DDP),
``_orig_mod.`` (torch.compile), ``model.`` or ``net.`` (the attribute holding the network).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from timm.models import clean_state_dict

from lit_convnext.errors import UserError

#: Attribute prefixes removed when they cover most keys (``net.`` is this app's LightningModule attribute);
#: the DDP and torch.compile wrappers (``module.``, ``_orig_mod.``) are timm's ``clean_state_dict``'s job.
WRAPPER_PREFIXES: tuple[str, ...] = ("net.", "model.")
_TIMM_CLEANED: tuple[str, ...] = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class Extracted:
    """The tensors picked out of a checkpoint and how they were found."""

    state_dict: dict[str, torch.Tensor]
    container: str
    ema_used: bool
    ema_available: bool
    stripped_prefixes: tuple[str, ...]
    ignored: tuple[str, ...]


def extract_state_dict(checkpoint: Mapping[str, Any], *, use_ema: bool = True, source: str = "") -> Extracted:
    """Pick the weights to load out of ``checkpoint`` (EMA where present and wanted) and unwrap keys."""
    obj: Any = checkpoint
    path: list[str] = []
    ema_used = False
    ema_available = False
    for _ in range(4):
        if not isinstance(obj, Mapping) or _is_tensor_dict(obj):
            break
        key, is_ema, has_ema = _choose_entry(obj, use_ema)
        if key is None:
            break
        ema_available = ema_available or has_ema
        ema_used = ema_used or is_ema
        obj = obj[key]
        path.append(key)
    if not isinstance(obj, Mapping) or not _is_tensor_dict(obj):
        top = list(checkpoint)[:8] if isinstance(checkpoint, Mapping) else []
        raise UserError(
            f"no weights found in {source or 'the checkpoint'}: top-level keys are {top}; "
            "expected a state dict or a dict with 'state_dict' or 'model'"
        )
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    ignored = [k for k in obj if k not in tensors]
    tensors, stripped, dropped = strip_wrappers(tensors)
    return Extracted(
        state_dict=tensors,
        container=" -> ".join(path) if path else "top level",
        ema_used=ema_used,
        ema_available=ema_available,
        stripped_prefixes=tuple(stripped),
        ignored=tuple(ignored + dropped),
    )


def strip_wrappers(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Remove wrapper prefixes shared by most keys; return (state dict, prefixes removed, keys dropped).

    A prefix that covers more than half of the keys is the network's attribute name; keys outside it
    (e.g. a loss module's class weights in a Lightning checkpoint) do not belong to the network.
    """
    stripped = sorted({p for k in state_dict for p in _TIMM_CLEANED if k.startswith(p) or f".{p}" in k})
    sd = clean_state_dict(dict(state_dict))
    dropped: list[str] = []
    changed = True
    while changed and sd:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            inside = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            if 2 * len(inside) > len(sd):
                dropped += [k for k in sd if not k.startswith(prefix)]
                sd = inside
                stripped.append(prefix)
                changed = True
    return clean_state_dict(sd), stripped, dropped  # again: a compiled network inside the attribute


def _choose_entry(obj: Mapping[str, Any], use_ema: bool) -> tuple[str | None, bool, bool]:
    """Return (key to descend into, whether it is EMA weights, whether EMA weights exist)."""

    def has(key: str) -> bool:
        return isinstance(obj.get(key), Mapping)

    if has("state_dict") and has("current_model_state"):  # Lightning WeightAveraging: state_dict is EMA
        return ("state_dict", True, True) if use_ema else ("current_model_state", False, True)
    for ema_key, raw_key in (("model_ema", "model"), ("state_dict_ema", "state_dict")):
        if has(ema_key):
            if use_ema or not has(raw_key):
                return ema_key, True, True
            return raw_key, False, True
    for key in ("state_dict", "model", "module"):
        if has(key):
            return key, False, False
    return None, False, False


def _is_tensor_dict(obj: Mapping[str, Any]) -> bool:
    """True when most values are tensors, i.e. ``obj`` is a state dict rather than a container."""
    n_tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
    return n_tensors > 0 and 2 * n_tensors >= len(obj)
