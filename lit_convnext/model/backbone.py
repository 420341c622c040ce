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


def pretrained_off(pretrained: bool | str | None) -> bool:
    """Whether ``pretrained`` means random initialisation: ``False``, ``None``, or an empty or ``"false"`` string
    (any case), as a YAML file, a command line or a Python caller may spell it. The one definition of "off"."""
    if pretrained is None or pretrained is False:
        return True
    return isinstance(pretrained, str) and pretrained.strip().lower() in ("", "false")


def build_convnext(
    model_name: str,
    num_classes: int,
    pretrained: bool | str,
    drop_path_rate: float,
    layer_scale_init_value: float | None,
    head_init_scale: float,
    pretrained_use_ema: bool = True,
    allow_missing_keys: bool = False,
    class_names: list[str] | None = None,
    new_head: bool = False,
) -> tuple[nn.Module, dict[str, Any] | None]:
    """Create the network and load its starting weights.

    Returns the model and, when pretrained weights were loaded (hub or file), a JSON-safe load report.
    A new class count gets a freshly initialised head (scaled by ``head_init_scale``); a file that names its
    classes keeps its rows for those of ``class_names`` by name and adds fresh rows for the others, unless
    ``new_head``.
    """
    check_model_name(model_name)
    options: dict[str, Any] = dict(
        num_classes=num_classes, drop_path_rate=drop_path_rate, head_init_scale=head_init_scale
    )
    if layer_scale_init_value is not None:
        options["ls_init_value"] = layer_scale_init_value
    if pretrained_off(pretrained):
        return timm.create_model(model_name, pretrained=False, **options), None
    # The hub's file goes through the same loader as a local file, so missing or unexpected tensors are
    # reported and refused the same way (timm's own pretrained load is non-strict once the head is dropped).
    source = hub_weights_file(model_name) if pretrained is True else Path(pretrained)
    net = timm.create_model(model_name, pretrained=False, **options)
    from lit_convnext.weights import load_pretrained  # the file formats live there

    report = load_pretrained(net, source, use_ema=pretrained_use_ema, allow_missing=allow_missing_keys,
                             class_names=class_names, new_head=new_head)
    if pretrained is True:
        report.source = f"{model_name} from the Hugging Face hub ({source})"
    rank_zero_info(report.summary())
    return net, report.to_dict()


#: Files a timm hub repository may hold, safest first (as timm itself tries them).
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def hub_weights_file(model_name: str) -> Path:
    """The local path of ``model_name``'s pretrained weights in the Hugging Face cache, downloaded if needed.

    timm's pretrained config names the repository; huggingface_hub resolves the cache and the download. A cached
    file is used without asking the hub again (timm's weights do not change under a tag), so runs start without a
    network round trip and work offline once the weights are there.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None or not cfg.hf_hub_id:
        arch = model_name.partition(".")[0]
        raise UserError(f"timm has no pretrained weights for {model_name!r}: pick a tagged name "
                        f"(e.g. {', '.join(timm.list_pretrained(arch + '.*')[:3]) or 'none exist'}) "
                        "or pass --model.pretrained false")
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_FILES
    for name in names:
        cached = try_to_load_from_cache(repo_id, name, revision=revision or None)
        if isinstance(cached, str):
            return Path(cached)
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    if not offline:
        # huggingface_hub retries a hub it cannot reach for up to about a minute, with a line per try: say first
        # what is being fetched and how to skip the wait on a machine without a connection.
        rank_zero_info(f"Downloading the pretrained weights of {model_name!r} from the Hugging Face hub ({repo_id}); "
                       "on a machine without a connection, set HF_HUB_OFFLINE=1 to fail at once")
    try:
        for name in names[:-1]:
            try:
                return Path(hf_hub_download(repo_id, name, revision=revision or None))
            except EntryNotFoundError:
                continue
        return Path(hf_hub_download(repo_id, names[-1], revision=revision or None))
    except OSError as err:  # huggingface_hub's offline / not-cached / connection errors are OSErrors
        raise UserError(
            f"could not get the pretrained weights of {model_name!r} from the Hugging Face hub"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''} and they are not in the local cache: "
            "download them once on a connected machine (same HF_HOME), or pass a weights file with "
            "--model.pretrained PATH"
        ) from err
