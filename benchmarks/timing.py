"""Step timing shared by the benchmarks: wall-clock at the start of each training step, no device sync."""

from __future__ import annotations

import statistics
import time

import lightning.pytorch as pl

#: Step start times of the latest run of :class:`StepTimer` (read by the benchmark after ``fit``).
LAST_RUN: list[float] = []


class StepTimer(pl.Callback):
    """Records ``time.perf_counter()`` at every training batch start into :data:`LAST_RUN`."""

    def __init__(self, sync_cuda: bool = False) -> None:
        self.sync_cuda = sync_cuda
        LAST_RUN.clear()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.sync_cuda:
            import torch

            torch.cuda.synchronize()
        LAST_RUN.append(time.perf_counter())


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
