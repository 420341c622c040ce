"""Lightning's private members that lit-convnext uses: the CLI's and ModelCheckpoint's private steps under public
names, and accessors for state Lightning keeps private (see :mod:`lit_convnext.private_api`)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.optim.swa_utils import AveragedModel

__all__ = [
    "CLIHooks",
    "CheckpointHooks",
    "UnrepeatedDistributedSampler",
    "averaged_model",
    "callback_keys",
    "mlflow_log_model",
    "pending_train_loader_states",
    "restore_train_loader_position",
    "set_callback_keys",
    "subcommand_parser",
]

# UnrepeatedDistributedSampler (used by lit_convnext.data.samplers): each evaluation image on exactly one rank, so
# metrics under DDP count every image once. Lightning uses it for its own prediction loop; its module is not
# documented.


# ------------------------------------------------------------------------------------------- Lightning: CLI
class CLIHooks(LightningCLI):
    """``LightningCLI`` with public names for the two private steps the app changes.

    ``parse_ckpt_path``: an exported ``.onnx`` model is no torch checkpoint whose hyper-parameters could be parsed
    (LightningCLI reads every ``--ckpt_path`` with ``torch.load``). ``run_subcommand``: a CUDA out-of-memory error
    during the run becomes the app's advice. Subclasses override the public names and call ``super()``.
    """

    def _parse_ckpt_path(self) -> None:
        self.parse_ckpt_path()

    def parse_ckpt_path(self) -> None:
        """Lightning's own step: the checkpoint's saved hyper-parameters become the defaults of the options."""
        super()._parse_ckpt_path()

    def _run_subcommand(self, subcommand: str) -> None:
        self.run_subcommand(subcommand)

    def run_subcommand(self, subcommand: str) -> None:
        """Lightning's own step: call the Trainer's method for ``subcommand``."""
        super()._run_subcommand(subcommand)


def subcommand_parser(cli: LightningCLI, subcommand: str | None) -> LightningArgumentParser:
    """The parser of ``subcommand`` (LightningCLI keeps one per subcommand, reachable only through ``_parser``): the
    app reads its defaults and its list of default callbacks."""
    return cli._parser(subcommand)


def callback_keys(parser: LightningArgumentParser) -> list[str]:
    """The option groups added with ``add_lightning_class_args`` that LightningCLI instantiates as callbacks."""
    return list(parser.callback_keys)


def set_callback_keys(parser: LightningArgumentParser, keys: list[str]) -> None:
    """Keep only ``keys`` of the default callbacks: a default follows its feature off (``--trainer.logger false``
    drops the lr monitor, ``enable_checkpointing false`` the checkpoint callback), which Lightning would refuse."""
    parser.callback_keys = list(keys)


# --------------------------------------------------------------------------------- Lightning: ModelCheckpoint
class CheckpointHooks(ModelCheckpoint):
    """``ModelCheckpoint`` with public names for the private steps and state the app's checkpoint callback uses.

    ``last.ckpt`` is written at every epoch's checkpoint opportunity (Lightning 2.6 writes it only when a best-k
    file was saved at the same step) and hard-linked to a best-k file of the same step: both need the moment of
    each save and what was saved last, which ModelCheckpoint keeps private.
    """

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        self.save_topk_checkpoint(trainer, monitor_candidates)

    def save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        """Lightning's step: save a best-k checkpoint if the monitored value ranks."""
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        self.save_last_checkpoint(trainer, monitor_candidates)

    def save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        """Lightning's step: write ``last.ckpt``."""
        super()._save_last_checkpoint(trainer, monitor_candidates)

    def should_save_on_train_epoch_end(self, trainer: pl.Trainer) -> bool:
        """Whether the epoch's checkpoint opportunity is at the training epoch's end (else at validation's)."""
        return self._should_save_on_train_epoch_end(trainer)

    def should_skip_saving_checkpoint(self, trainer: pl.Trainer) -> bool:
        """Lightning's reasons to save nothing now (fast_dev_run, sanity check, not fitting, saved at this step)."""
        return self._should_skip_saving_checkpoint(trainer)

    def monitor_candidates(self, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
        """The metrics a checkpoint's name and rank are formatted from."""
        return self._monitor_candidates(trainer)

    @property
    def last_global_step_saved(self) -> int:
        """The global step of the latest checkpoint saved (any kind)."""
        return self._last_global_step_saved

    @property
    def last_checkpoint_saved(self) -> str:
        """The path of the latest checkpoint saved (any kind)."""
        return self._last_checkpoint_saved

    @last_checkpoint_saved.setter
    def last_checkpoint_saved(self, path: str) -> None:
        self._last_checkpoint_saved = path

    @property
    def save_deferred_to_validation(self) -> bool:
        """A step- or time-triggered save waits for the next validation (the monitored metric is missing or due)."""
        return self._defer_save_until_validation

    @save_deferred_to_validation.setter
    def save_deferred_to_validation(self, deferred: bool) -> None:
        self._defer_save_until_validation = deferred


# ------------------------------------------------------------------------------------------- Lightning: FitLoop
def pending_train_loader_states(trainer: pl.Trainer) -> list[dict]:
    """The training loaders' states a resumed checkpoint holds and Lightning has not loaded yet (the list itself:
    clearing it leaves them unloaded)."""
    return trainer.fit_loop._combined_loader_states_to_load


def restore_train_loader_position(trainer: pl.Trainer) -> None:
    """Give the training loaders of a resumed fit the position and epoch of its checkpoint, when Lightning has not.

    Lightning loads the loaders' ``state_dict`` when it first sets them up. ``trainer.estimated_stepping_batches``
    (the lr schedule's length, in ``configure_optimizers``) sets them up earlier, before the checkpoint is
    restored, and Lightning then keeps the saved position unused (Lightning issue #20550): the resumed epoch would
    start again from its first batch, drawn as epoch 0. Here the position is loaded, the samplers are given the
    restored epoch, and the loader's iterator (which had already fetched a batch) is made again, as Lightning's
    own path does. Call it in ``on_train_start``; a fit that does not resume is left alone.
    """
    fit_loop = trainer.fit_loop
    if not fit_loop.restarting or fit_loop._combined_loader is None or fit_loop._data_fetcher is None:
        return
    fit_loop._load_combined_loader_states()
    for loader in fit_loop._combined_loader.flattened:
        _set_sampler_epoch(loader, fit_loop.epoch_progress.current.processed)
    iter(fit_loop._data_fetcher)


# --------------------------------------------------------------------------------- Lightning: WeightAveraging
def averaged_model(callback: WeightAveraging) -> AveragedModel:
    """The ``AveragedModel`` a ``WeightAveraging`` callback keeps (built in its ``setup``): the EMA without warm-up
    marks the starting weights as already averaged, so that its first update applies the decay to them."""
    model = callback._average_model
    if model is None:
        raise RuntimeError("the averaged model exists once the callback's setup has run")
    return model


# ------------------------------------------------------------------------------------------ Lightning: MLFlowLogger
def mlflow_log_model(logger: object) -> bool | str:
    """An ``MLFlowLogger``'s ``log_model`` argument (kept private): the app uploads a run's exports with it."""
    return logger._log_model  # type: ignore[attr-defined]
