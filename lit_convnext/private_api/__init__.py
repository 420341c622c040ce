"""Every private member and undocumented internal of another library that lit-convnext uses, and only here.

Each name here exists because no public API does what the app needs; its docstring says what it reaches and why.
Code elsewhere in the package uses these names, never the libraries' private members themselves.
``tests/test_private_api.py`` checks every entry of :data:`PRIVATE_MEMBERS` (that it exists, with the same
parameters) and the behaviours relied on, so an upgrade that changes one fails there, loudly, rather than inside a
run; ``pyproject.toml`` bounds each of these libraries above the versions tested.

Lightning's members are in :mod:`lit_convnext.private_api.lightning` (its subclasses need Lightning imported);
this module imports no third-party library until one of its functions is called, so the light commands
(``doctor``, the top-level help) can use it without loading torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class PrivateMember:
    """``owner.name``, private or undocumented, with these parameters (``None``: an attribute, which the canary
    test looks for on an instance or the module), and the name in this package that uses it."""

    owner: str  # importable path of the module or class
    name: str
    parameters: tuple[str, ...] | None
    used_by: str


#: The logger of ``rank_zero_info`` (Lightning's own lines and the app's): the app filters a few of Lightning's lines
#: out of it. A logger name, which Lightning does not document.
LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"


# ------------------------------------------------------------------------------------------------ torch
def uncompiled(module: nn.Module) -> nn.Module:
    """The module inside a ``torch.compile`` wrapper (``OptimizedModule._orig_mod``), or the module itself when it is
    not wrapped: its state dict keys carry no ``_orig_mod.`` prefix, and ONNX export traces the plain module."""
    return getattr(module, "_orig_mod", module)


# ----------------------------------------------------------------------------------------------- Pillow
def pillow_accepts(format_name: str, prefix: bytes) -> bool:
    """Whether Pillow's plugin for ``format_name`` recognises ``prefix`` (a file's first bytes) as its format.

    Pillow's plugin registry (``Image.OPEN``: format -> (factory, accept test)) is the one place that knows each
    format's signature; the app uses it to name the format of a file that Pillow then fails to decode.
    """
    from PIL import Image

    Image.init()  # every plugin registered (Image.open did this already when it failed to identify a file)
    accept = Image.OPEN.get(format_name, (None, None))[1]
    if accept is None or len(prefix) < 2:
        return False
    try:
        return bool(accept(prefix))
    except Exception:  # an accept test that cannot handle a short prefix: not this format
        return False


# ------------------------------------------------------------------------------------------------- timm
def timm_official_filter(key: str, value: torch.Tensor,
                         shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """timm's ``convnext.checkpoint_filter_fn`` (official ConvNeXt keys to timm's) applied to one tensor.

    The filter reshapes a tensor by reading ``model.state_dict()[key].shape`` of the model it is given, which fails
    on a key the model lacks (e.g. a deeper model's): a stand-in answers that one question, with the model's shape
    when the sizes agree and the tensor's own otherwise, and the app's architecture check reports a mismatch in its
    own words.
    """
    from timm.models.convnext import checkpoint_filter_fn

    return checkpoint_filter_fn({key: value}, _ShapeOracle(shapes, value))  # type: ignore[no-untyped-call]


class _ShapeOracle:
    """Stands in for the model in timm's filter: answers ``state_dict()[key].shape``."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], value: torch.Tensor) -> None:
        self._shapes = shapes
        self._value = value

    def state_dict(self) -> _ShapeOracle:
        return self

    def __getitem__(self, key: str) -> Any:
        shape = self._shapes.get(key)
        if shape is None or math.prod(shape) != self._value.numel():
            shape = tuple(self._value.shape)
        return SimpleNamespace(shape=shape)


_CLI = "lightning.pytorch.cli.LightningCLI"
_CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"

#: Every private or undocumented member the package uses, for the canary test (tests/test_private_api.py).
PRIVATE_MEMBERS: tuple[PrivateMember, ...] = (
    PrivateMember(_CLI, "_parse_ckpt_path", ("self",), "lightning.CLIHooks.parse_ckpt_path"),
    PrivateMember(_CLI, "_run_subcommand", ("self", "subcommand"), "lightning.CLIHooks.run_subcommand"),
    PrivateMember(_CLI, "_parser", ("self", "subcommand"), "lightning.subcommand_parser"),
    PrivateMember("lightning.pytorch.cli.LightningArgumentParser", "callback_keys", None,
                  "lightning.callback_keys, lightning.set_callback_keys"),
    PrivateMember(_CHECKPOINT, "_save_topk_checkpoint", ("self", "trainer", "monitor_candidates"),
                  "lightning.CheckpointHooks.save_topk_checkpoint"),
    PrivateMember(_CHECKPOINT, "_save_last_checkpoint", ("self", "trainer", "monitor_candidates"),
                  "lightning.CheckpointHooks.save_last_checkpoint"),
    PrivateMember(_CHECKPOINT, "_should_save_on_train_epoch_end", ("self", "trainer"),
                  "lightning.CheckpointHooks.should_save_on_train_epoch_end"),
    PrivateMember(_CHECKPOINT, "_should_skip_saving_checkpoint", ("self", "trainer"),
                  "lightning.CheckpointHooks.should_skip_saving_checkpoint"),
    PrivateMember(_CHECKPOINT, "_monitor_candidates", ("self", "trainer"), "lightning.CheckpointHooks.monitor_candidates"),
    PrivateMember(_CHECKPOINT, "_last_global_step_saved", None, "lightning.CheckpointHooks.last_global_step_saved"),
    PrivateMember(_CHECKPOINT, "_last_checkpoint_saved", None, "lightning.CheckpointHooks.last_checkpoint_saved"),
    PrivateMember("lightning.pytorch.loops.fit_loop._FitLoop", "_combined_loader_states_to_load", None,
                  "lightning.pending_train_loader_states"),
    PrivateMember("lightning.pytorch.loops.fit_loop._FitLoop", "_combined_loader", None,
                  "lightning.restore_train_loader_position"),
    PrivateMember("lightning.pytorch.loops.fit_loop._FitLoop", "_data_fetcher", None,
                  "lightning.restore_train_loader_position"),
    PrivateMember("lightning.pytorch.loops.fit_loop._FitLoop", "_load_combined_loader_states", ("self",),
                  "lightning.restore_train_loader_position"),
    PrivateMember("lightning.fabric.utilities.data", "_set_sampler_epoch", ("dataloader", "epoch"),
                  "lightning.restore_train_loader_position"),
    PrivateMember(_CHECKPOINT, "_defer_save_until_validation", None,
                  "lightning.CheckpointHooks.save_deferred_to_validation"),
    PrivateMember("lightning.pytorch.callbacks.WeightAveraging", "_average_model", None, "lightning.averaged_model"),
    PrivateMember("lightning.pytorch.loggers.MLFlowLogger", "_log_model", None, "lightning.mlflow_log_model"),
    PrivateMember("lightning.pytorch.overrides.distributed", "UnrepeatedDistributedSampler", None,
                  "lightning.UnrepeatedDistributedSampler (a class in an undocumented module)"),
    PrivateMember("lightning.pytorch.utilities.rank_zero.rank_zero_module", "log", None,
                  "LIGHTNING_INFO_LOGGER (the name of the logger Lightning sets there)"),
    PrivateMember("torch._dynamo.eval_frame.OptimizedModule", "_orig_mod", None, "uncompiled"),
    PrivateMember("PIL.Image", "OPEN", None, "pillow_accepts (Pillow's plugin registry)"),
    PrivateMember("timm.models.convnext", "checkpoint_filter_fn", ("state_dict", "model"),
                  "timm_official_filter (reads only model.state_dict()[key].shape)"),
)
