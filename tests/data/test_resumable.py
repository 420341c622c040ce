"""The resumable training loader's parts: the epoch's draws, the seed per draw, the main process's RNG states."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, WeightedRandomSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from lit_convnext.callbacks.exact_resume import collect_random_state, set_random_state
from lit_convnext.data.resumable import EpochSeededSampler, SeededSamples, seeded_random
from lit_convnext.model.tally import TrainingTally


class RandomDraws(Dataset):
    """An "augmentation" that draws from the three RNGs timm's transforms use."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index, random.random(), float(np.random.rand()), torch.rand(()).item()],
                            dtype=torch.float64)


def test_each_epoch_is_a_function_of_seed_and_epoch() -> None:
    sampler = EpochSeededSampler(12, seed=7)
    first = list(sampler)
    assert sorted(index for index, _ in first) == list(range(12))
    assert list(EpochSeededSampler(12, seed=7)) == first  # nothing carried over from an earlier iteration
    sampler.set_epoch(1)
    second = list(sampler)
    assert [i for i, _ in second] != [i for i, _ in first] and {s for _, s in second}.isdisjoint(s for _, s in first)
    assert list(EpochSeededSampler(12, seed=7, epoch=1)) == second  # what a run resumed in epoch 1 draws


def test_an_ordering_sampler_is_reseeded_every_epoch() -> None:
    """A balanced or replay sampler keeps its own generator: its draws depend on the epoch, not on the epochs
    drawn before in this process."""
    def balanced() -> WeightedRandomSampler:
        return WeightedRandomSampler(torch.ones(12), 12, generator=torch.Generator().manual_seed(0))

    sampler = EpochSeededSampler(12, seed=7, order=balanced())
    sampler.set_epoch(0)
    list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) == list(EpochSeededSampler(12, seed=7, epoch=1, order=balanced()))


def test_seeded_random_leaves_the_callers_rngs_as_they_were() -> None:
    before = collect_random_state()
    with seeded_random(3):
        drawn = (random.random(), float(np.random.rand()), torch.rand(()).item())
    with seeded_random(3):
        assert (random.random(), float(np.random.rand()), torch.rand(()).item()) == drawn
    after = collect_random_state()
    assert torch.equal(after["torch"], before["torch"]) and after["python"]["gauss"] == before["python"]["gauss"]
    assert torch.equal(after["python"]["state"], before["python"]["state"])
    assert torch.equal(after["numpy"]["keys"], before["numpy"]["keys"])
    assert after["numpy"]["pos"] == before["numpy"]["pos"]


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)], ids=["main process", "workers"])
def test_a_loader_resumed_mid_epoch_goes_on_with_the_same_samples(workers: int) -> None:
    """The state after two batches, loaded into a fresh loader, gives the batches the uninterrupted loader gave;
    with workers, fresh ones (whose own RNGs start anew) give them: the augmentation's draws belong to the sample."""
    def loader(num_workers: int) -> StatefulDataLoader:
        return StatefulDataLoader(SeededSamples(RandomDraws()), batch_size=3, sampler=EpochSeededSampler(12, seed=1),
                                  num_workers=num_workers)

    whole = loader(workers)
    batches = iter(whole)
    next(batches), next(batches)
    state = whole.state_dict()
    rest = list(batches)
    resumed = loader(workers)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(list(resumed), rest, strict=True))


def test_random_state_round_trips_through_a_weights_only_checkpoint(tmp_path) -> None:
    state = collect_random_state()
    drawn = (random.random(), float(np.random.rand()), torch.rand(()).item())
    torch.save(state, tmp_path / "state.pt")
    set_random_state(torch.load(tmp_path / "state.pt", weights_only=True))
    assert (random.random(), float(np.random.rand()), torch.rand(()).item()) == drawn


def test_the_tally_of_a_checkpoint_inside_an_epoch_is_restored() -> None:
    tally = TrainingTally()
    tally.add_loss(torch.tensor(2.0), 4, step=1)
    tally.keep(torch.ones(4, 3), torch.zeros(4, dtype=torch.long))
    restored = TrainingTally()
    restored.load_state_dict(tally.state_dict(), torch.device("cpu"))
    for both in (tally, restored):
        both.add_loss(torch.tensor(1.0), 4, step=2)
    assert restored.take_epoch_loss() == pytest.approx(tally.take_epoch_loss().item()) == 1.5
    logits, targets = restored.take_logits()
    assert logits.shape == (4, 3) and targets.shape == (4,)


WORKER_SIGTERM = """
import os, signal, subprocess, sys, time
import torch
from torch.utils.data import DataLoader
from lit_convnext.data.resumable import ignore_sigterm
loader = DataLoader(list(range(64)), batch_size=2, num_workers=2, worker_init_fn=ignore_sigterm)
batches = iter(loader)
next(batches)
time.sleep(1)  # both workers set up
pids = [str(w.pid) for w in batches._workers]
subprocess.run(["kill", "-TERM", *pids], check=True)  # a SIGTERM from another process: the job's, a cloud's
time.sleep(1)
print("after a job-wide SIGTERM:", next(batches).tolist(), flush=True)
# Exiting with the iterator alive: Python stops the loader's workers with a SIGTERM of their parent's.
"""


@pytest.mark.slow  # two processes with loader workers, about 5 s
def test_loader_workers_outlive_a_job_wide_sigterm_but_not_their_parents(tmp_path) -> None:
    """A pre-emption's SIGTERM to every process leaves the workers loading until ``last.ckpt`` is saved; the parent's
    own SIGTERM (how a loader, and Python's exit, stop a worker) still ends them: the parent's exit does not hang."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", WORKER_SIGTERM], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "after a job-wide SIGTERM: [2, 3]" in done.stdout
    assert "exited unexpectedly" not in done.stderr and "killed by signal" not in done.stderr
