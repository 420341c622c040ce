"""The samplers: unpadded evaluation shards under DDP, and the balanced training sampler (single- and multi-label)."""

from __future__ import annotations

from collections import Counter

import torch

from lit_convnext.data.samplers import balanced_sampler, eval_sampler


def test_eval_sampler_gives_each_image_to_exactly_one_rank() -> None:
    class World:
        world_size = 2

    seen = []
    for rank in range(2):
        World.global_rank = rank
        seen += list(eval_sampler(list(range(9)), World()))
    assert sorted(seen) == list(range(9))
    assert eval_sampler(list(range(9)), None) is None


def test_balanced_sampler_draws_classes_evenly() -> None:
    targets = [0] * 40 + [1] * 4
    drawn = Counter(targets[i] for _ in range(20) for i in balanced_sampler(targets, seed=0))
    assert abs(drawn[0] / drawn[1] - 1.0) < 0.15
    assert list(balanced_sampler(targets, seed=3)) == list(balanced_sampler(targets, seed=3))  # same on every rank


def test_balanced_sampler_favours_images_of_rare_classes() -> None:
    targets = torch.tensor([[1.0, 0.0]] * 9 + [[0.0, 1.0]])
    draws = torch.tensor(list(balanced_sampler(targets, seed=0)) + list(balanced_sampler(targets, seed=1)))
    assert (draws == 9).float().mean() > 0.3  # the one rare image: half of the draws in expectation, not 10%
