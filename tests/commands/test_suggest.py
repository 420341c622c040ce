"""``lit-convnext suggest``: which pool images to label next, and its one-line answers to bad input."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch

from lit_convnext.inference.suggest import margin_uncertainty, select
from tests.helpers import make_folder, one_line_error


def _clusters() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Three groups of pool images far apart in feature space: 10 near-copies of one very confusing picture (group
    0), 5 fairly confusing pictures (group 1), 5 less confusing (group 2), and 20 sure ones spread around."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:3] * 10
    embeddings, uncertainty, group = [], [], []
    for g, (count, unsure) in enumerate([(10, 0.95), (5, 0.8), (5, 0.7)]):
        embeddings.append(centres[g] + 0.01 * torch.randn(count, 8, generator=generator))
        uncertainty += [unsure] * count
        group += [g] * count
    embeddings.append(torch.randn(20, 8, generator=generator))
    uncertainty += [0.05] * 20
    group += [3] * 20
    return torch.tensor(uncertainty), torch.cat(embeddings), group


def test_uncertainty_takes_the_least_sure_and_hybrid_spends_one_label_per_confusing_picture() -> None:
    uncertainty, embeddings, group = _clusters()
    by_uncertainty = select(uncertainty, embeddings, 3, "uncertainty")
    assert [group[i] for i, _ in by_uncertainty] == [0, 0, 0]  # the copies of one picture use the whole budget
    assert [score for _, score in by_uncertainty] == pytest.approx([0.95] * 3)
    hybrid = select(uncertainty, embeddings, 3, "hybrid")
    assert [group[i] for i, _ in hybrid] == [0, 1, 2]  # the most unsure first, then the next confusing pictures
    assert hybrid[0][1] == pytest.approx(0.95)
    diversity = [group[i] for i, _ in select(uncertainty, embeddings, 23, "diversity")]
    assert all(diversity.count(g) == 1 for g in (0, 1, 2))  # 23 places: the 20 sure images and one of each group


def test_margin_uncertainty_is_one_for_a_tie_and_zero_for_a_sure_prediction() -> None:
    probabilities = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.6, 0.3, 0.1]])
    assert margin_uncertainty(probabilities).tolist() == pytest.approx([1.0, 0.0, 0.7])


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _suggest(fitted: dict[str, Path], pool: Path, budget: int, *extra: str) -> None:
    from lit_convnext.cli.entry import main

    with pytest.raises(SystemExit) as exit_info:
        main(["suggest", "--ckpt_path", str(fitted["best"]), "--data.predict_dir", str(pool), "--budget", str(budget),
              *extra])
    assert exit_info.value.code == 0


@pytest.mark.slow  # 2 s: suggest, then the predictor on the same pool
def test_suggest_lists_the_least_sure_pool_images_and_leaves_out_the_runs_own(
        fitted: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from lit_convnext.inference.predictor import load_predictor

    pool = make_folder(tmp_path / "pool", 3, seed=4000)
    (pool / "from_training").symlink_to(fitted["root"] / "train" / "red")  # the run's own images, 8 of them
    with caplog.at_level(logging.WARNING):
        _suggest(fitted, pool, 4, "--strategy", "uncertainty", "--output", "next.csv")
    assert "left out 8 of the 17 images" in caplog.text
    rows = _rows(Path("next.csv"))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    assert not any("from_training" in r["path"] for r in rows)
    # The ranking is the calibrated predictor's: least margin between its two most probable classes first.
    predictions = {p.source: p for p in load_predictor(fitted["best"]).predict(pool, top_k=2)}
    margins = {source: p[0][1] - p[1][1] for source, p in predictions.items() if "from_training" not in source}
    expected = sorted(margins, key=margins.get)[:4]
    assert [r["path"] for r in rows] == expected
    for row in rows:
        assert row["predicted"] == predictions[row["path"]].label
        assert float(row["probability"]) == pytest.approx(predictions[row["path"]][0][1], abs=1e-3)
        assert float(row["score"]) == pytest.approx(1 - margins[row["path"]], abs=1e-3)


def test_a_budget_larger_than_the_pool_lists_all_of_it_with_a_note(
        fitted: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pool = make_folder(tmp_path / "pool", 1, seed=4100)
    _suggest(fitted, pool, 10, "--output", "all.csv")
    assert "note: --budget 10 is more than the 3 unlabelled images" in capsys.readouterr().out
    assert sorted(r["path"] for r in _rows(Path("all.csv"))) == sorted(str(p) for p in pool.rglob("*.png"))


def test_bad_pools_are_one_line_errors(fitted: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    common = ["suggest", "--ckpt_path", str(fitted["best"]), "--budget", "2", "--data.predict_dir"]
    assert "contains no images" in one_line_error(capsys, [*common, str(tmp_path / "empty")])
    line = one_line_error(capsys, [*common, str(fitted["root"] / "train")])
    assert "all 24 images under --data.predict_dir" in line and "already labelled" in line
    assert "does not exist" in one_line_error(capsys, [*common, str(tmp_path / "missing")])
