"""What a fit resumed mid-epoch needs beyond Lightning's own restore to go on exactly as if never stopped.

* The training loaders' position: Lightning saves it (the app's loaders are torchdata's ``StatefulDataLoader``)
  but, when the lr schedule asked for the run's length first, does not load it
  (:func:`~lit_convnext.private_api.lightning.restore_train_loader_position`).
* The main process's random state, below.

The training step draws from the main process's RNGs: timm's Mixup/CutMix from numpy's, drop-path and dropout
from torch's (the accelerator's too), anything else from Python's. A resumed run that started from a fresh
``seed_everything`` would draw differently from the step it resumes at. The states are taken when the checkpoint
is written, and set again just before the first training batch of the resumed run: whatever the resume did
before (the sanity check, loaders started, the file check) then does not count, as in the run never stopped.
Loaders do not draw from these RNGs (each has its own generator, and every training image its own seed,
:mod:`lit_convnext.data.resumable`), so nothing between a save and the next training batch draws from them.

Under DDP the checkpoint holds the first process's states and every process resumes with them (with one
``seed_everything`` seed the processes' states were the same anyway).
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from lit_convnext.errors import UserError
from lit_convnext.private_api.lightning import pending_train_loader_states, restore_train_loader_position


def collect_random_state() -> dict[str, Any]:
    """Python's, numpy's, torch's CPU and (where initialised) CUDA RNG states, as tensors and plain numbers
    (a checkpoint loads with ``weights_only=True``)."""
    version, words, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict[str, Any]) -> None:
    """Set the states :func:`collect_random_state` took."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def saved_workers(state: dict[str, Any]) -> int | None:
    """The ``num_workers`` of the ``StatefulDataLoader`` that saved ``state`` (``None``: another kind of loader)."""
    if "_snapshot" in state:
        return int(state["_snapshot"]["_main_snapshot"]["_num_workers"])
    return 0 if "_num_yielded" in state else None


def check_loader_workers(trainer: pl.Trainer) -> None:
    """torchdata resumes a loader's position only with the ``num_workers`` it was saved with (another count fails
    deep in the loader). At an epoch's end there is no position to keep: the saved one is left out and the next
    epoch starts whole. Inside an epoch, one line says which count to resume with."""
    states = pending_train_loader_states(trainer)
    if not states:
        return
    loaders = trainer.train_dataloader
    loaders = list(loaders.values()) if isinstance(loaders, dict) else [loaders]
    saved = [saved_workers(state) for state in states]
    now = [getattr(loader, "num_workers", None) for loader in loaders]
    if len(saved) != len(now) or all(a is None or a == b for a, b in zip(saved, now)):
        return
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    if progress.processed in (0, trainer.num_training_batches):
        states.clear()
        return
    raise UserError(f"the checkpoint was saved inside epoch {trainer.current_epoch} ({progress.processed} of its "
                    f"{trainer.num_training_batches} batches done) by a training loader with {saved[0]} workers, "
                    f"and this run has {now[0]}: resume with --data.num_workers {saved[0]} (a loader's position "
                    "inside an epoch resumes only with the workers it was saved with)")


class ExactResume(Callback):
    """Keeps the main process's RNG states in each checkpoint; on a resume, restores them and the training loaders'
    position (see the module docstring)."""

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return collect_random_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_loader_workers(trainer)
        restore_train_loader_position(trainer)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._to_restore is not None:
            set_random_state(self._to_restore)
            self._to_restore = None
