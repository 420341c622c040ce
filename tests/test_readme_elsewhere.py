"""The README's "Using the model elsewhere" Python examples run as written, on the files they name."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest

from lit_convnext.commands.export import export
from tests.helpers import write_image

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_snippets() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Using the model elsewhere", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_python_examples() -> None:
    snippets = _section_snippets()
    assert len(snippets) == 3
    assert any("load_predictor(" in s for s in snippets) and any("num_classes=10" in s for s in snippets)


@pytest.fixture(scope="module")
def readme_files(fitted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the examples name: a run's checkpoint, its ONNX export, photos (made once for all examples)."""
    cwd = tmp_path_factory.mktemp("readme")
    checkpoint = cwd / "runs" / "convnext" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    shutil.copy(fitted["best"], checkpoint)
    export(checkpoint, cwd / "model.onnx")
    write_image(cwd / "photo.jpg", (220, 30, 30))
    for i, color in enumerate([(30, 200, 40), (30, 40, 220)]):
        write_image(cwd / "new_images" / f"img{i}.png", color, seed=i)
    return cwd


@pytest.mark.parametrize("index", range(3))
def test_readme_python_example_runs(readme_files: Path, index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(readme_files)
    snippet = _section_snippets()[index]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, f"README.md python example {index + 1}", "exec"), {"__name__": "__readme__"})
    printed = out.getvalue().splitlines()
    if "load_predictor" in snippet:  # photo.jpg and the two images of new_images/, each with its top 3
        assert len(printed) == 3 and printed[0].startswith("photo.jpg [(")
        assert all(name in printed[1] for name in ("'blue'", "'green'", "'red'"))
    elif "num_classes" in snippet:
        assert printed == ["['0', '1', '2']"]
    else:  # plain ONNX Runtime: the best class and its probability
        name, probability = printed[0].split()
        assert name in {"blue", "green", "red"} and 0 < float(probability) <= 1
