"""Which unlabelled images to label next (active learning): the pool's images whose labels would help most.

A checkpoint scores every image of the pool twice in one forward pass: its calibrated probabilities (how unsure the
model is: the margin between its two most probable classes) and the backbone's pooled features (where the image
lies among the others). ``uncertainty`` takes the most unsure images; ``diversity`` spreads the picks over the
feature space by k-center greedy (farthest-first: each pick is the image farthest from those picked so far, Sener
and Savarese, ICLR 2018); ``hybrid`` weighs the two together: each pick maximises uncertainty times the distance to
the nearest image already picked, so twenty copies of one confusing picture cost one label, not twenty (the aim of
BADGE, Ash et al., ICLR 2020, without its class-by-feature gradient vectors, which grow with the class count).
``benchmarks/suggest.py`` measures the three against random picks.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lit_convnext.data.datasets import UnlabeledImages
from lit_convnext.data.transforms import build_eval_transform, eval_decode_size

Strategy = Literal["uncertainty", "diversity", "hybrid"]
#: The key under which Lightning keeps ``ImageFolderDataModule.state_dict()`` (the run's data) in a checkpoint.
DATA_RECORD = "ImageFolderDataModule"


@dataclass(frozen=True)
class Suggestion:
    """One image to label: its place in the list (1 = most useful), the model's guess and why it was chosen."""

    path: str
    rank: int
    predicted: str
    probability: float  # calibrated probability of ``predicted``
    score: float  # what chose it: uncertainty, distance to the picks before it, or their product (hybrid)


@dataclass
class PoolScores:
    """What the model says about each readable pool image: calibrated probabilities and pooled backbone features."""

    paths: list[Path]
    probabilities: torch.Tensor  # (images, classes)
    embeddings: torch.Tensor  # (images, features)
    unreadable: list[tuple[str, str]]  # (path, reason): left out of the suggestions


def score_pool(model: Any, paths: Sequence[Path], batch_size: int = 32, num_workers: int = 0) -> PoolScores:
    """Run ``model`` (a ``ConvNeXtClassifier``, in eval mode) over ``paths`` as ``predict`` reads them (same
    dataset, evaluation transform and reduced JPEG decoding)."""
    preprocessing = dict(model.preprocessing)
    dataset = UnlabeledImages(list(paths), build_eval_transform(preprocessing), eval_decode_size(preprocessing))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    probabilities, embeddings, kept, unreadable = [], [], [], []
    net = model.net
    with torch.inference_mode():
        for images, indices, errors in loader:
            features = net.forward_features(images.to(model.device))
            pooled = net.forward_head(features, pre_logits=True)
            logits = net.get_classifier()(pooled)
            good = torch.tensor([not error for error in errors], dtype=torch.bool)
            probabilities.append(model.probabilities(logits).cpu()[good])
            embeddings.append(pooled.float().cpu()[good])
            for index, error in zip(indices.tolist(), errors):
                if error:
                    unreadable.append((str(dataset.paths[index]), error))
                else:
                    kept.append(dataset.paths[index])
    return PoolScores(kept, torch.cat(probabilities), torch.cat(embeddings), unreadable)


def margin_uncertainty(probabilities: torch.Tensor) -> torch.Tensor:
    """1 minus the margin between the two most probable classes: 1 for a tie, 0 for a sure prediction. The margin
    (rather than entropy) ranks by the one decision a label would settle, unmoved by the tail of unlikely classes."""
    if probabilities.shape[1] < 2:
        return torch.zeros(len(probabilities))
    top2 = probabilities.topk(2, dim=1).values
    return 1 - (top2[:, 0] - top2[:, 1])


def select(uncertainty: torch.Tensor, embeddings: torch.Tensor, budget: int, strategy: Strategy
           ) -> list[tuple[int, float]]:
    """``budget`` pool indices, best first, each with the score that chose it (see the module docstring)."""
    budget = min(budget, len(uncertainty))
    if strategy == "uncertainty":
        scores, order = uncertainty.sort(descending=True, stable=True)
        return list(zip(order[:budget].tolist(), scores[:budget].tolist()))
    points = F.normalize(embeddings.double(), dim=1)
    weight = uncertainty.double() if strategy == "hybrid" else torch.ones(len(points), dtype=points.dtype)
    nearest: torch.Tensor | None = None  # distance of each image to the nearest pick so far
    taken = torch.zeros(len(points), dtype=torch.bool)
    chosen: list[tuple[int, float]] = []
    for _ in range(budget):
        if nearest is None:  # the first pick: hybrid's most uncertain image, diversity's most typical (nearest the mean)
            to_mean = (points - points.mean(0)).norm(dim=1)
            gain, score = (weight, weight) if strategy == "hybrid" else (-to_mean, to_mean)
        else:
            gain = score = weight * nearest
        index = int(gain.masked_fill(taken, -float("inf")).argmax())
        chosen.append((index, float(score[index])))
        taken[index] = True
        distance = (points - points[index]).norm(dim=1)
        nearest = distance if nearest is None else torch.minimum(nearest, distance)
    return chosen


def suggest_images(model: Any, pool: Sequence[Path], budget: int, strategy: Strategy = "hybrid",
                   batch_size: int = 32, num_workers: int = 0) -> tuple[list[Suggestion], PoolScores]:
    """The ``budget`` images of ``pool`` to label next with ``model`` (a loaded ``ConvNeXtClassifier``), best first,
    and the pool's scores."""
    scores = score_pool(model, pool, batch_size, num_workers)
    if not scores.paths:
        return [], scores
    picks = select(margin_uncertainty(scores.probabilities), scores.embeddings, budget, strategy)
    top = scores.probabilities.max(dim=1)
    names = list(model.class_names)
    return [Suggestion(str(scores.paths[i]), rank, names[int(top.indices[i])], float(top.values[i]), score)
            for rank, (i, score) in enumerate(picks, start=1)], scores


def write_suggestions(suggestions: Sequence[Suggestion], path: Path) -> None:
    """``path`` as a CSV: ``path,rank,predicted,probability,score``, best first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "rank", "predicted", "probability", "score"])
        for s in suggestions:
            writer.writerow([s.path, s.rank, s.predicted, f"{s.probability:.4f}", f"{s.score:.4f}"])


def run_data(checkpoint_path: Path) -> dict[str, Any]:
    """The data record a checkpoint keeps (``root``, ``labels``, ``label_separator``), or ``{}`` for a checkpoint
    written before it was kept. Memory-mapped: the weights are not read."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    return dict(checkpoint.get(DATA_RECORD) or {})
