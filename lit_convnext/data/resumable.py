"""Training batches that a run resumed mid-epoch draws exactly as the run that was never stopped.

Three things decide a training batch: which images (the epoch's order), how each is augmented (the random crop,
flip, RandAugment and erasing draws of timm's transform) and, in the training step, Mixup/CutMix and drop-path
(the main process's RNG, :class:`~lit_convnext.callbacks.exact_resume.ExactResume`). Here the first two are made
functions of the run's seed, the epoch and the position in the epoch's draw, so that torchdata's
``StatefulDataLoader`` (which Lightning saves in every checkpoint and restores on ``--ckpt_path last``) only has
to restore how far the epoch got.

Why a seed per sample rather than the loader workers' RNG states: a worker's RNG depends on every image that
worker transformed before, and the ``StatefulDataLoader`` keeps no worker RNG; restoring it would need each
worker's state saved in step with the batches it had prefetched, and would still change with ``num_workers``.
A seed per draw makes the augmentation independent of which worker (or the main process) transforms the image
and of what that process drew before. (torchdata restores a loader's position only with the ``num_workers`` it
was saved with: a run resumes with the same ``--data.num_workers``.)
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def derive_seed(*numbers: int) -> int:
    """A 32-bit seed from a few integers (numpy's ``SeedSequence`` mixes them: nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_random(seed: int) -> Iterator[None]:
    """Seed Python's, numpy's and torch's CPU RNG (the ones timm's and torchvision's transforms draw from) for the
    block, and put their previous states back after it: in the main process (``num_workers 0``) the training
    step's own draws (Mixup, drop-path) go on as if no image had been transformed."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)  # the CPU's only: torch.manual_seed would reseed CUDA's as well
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)


class EpochSeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, seed)``: the epoch's order of the training images, and a seed for each draw's augmentation.

    Both follow from ``(seed, epoch)`` alone, so the ``StatefulDataLoader`` resumes an epoch by skipping the draws
    it had made. ``order``: a sampler of its own (balanced, replay) whose ``generator`` is re-seeded every epoch;
    ``None`` shuffles the ``size`` images. Lightning calls :meth:`set_epoch` before each epoch (under DDP through
    its ``DistributedSamplerWrapper``, which shares the ``(index, seed)`` pairs out among the ranks).

    Args:
        size: The number of training images.
        seed: The run's seed.
        epoch: The epoch the first iteration draws (a resumed run starts inside a later one).
        order: The sampler that orders the images, or ``None`` for a shuffle.
    """

    def __init__(self, size: int, seed: int, epoch: int = 0, order: Sampler[int] | None = None) -> None:
        self.size = size
        self.seed = seed
        self.epoch = epoch
        self.order = order

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.order) if self.order is not None else self.size  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch_seed = derive_seed(self.seed, self.epoch)
        if self.order is None:
            indices = torch.randperm(self.size, generator=torch.Generator().manual_seed(epoch_seed)).tolist()
        else:
            generator = getattr(self.order, "generator", None)
            if generator is not None:
                generator.manual_seed(epoch_seed)
            indices = list(self.order)
        seeds = np.random.SeedSequence([self.seed, self.epoch, 1]).generate_state(len(indices)).tolist()
        return iter(zip(indices, seeds))


class SeededSamples(Dataset):
    """``dataset[index]`` transformed under the seed that :class:`EpochSeededSampler` drew with the index."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, draw: tuple[int, int]) -> Any:
        index, seed = draw
        with seeded_random(seed):
            return self.dataset[index]


def ignore_sigterm(worker_id: int) -> None:
    """Loader workers (training and evaluation) outlive a SIGTERM sent to the whole job: a cloud's pre-emption or
    SLURM's time limit sends it to every process, and a worker that died of it would end the run with a DataLoader
    error before the main process saved ``last.ckpt``. A SIGTERM from the worker's own parent still ends it: that is
    how the loader, and Python's exit, stop a worker that does not stop by itself (a worker that ignored it would
    hang its parent's exit). The signal is blocked and a thread reads who sent each one (``sigwaitinfo``)."""
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # inherited by the thread below
    threading.Thread(target=_end_on_parents_sigterm, args=(parent,), name="sigterm-from-parent", daemon=True).start()


def _end_on_parents_sigterm(parent: int) -> None:
    """Exit (status 0: stopped as asked, which the loader's watch of its workers does not report as a failure) when
    ``parent`` sends SIGTERM; a SIGTERM from anyone else is dropped."""
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)
