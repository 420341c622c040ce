"""Shared fixtures: tiny synthetic image folders in ``tmp_path`` and an isolated working directory."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch  # noqa: F401  (see below)
import pytest

from tests.helpers import FAST, make_folder

# Lightning gives its logger a handler on the stderr of the moment it is first imported. Imported here, that is the
# session's; imported first inside a test, it would be that test's captured stream, closed when the test ends, and
# every later Lightning message would print "--- Logging error ---" (seen running tests/checks/test_bad_files.py
# alone).

@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """``root/train`` (8 per class) and ``root/val`` (4 per class), three colour classes."""
    root = tmp_path / "images"
    make_folder(root / "train", 8)
    make_folder(root / "val", 4, seed=500)
    return root


@pytest.fixture(scope="session")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real two-epoch fit, shared by the tests that only read its outputs."""
    base = tmp_path_factory.mktemp("fitted")
    root = base / "images"
    make_folder(root / "train", 8)
    make_folder(root / "val", 4, seed=500)
    make_folder(root / "test", 2, seed=900)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        patch.setenv("LIT_CONVNEXT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        from lit_convnext.cli.entry import main

        main(["fit", "--data.root", str(root), "--trainer.max_epochs", "2", *FAST])
    run = base / "runs" / "convnext" / "version_0"
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    return {"base": base, "root": root, "run": run, "best": best}


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in its own directory so runs/ and predictions never land in the repository,
    with its own file-check cache so no result carries over from another test or the user's cache."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("LIT_CONVNEXT_CACHE_DIR", str(tmp_path / "cache"))
