"""Step timing shared by the benchmarks: per-step host timestamps (CPU), or one timed window with a CUDA sync at each end."""

from __future__ import annotations

import statistics
import time

import lightning.pytorch as pl

#: Step start times of the latest run of :class:`StepTimer` (read by the benchmark after ``fit``).
LAST_RUN: list[float] = []

#: Set by a benchmark before a run: steps (or predict batches) :class:`WindowTimer` leaves out first.
WARMUP = 0

#: ``(batches, seconds)`` of the latest run of :class:`WindowTimer`.
WINDOW: list[float] = []


class StepTimer(pl.Callback):
    """Records ``time.perf_counter()`` at every training batch start into :data:`LAST_RUN`."""

    def __init__(self) -> None:
        LAST_RUN.clear()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        LAST_RUN.append(time.perf_counter())


class WindowTimer(pl.Callback):
    """Wall-clock of all steps (or predict batches) after the first :data:`WARMUP`, with one CUDA sync at each end.

    For asynchronous devices: per-step host timestamps say little when the host runs ahead, and a sync
    every step would itself slow the run; two syncs per run measure what a plain loop timed the same way does.
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self._batches = 0
        WINDOW.clear()

    def _begin(self, trainer: pl.Trainer, batch_idx: int) -> None:
        if self._start is None and batch_idx >= WARMUP:
            sync(trainer.strategy.root_device)
            self._start = time.perf_counter()
        if self._start is not None:
            self._batches += 1

    def _finish(self, trainer: pl.Trainer) -> None:
        if self._start is not None and not WINDOW:
            sync(trainer.strategy.root_device)
            WINDOW.extend([self._batches, time.perf_counter() - self._start])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._begin(trainer, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= trainer.max_steps:
            self._finish(trainer)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._begin(trainer, batch_idx)

    def on_predict_end(self, trainer, pl_module) -> None:
        self._finish(trainer)


def window_rate(batch_size: int) -> float:
    """Images/s of the latest :class:`WindowTimer` run."""
    batches, seconds = WINDOW
    return batch_size * batches / seconds


def sync(device) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def steady_rate(starts: list[float], batch_size: int, warmup: int) -> float:
    """Images/s from step start times, ignoring the first ``warmup`` steps (compile, worker start-up).

    Uses the median step interval, which shrugs off bursts of load from other processes on a
    shared machine better than the mean does.
    """
    measured = starts[warmup:]
    if len(measured) < 2:
        raise ValueError(f"need more than {warmup + 1} steps, got {len(starts)}")
    intervals = [b - a for a, b in zip(measured, measured[1:])]
    return batch_size / statistics.median(intervals)


def median(values: list[float]) -> float:
    return statistics.median(values)


def quartiles(values: list[float]) -> tuple[float, float]:
    """First and third quartile (the interquartile range shows how far single runs scatter)."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


class PhaseTimer(pl.Callback):
    """Where a whole ``fit`` process spends its time, written as JSON to ``$WHOLE_RUN_PHASES`` at exit.

    Times are seconds since ``$WHOLE_RUN_T0`` (the launcher's ``time.time()`` just before it started the
    process), so start-up (interpreter, imports, parsing) counts. The file check, checkpoint writes and the
    end-of-fit analysis are timed by wrapping the app's functions for them in this process (instrumentation
    only; nothing the app does changes).
    """

    def __init__(self) -> None:
        import atexit
        import json
        import os

        from lit_convnext.evaluation.end_of_fit import EvaluationReport
        from lit_convnext.data import datamodule

        self.t0 = float(os.environ.get("WHOLE_RUN_T0", time.time()))
        self.record: dict = {"instantiated": self._now(), "check": 0.0, "checkpoint_writes": 0.0,
                             "epochs": [], "analysis": 0.0}
        self._epoch: dict = {}
        datamodule.check_samples = self._timed(datamodule.check_samples, "check")
        EvaluationReport.analyse_fit = self._timed(EvaluationReport.analyse_fit, "analysis")
        path = os.environ.get("WHOLE_RUN_PHASES")
        if path:
            atexit.register(lambda: open(path, "w").write(json.dumps({**self.record, "exit": self._now()})))

    def _now(self) -> float:
        return time.time() - self.t0

    def _timed(self, function, key: str):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.record[key] += time.perf_counter() - start
        return wrapper

    def on_fit_start(self, trainer, pl_module) -> None:
        # After every callback's setup: the checkpoint callback installs its CheckpointIO in its own.
        io = trainer.strategy.checkpoint_io
        io.save_checkpoint = self._timed(io.save_checkpoint, "checkpoint_writes")
        self.record["fit_start"] = self._now()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.record.setdefault("first_step", self._now())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch = {"start": self._now(), "val": 0.0}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val_start = self._now()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            self.record["sanity_check"] = self._now() - self._val_start
        elif self._epoch:
            self._epoch["val"] += self._now() - self._val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning validates before on_train_epoch_end; the checkpoint callback saves right after it.
        self._epoch["end"] = self._now()
        self.record["epochs"].append(self._epoch)
        self._epoch = {}

    def on_fit_end(self, trainer, pl_module) -> None:
        self.record["fit_end"] = self._now()
