"""Class discovery, split layouts and the reproducible validation split."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.helpers import make_folder, write_image

from lit_convnext.data.folders import natural_key, read_folder_splits, write_split_manifest
from lit_convnext.errors import UserError


def test_natural_order_puts_class2_before_class10(tmp_path: Path) -> None:
    for name in ["class10", "class2", "class1", "Class3"]:
        write_image(tmp_path / "train" / name / "a.png", (10, 10, 10))
        write_image(tmp_path / "val" / name / "b.png", (10, 10, 10))
    splits = read_folder_splits(tmp_path)
    assert splits.class_names == ["class1", "class2", "Class3", "class10"]
    assert sorted(["img10.png", "img9.png"], key=natural_key) == ["img9.png", "img10.png"]


def test_names_with_superscript_or_circled_digits_sort(tmp_path: Path) -> None:
    """``²`` and ``①`` count as digits for ``str.isdigit`` but not for ``int``: such class folders and file names
    once stopped the listing with a traceback."""
    for name in ["①", "area 10²", "area 9²", "²1"]:
        write_image(tmp_path / "train" / name / "1²2.png", (10, 10, 10))
        write_image(tmp_path / "train" / name / "10².png", (10, 10, 10))
    splits = read_folder_splits(tmp_path)
    assert splits.class_names == ["area 9²", "area 10²", "²1", "①"]
    assert sorted(["img10².png", "img9².png", "x1²2"], key=natural_key) == ["img9².png", "img10².png", "x1²2"]


def test_val_is_mapped_by_class_name_not_position(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", 2, {"apple": (1, 1, 1), "banana": (2, 2, 2), "cherry": (3, 3, 3)})
    make_folder(tmp_path / "val", 1, {"cherry": (3, 3, 3)})  # val has only the last class
    splits = read_folder_splits(tmp_path)
    assert splits.targets(splits.val) == [2]
    assert [s.class_name for s in splits.val] == ["cherry"]


def test_class_only_in_val_is_an_error_naming_it(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", 2, {"cat": (1, 1, 1), "dog": (2, 2, 2)})
    make_folder(tmp_path / "val", 1, {"cat": (1, 1, 1), "zebra": (3, 3, 3)})
    with pytest.raises(UserError, match="zebra"):
        read_folder_splits(tmp_path)


def test_empty_class_folder_is_an_error(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", 2, {"cat": (1, 1, 1)})
    (tmp_path / "train" / "dog").mkdir()
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match=r"dog.*no images"):
        read_folder_splits(tmp_path)


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_folder_splits(tmp_path / "nowhere")


def test_hidden_and_non_image_files_are_ignored(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", 2, {"cat": (1, 1, 1)})
    make_folder(tmp_path / "val", 1, {"cat": (1, 1, 1)})
    (tmp_path / "train" / "cat" / ".DS_Store").write_bytes(b"\0\0")
    (tmp_path / "train" / "cat" / "README.md").write_text("hi")
    write_image(tmp_path / "train" / "cat" / ".hidden.png", (1, 1, 1))
    write_image(tmp_path / "train" / ".ipynb_checkpoints" / "x.png", (1, 1, 1))
    write_image(tmp_path / "train" / "cat" / "nested" / "UPPER.PNG", (1, 1, 1))
    splits = read_folder_splits(tmp_path)
    assert splits.class_names == ["cat"]
    assert sorted(s.path.name for s in splits.train) == ["UPPER.PNG", "img0.png", "img1.png"]


def test_flat_layout_gets_a_stratified_seeded_split_and_manifest(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "flat", 10, {"a": (1, 1, 1), "b": (2, 2, 2), "c": (3, 3, 3)})
    first = read_folder_splits(root, val_fraction=0.2, seed=7)
    again = read_folder_splits(root, val_fraction=0.2, seed=7)
    other = read_folder_splits(root, val_fraction=0.2, seed=8)
    assert first.val_is_held_out
    assert [s.path for s in first.val] == [s.path for s in again.val]
    assert [s.path for s in first.val] != [s.path for s in other.val]
    for name in "abc":  # stratified: 2 of 10 from every class
        assert sum(s.class_name == name for s in first.val) == 2
    assert not {s.path for s in first.val} & {s.path for s in first.train}

    manifest = tmp_path / "split_manifest.csv"
    write_split_manifest(manifest, root, first)
    reproduced = read_folder_splits(root, val_fraction=0.5, seed=99, manifest=manifest)
    assert [s.path for s in reproduced.val] == [s.path for s in first.val]


def test_train_without_val_draws_val_from_train(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", 5, {"a": (1, 1, 1), "b": (2, 2, 2)})
    splits = read_folder_splits(tmp_path, val_fraction=0.2)
    assert len(splits.val) == 2 and len(splits.train) == 8


@pytest.mark.parametrize(("devices", "expected"), [(1, 8), (2, 7), (8, 1), (32, 1)])
def test_default_workers_share_the_node_cores_among_its_devices(devices: int, expected: int,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from lit_convnext.data.datamodule import default_num_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_num_workers(devices) == expected  # 8 ranks on 16 cores: 8 workers in all, not 64
