"""The samplers: unpadded evaluation shards under DDP, the balanced training sampler (single- and multi-label), and
the replay of old classes while new ones are learnt."""

from __future__ import annotations

from collections import Counter

import torch

from lit_convnext.data.samplers import added_classes, balanced_sampler, eval_sampler, replay_groups, replay_sampler


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


def test_replay_draws_old_and_new_images_at_the_square_root_of_their_ratio() -> None:
    targets = [0] * 300 + [1] * 600 + [2] * 100  # classes 0 and 1 old (900 images), class 2 new (100)
    is_new = replay_groups(targets, [2], num_classes=3)
    assert is_new.sum() == 100 and not is_new[:900].any()
    drawn = Counter(targets[i] for _ in range(10) for i in replay_sampler(is_new, seed=0))
    assert abs((drawn[0] + drawn[1]) / drawn[2] - 3.0) < 0.3  # sqrt(900/100), where shuffling gives 9
    assert abs(drawn[1] / drawn[0] - 2.0) < 0.3  # within the old group, as in the folder
    assert list(replay_sampler(is_new, seed=3)) == list(replay_sampler(is_new, seed=3))  # same on every rank


def test_replay_counts_a_multilabel_image_with_any_new_class_as_new() -> None:
    targets = torch.tensor([[1, 0, 0], [1, 0, 1], [0, 1, 0], [0, 0, 1]])
    assert replay_groups(targets, [2], num_classes=3).tolist() == [False, True, False, True]


def test_added_classes_come_from_a_head_matched_by_name_only() -> None:
    class Model:
        load_report = {"head": "by_name", "classes_added": ["owl"], "classes_kept": {"cat": 0}}

    assert added_classes(Model()) == ["owl"]
    Model.load_report = {"head": "reset", "classes_added": []}
    assert added_classes(Model()) == [] and added_classes(None) == []
