"""The callbacks a run of the app needs, for :meth:`ConvNeXtClassifier.configure_callbacks` (Lightning's hook).

Lightning calls that hook at the start of every ``fit``, ``validate``, ``test`` and ``predict`` and adds what it
returns to the Trainer's callbacks, replacing those of the same type or of a parent type. So that
``Trainer(...).fit(model, datamodule=dm)`` runs what ``lit-convnext fit`` runs, and so that the command line's
configured instances (``--checkpoint.*``, ``--class_report.*``, ...) or a user's own are kept, only the callbacks
whose type the Trainer does not hold yet are returned.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from lit_convnext.callbacks.batch_size import AutoBatchSize
from lit_convnext.callbacks.checkpointing import ResumableModelCheckpoint, run_checkpoint_options
from lit_convnext.callbacks.data_wait import DataWaitMonitor
from lit_convnext.callbacks.load_report import PretrainedLoadReport
from lit_convnext.callbacks.loss_guard import FiniteLossGuard
from lit_convnext.callbacks.mlflow_artifacts import MlflowArtifacts
from lit_convnext.callbacks.old_classes import OldClassAccuracy
from lit_convnext.callbacks.pseudo_labels import PseudoLabelReport
from lit_convnext.callbacks.exact_resume import ExactResume
from lit_convnext.callbacks.time_budget import TimeBudget
from lit_convnext.evaluation.class_report import PerClassReport
from lit_convnext.evaluation.end_of_fit import EvaluationReport

#: The app's ``LearningRateMonitor`` arguments (also the defaults of ``--lr_monitor.*``): the warm-up and the
#: per-step schedule show in the learning-rate curve.
LR_MONITOR_OPTIONS = {"logging_interval": "step"}


def missing_run_callbacks(trainer: pl.Trainer, task: str = "multiclass") -> list[Callback]:
    """The app's callbacks for the Trainer's current stage that it does not hold yet.

    ``fit``: :class:`FiniteLossGuard`, :class:`PretrainedLoadReport`, :class:`TimeBudget` (inert without
    ``max_time``), :class:`AutoBatchSize` (inert unless the datamodule's ``batch_size`` is ``auto``),
    :class:`ExactResume` (the loader position and RNG states a resumed run goes on with),
    :class:`EvaluationReport`,
    :class:`PerClassReport`, :class:`DataWaitMonitor`, :class:`OldClassAccuracy` (measures only when
    ``--model.pretrained`` weights gained classes by name), a :class:`LearningRateMonitor` when the Trainer has a
    logger, :class:`MlflowArtifacts` when it logs to MLflow, a :class:`PseudoLabelReport` when the data has
    unlabelled images and the model no teacher, and a :class:`ResumableModelCheckpoint` with
    :func:`run_checkpoint_options` in place of Lightning's default ``ModelCheckpoint`` (any other checkpoint callback
    is the user's and stays; none without ``enable_checkpointing``). ``validate`` and ``test``: the two reports
    (per-image and per-class files). ``predict``: none (a file is written only by a ``PredictionWriter`` given to the
    Trainer). ``barebones``, which times the loop alone, gets none of the reports and monitors; the loss guard,
    the time budget, the batch-size search, the exact resume and the load report stay.
    A run without one of them gives the Trainer an instance turned off, e.g. ``EvaluationReport(enabled=False)``.
    """
    fn = trainer.state.fn
    wanted: list[Callback] = []
    if fn == TrainerFn.FITTING:
        wanted += [FiniteLossGuard(), PretrainedLoadReport(), TimeBudget(), AutoBatchSize(), ExactResume()]
    if fn in (TrainerFn.FITTING, TrainerFn.VALIDATING, TrainerFn.TESTING) and not trainer.barebones:
        wanted += [EvaluationReport(), PerClassReport()]
    if fn == TrainerFn.FITTING and not trainer.barebones:
        wanted += [DataWaitMonitor(), OldClassAccuracy()]
        if trainer.loggers:
            wanted.append(LearningRateMonitor(**LR_MONITOR_OPTIONS))
        if (getattr(trainer.datamodule, "unlabeled_root", None) is not None
                and not trainer.lightning_module.hparams.get("teacher")):  # with a teacher, distillation uses them
            wanted.append(PseudoLabelReport())
        if any(type(logger).__name__ == "MLFlowLogger" for logger in trainer.loggers):
            wanted.append(MlflowArtifacts())
    # Their parents are Lightning's Callback (or LearningRateMonitor itself), so Lightning replaces nothing else.
    added = [callback for callback in wanted if not any(isinstance(c, type(callback)) for c in trainer.callbacks)]
    if fn == TrainerFn.FITTING and any(_lightning_default(c) for c in trainer.callbacks):
        added.append(ResumableModelCheckpoint(**run_checkpoint_options(task)))
    return added


def _lightning_default(callback: Callback) -> bool:
    """The ``ModelCheckpoint()`` Lightning adds when checkpointing is on and no checkpoint callback was given."""
    return (type(callback) is ModelCheckpoint and callback.monitor is None and callback.dirpath is None
            and callback.filename is None and not callback.save_last)
