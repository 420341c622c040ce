"""Unlabelled images beside the labelled folder (``--data.unlabeled_root``): which are used, and the batches."""

import os
from pathlib import Path

import pytest
import torch

from lit_convnext.data.datamodule import ImageFolderDataModule
from lit_convnext.data.unlabeled import find_unlabeled_images, split_training_batch
from lit_convnext.errors import UserError
from tests.helpers import COLORS, make_folder, one_line_error, FAST, write_image

PREPROCESSING = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
                 "std": (0.5, 0.5, 0.5), "crop_pct": 1.0}


def _pool(folder: Path, count: int, seed: int = 500) -> Path:
    for i in range(count):
        write_image(folder / "site" / f"photo{i}.jpg", COLORS["red" if i % 2 else "blue"], seed=seed + i)
    return folder


def test_labelled_images_are_left_out_by_their_real_path(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", per_class=3)
    pool = _pool(tmp_path / "pool", 4)
    os.symlink(root / "red", pool / "linked_red")  # the labelled images again, through a link
    found = find_unlabeled_images(pool, (root / name / f"img{i}.png" for name in COLORS for i in range(3)))
    assert len(found.paths) == 4 and found.left_out == 3
    assert all("linked_red" not in str(path) for path in found.paths)


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist or is not a folder"),
    ("empty", "contains no images"),
    ("labelled", "already labelled images of the run"),
])
def test_unusable_unlabeled_folder_is_one_line(tmp_path: Path, case: str, expected: str) -> None:
    root = make_folder(tmp_path / "data", per_class=3)
    target = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "labelled": root}[case]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=expected):
        find_unlabeled_images(target, (p for p in root.rglob("*.png")))


def test_training_batches_carry_both_views_of_unlabeled_images(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", per_class=6)
    pool = _pool(tmp_path / "pool", 5)
    datamodule = ImageFolderDataModule(root=root, batch_size=4, num_workers=0, unlabeled_root=pool,
                                       unlabeled_ratio=2, check_files=False)
    datamodule.preprocessing = PREPROCESSING
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    labelled_batches = len(datamodule._loader("train"))
    batches = list(iter(loader))
    assert len(batches) == labelled_batches  # an epoch is one pass over the labelled images
    (images, targets), unlabeled = split_training_batch(batches[0][0] if isinstance(batches[0], tuple) else batches[0])
    assert images.shape == (4, 3, 32, 32) and targets.shape == (4,)
    assert unlabeled["weak"].shape == unlabeled["strong"].shape == (8, 3, 32, 32)
    assert set(unlabeled["index"].tolist()) <= set(range(5))
    assert not torch.equal(unlabeled["weak"], unlabeled["strong"])


def test_plain_batches_have_no_unlabeled_part() -> None:
    batch = (torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    assert split_training_batch(batch) == (batch, None)


def test_cli_names_an_empty_unlabeled_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "data", per_class=6)
    (tmp_path / "empty").mkdir()
    line = one_line_error(capsys, ["fit", "--data.root", str(root), "--data.unlabeled_root", str(tmp_path / "empty"),
                                   "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "runs"),
                                   *FAST])
    assert "--data.unlabeled_root" in line and "contains no images" in line
