"""Checkpoints that survive kills and resumes: atomic writes, ``--ckpt_path last``, best-k across resumes.

``fit --ckpt_path last`` in Lightning only looks in the current run's directory, but every CLI run
gets a new ``runs/<name>/version_N`` (``<default_root_dir>/version_N`` without a logger); the CLI therefore resolves ``last`` here to the newest run's
``last.ckpt`` and keeps logging into that run's directory, so ModelCheckpoint's best-k bookkeeping
(restored from the checkpoint) still points at files that exist.

Lightning keeps the last logged ``val/acc1`` only in ``trainer.callback_metrics``, which no checkpoint
holds. A run resumed from a mid-epoch ``last.ckpt`` starts with no ``val/acc1``: its next step-triggered
save (``--checkpoint.every_n_train_steps``) is deferred to validation, and with one validation per epoch
ModelCheckpoint saves at train-epoch end, where that deferred top-k save is never made. The resumed run
then keeps fewer best-k files than an uninterrupted one. Saving the scalar callback metrics with the
callback state and putting them back when training starts gives both runs the same candidates.

Lightning 2.6 writes ``last.ckpt`` at a validation (or training-epoch end) only when a best-k checkpoint was saved
at the same step: with the default ``save_top_k: 1``, every epoch that does not improve the monitored metric left
``last.ckpt`` at the best epoch, so ``--ckpt_path last`` trained those epochs again (and the
learning-rate schedule went back). Here ``last.ckpt`` is the latest state at every checkpoint opportunity, as
``save_last`` says and as Lightning did before 2.6.

When a best-k checkpoint was just written at the same step, ``last.ckpt`` would be the same content written a
second time (a model's weights and optimizer state, gigabytes for the large ConvNeXts): it becomes a hard link to
that file instead, as timm's checkpoint saver does, from the first save on (``last.ckpt``'s path, which every
checkpoint records, is known before it is first written). The later removal of that best-k file leaves ``last.ckpt``
whole, and the next ``last.ckpt`` replaces the link. Lightning's own ``save_last="link"`` (a symbolic link to
the newest saved checkpoint, an older best one after an epoch that did not improve) works the same way, with a
warning that says so.

Every ``last.ckpt`` is a point a run resumes from exactly, inside an epoch too (the loader's position and the
random state are in it: :mod:`lit_convnext.data.resumable`, :mod:`lit_convnext.callbacks.exact_resume`). So a
step- or time-triggered save (``every_n_train_steps``, ``train_time_interval``) before the first validation, which
Lightning defers whole to that validation, writes ``last.ckpt`` at its step; and SIGTERM writes one before the
process exits.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_convnext.errors import UserError
from lit_convnext.private_api.lightning import CheckpointHooks

LAST_NAME = "last.ckpt"
METRICS_KEY = "callback_metrics"

#: What a run's best checkpoints are ranked by and named after, per task: top-1 accuracy, or a multi-label
#: model's mean average precision.
BEST_BY = {
    "multiclass": {"monitor": "val/acc1", "filename": "best-epoch{epoch:03d}-acc{val/acc1:.4f}"},
    "multilabel": {"monitor": "val/map", "filename": "best-epoch{epoch:03d}-map{val/map:.4f}"},
}


def run_checkpoint_options(task: str = "multiclass") -> dict[str, Any]:
    """The app's ``ResumableModelCheckpoint`` arguments: the best checkpoint by the task's metric and ``last.ckpt``.

    The defaults of ``--checkpoint.*`` and of the checkpoint :meth:`ConvNeXtClassifier.configure_callbacks` adds
    to a plain Trainer, so both paths name and keep the same files.
    """
    return {**BEST_BY[task], "mode": "max", "save_last": True, "auto_insert_metric_name": False}


class ResumableModelCheckpoint(CheckpointHooks):
    """``ModelCheckpoint`` whose checkpointed state includes the latest logged scalar metrics.

    It takes ModelCheckpoint's arguments. Its state is stored under ModelCheckpoint's own key, so
    checkpoints written before (or by a plain ``ModelCheckpoint``) resume with their best-k bookkeeping.
    """

    _restored_metrics: dict[str, torch.Tensor] = {}  # replaced, never mutated: set by load_state_dict
    _validated = False  # a validation batch ran in this fit (not the sanity check's)
    _planned_last = ""  # last.ckpt's path until it is first written (see _last_path_before_the_first_save)

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is not None:
            state[METRICS_KEY] = {
                name: value.detach().cpu() for name, value in trainer.callback_metrics.items()
                if isinstance(value, torch.Tensor) and value.numel() == 1
            }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._restored_metrics = dict(state_dict.get(METRICS_KEY, {}))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        strategy = trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:  # a user's own CheckpointIO plugin is kept
            strategy.checkpoint_io = AtomicCheckpointIO()
        if self.save_last == "link":
            self.save_last = True
            rank_zero_warn("--checkpoint.save_last link: Lightning links last.ckpt to the newest checkpoint it saved, "
                           "which after an epoch that did not improve is an older best one; here last.ckpt is written "
                           "every epoch and hard-linked to a best checkpoint of the same step, so 'link' works as true")
        super().setup(trainer, pl_module, stage)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = self._epoch_save_due(trainer) and not self.should_save_on_train_epoch_end(trainer)
        super().on_validation_end(trainer, pl_module)
        self._save_last_when_missed(trainer, due)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = self._epoch_save_due(trainer) and self.should_save_on_train_epoch_end(trainer)
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_when_missed(trainer, due)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        deferred_before = self.save_deferred_to_validation
        self.save_deferred_to_validation = False  # to see whether this batch's step or time save is deferred
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        deferred_now = self.save_deferred_to_validation
        self.save_deferred_to_validation = deferred_before or deferred_now
        # Before the first validation there is no monitored metric, and Lightning defers the whole save, last.ckpt
        # included, to the validation: a run killed in its first epoch had nothing to resume from. last.ckpt is
        # written now (the best-k file still waits for the metric); not when a validation follows this batch,
        # which writes both at this step.
        if (deferred_now and self.save_last is True and not self.should_skip_saving_checkpoint(trainer)
                and not _validation_follows(trainer, batch_idx)):
            self.save_last_checkpoint(trainer, self.monitor_candidates(trainer))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """On SIGTERM (a cloud's pre-emption notice, SLURM before the time limit) write ``last.ckpt`` at the step
        the run stopped at. Lightning's signal connector turns the signal into ``SIGTERMException`` at the end of
        the batch being trained, so the checkpoint is a whole step; the process then exits with status 0."""
        if not isinstance(exception, SIGTERMException) or not self.save_last or trainer.sanity_checking:
            return
        self.save_last_checkpoint(trainer, self.monitor_candidates(trainer))
        rank_zero_info(f"SIGTERM received: {self.last_model_path} holds step {trainer.global_step}; "
                       "`--ckpt_path last` goes on from there")

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        # Training stopped before its first validation (max_steps, max_time, a short limit_train_batches): there is
        # nothing to rank yet, and Lightning's warning would ask whether the module logs the metric. The end of fit
        # says what happened instead (``on_fit_end``).
        if self.monitor is not None and self.monitor not in monitor_candidates and not self._validated:
            return
        super().save_topk_checkpoint(trainer, monitor_candidates)

    def _epoch_save_due(self, trainer: pl.Trainer) -> bool:
        """Whether this epoch has a checkpoint opportunity (``every_n_epochs``) that is not skipped."""
        every = self.every_n_epochs or 0
        return not self.should_skip_saving_checkpoint(trainer) and every >= 1 and (trainer.current_epoch + 1) % every == 0

    def _save_last_when_missed(self, trainer: pl.Trainer, due: bool) -> None:
        """Write ``last.ckpt`` at an epoch's checkpoint opportunity that Lightning left without one because no
        best-k checkpoint was saved at this step (see the module docstring); ``save_last="link"`` is Lightning's."""
        if due and self.save_last is True and self.last_global_step_saved != trainer.global_step:
            self.save_last_checkpoint(trainer, self.monitor_candidates(trainer))

    def save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        just_saved = self.last_checkpoint_saved if self.last_global_step_saved == trainer.global_step else ""
        path = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        # Only when last.ckpt keeps the path the best-k file written a moment ago recorded for it: the two files'
        # contents are then the same to the byte.
        if (self.save_last is not True or not just_saved or just_saved == path
                or path != (self.last_model_path or self._planned_last)
                or not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO) or "://" in path):
            super().save_last_checkpoint(trainer, monitor_candidates)
            return
        if trainer.is_global_zero:  # the process that writes the files (the others have none to link)
            link_or_copy(Path(just_saved), Path(path))
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
        self.last_model_path = self.last_checkpoint_saved = path
        trainer.strategy.barrier("ResumableModelCheckpoint.save_last_checkpoint")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # Lightning clears callback_metrics after restoring callbacks, so they go back in here.
        for name, value in self._restored_metrics.items():
            trainer.callback_metrics.setdefault(name, value)
        self._restored_metrics = {}
        self._validated = False
        self._planned_last = self._last_path_before_the_first_save(trainer)

    def _last_path_before_the_first_save(self, trainer: pl.Trainer) -> str:
        """``last.ckpt``'s path for the checkpoints saved before it is first written (a resumed run has it).

        Every checkpoint records that path: without it, the best-k file of the first save would record none,
        the ``last.ckpt`` of the same step would differ from it, and it would be written a second time instead
        of linked. Only a fixed name that is not taken yet (an existing file gets Lightning's ``-v1`` name
        instead; a name with ``{fields}`` changes with the metrics).
        """
        if self.save_last is not True or self.last_model_path or self.dirpath is None or "{" in self.CHECKPOINT_NAME_LAST:
            return ""
        path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
        return "" if self.file_exists(path, trainer) else path

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if not state.get("last_model_path") and self._planned_last:
            state["last_model_path"] = self._planned_last  # what the last.ckpt of this step will record
        return state

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Say which checkpoints the run left (Lightning orders checkpoint callbacks last, so after the analysis)."""
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)  # log_dir broadcasts: every rank asks
        if not trainer.is_global_zero:
            return
        if self.best_model_path:
            score = self.best_model_score
            shown = f"{score.item():.4f}" if score is not None else "n/a"
            rank_zero_info(f"Best checkpoint ({self.monitor} = {shown}): {self.best_model_path}")
        elif self.monitor and self.save_top_k != 0:
            config = run_dir / "config.yaml"  # written by the command line: this run's data and options
            command = f"lit-convnext validate --config {config} " if config.is_file() else "lit-convnext validate "
            measure = (f"; `{command}--ckpt_path {self.last_model_path}` measures the last weights"
                       if self.last_model_path else "")
            rank_zero_info(f"No best checkpoint: no validation ran before training stopped at step "
                           f"{trainer.global_step}, so there was no {self.monitor} to rank by{measure}")
        if self.last_model_path:
            rank_zero_info(f"Last checkpoint: {self.last_model_path}")


def _validation_follows(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether a validation runs right after training batch ``batch_idx`` (the epoch's last, or at
    ``val_check_interval``), so that a save deferred to it is made at this step."""
    if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
        return True
    every = trainer.val_check_batch
    return isinstance(every, int) and every > 0 and (batch_idx + 1) % every == 0


def link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` a hard link to ``source`` (a copy where the filesystem has no hard links), replacing it
    atomically like :class:`AtomicCheckpointIO`'s writes."""
    temp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    temp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, temp)
        except OSError:
            shutil.copyfile(source, temp)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def newest_last_checkpoint(save_dir: Path, name: str) -> Path:
    """The most recently written ``<save_dir>/<name>/version_*/checkpoints/last.ckpt``."""
    candidates = [p for p in (Path(save_dir) / name).glob(f"*/checkpoints/{LAST_NAME}") if p.is_file()]
    if not candidates:
        raise UserError(
            f"--ckpt_path last: no run under {Path(save_dir) / name} has checkpoints/{LAST_NAME}; "
            "pass the path of a .ckpt file instead"
        )
    return max(candidates, key=lambda p: p.stat().st_mtime)


def next_run_dir(root: Path) -> Path:
    """``<root>/version_N`` for a new run, N one above the highest existing (0 at first), as Lightning's loggers
    number theirs: a run without a logger gets its own directory too, so nothing of an earlier run is overwritten."""
    versions = [int(p.name.removeprefix("version_")) for p in Path(root).glob("version_*")
                if p.is_dir() and p.name.removeprefix("version_").isdigit()]
    return Path(root) / f"version_{max(versions) + 1 if versions else 0}"


def run_version(checkpoint: Path) -> str:
    """The version directory name (``version_3``) that holds ``.../version_3/checkpoints/x.ckpt``."""
    return checkpoint.parent.parent.name


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each local checkpoint to a temporary file beside it and rename it into place.

    A process killed mid-save (SIGKILL, node preemption) then leaves the previous ``last.ckpt`` intact
    instead of a truncated file. Lightning's writer (``_atomic_save``) goes through an fsspec transaction whose
    temporary file is in the system's temporary folder: where that is another filesystem (a tmpfs ``/tmp``, a
    mounted data disk) the commit is a copy into the target, neither atomic nor safe for a ``last.ckpt``
    hard-linked to the target (the copy would rewrite both), and the whole checkpoint passes through memory and
    ``/tmp`` first. Here ``torch.save`` writes straight into a file in the target's folder, whose rename is atomic.
    :class:`ResumableModelCheckpoint` installs it in ``setup`` in place of Lightning's plain ``TorchCheckpointIO``.
    Remote paths (``s3://`` ...) go through Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:  # what Lightning's writer says to the same call
            raise TypeError(f"`Trainer.save_checkpoint(..., storage_options=...)` is not supported by "
                            f"{type(self).__name__}: it writes local files")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        try:
            torch.save(checkpoint, temp)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
