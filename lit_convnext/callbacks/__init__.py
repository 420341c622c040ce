"""Everything the Trainer calls during a run, one module per callback (as Lightning's own ``callbacks``)."""

from lit_convnext.callbacks.checkpointing import AtomicCheckpointIO, ResumableModelCheckpoint
from lit_convnext.callbacks.data_wait import DataWaitMonitor
from lit_convnext.callbacks.ema import EMA
from lit_convnext.callbacks.linear_probe import LinearProbe
from lit_convnext.callbacks.load_report import PretrainedLoadReport
from lit_convnext.callbacks.loss_guard import FiniteLossGuard
from lit_convnext.callbacks.old_classes import OldClassAccuracy
from lit_convnext.callbacks.prediction_writer import PredictionWriter
from lit_convnext.callbacks.progress import CompactProgressBar
from lit_convnext.callbacks.time_budget import TimeBudget

__all__ = [
    "EMA",
    "AtomicCheckpointIO",
    "CompactProgressBar",
    "DataWaitMonitor",
    "FiniteLossGuard",
    "LinearProbe",
    "OldClassAccuracy",
    "PredictionWriter",
    "PretrainedLoadReport",
    "ResumableModelCheckpoint",
    "TimeBudget",
]
