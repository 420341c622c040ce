"""`doctor` and the top-level help start without torch/Lightning; file checks are remembered between runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.bad_corpus import write_bad_files
from tests.helpers import make_folder

from lit_convnext.data import scan as scan_module
from lit_convnext.data.scan import inspect_files

HEAVY = ("torch", "lightning", "timm", "torchvision")
PROBE = """
import sys
from lit_convnext.entry import main
try:
    main({args!r})
except SystemExit as exit:
    print("exit", exit.code)
print("heavy", sorted(m for m in {heavy!r} if m in sys.modules))
"""


def _run(args: list[str]) -> str:
    code = PROBE.format(args=args, heavy=HEAVY)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).parents[1]).stdout


@pytest.mark.parametrize("args", [["--help"], ["doctor", "--help"], ["doctor", "ROOT", "--workers", "1"]])
def test_doctor_and_help_import_no_torch(args: list[str], tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", 2)
    out = _run([str(root) if a == "ROOT" else a for a in args])
    assert "heavy []" in out, out
    if args == ["--help"]:
        assert "exit 0" in out and all(c in out for c in ("fit", "validate", "test", "predict", "doctor", "export"))
    if args[-1] == "1":
        assert "exit 0" in out and "OK" in out


def test_fit_help_still_comes_from_lightning(capsys: pytest.CaptureFixture[str]) -> None:
    from lit_convnext.entry import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    assert "--trainer.default_root_dir" in capsys.readouterr().out


def test_second_check_of_unchanged_files_reads_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_folder(tmp_path / "data", 3)
    write_bad_files(folder / "red")
    paths = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    first = inspect_files(paths, workers=1)
    checked: list[str] = []
    original = scan_module.check_file

    def counting(path: str, header_only: bool = False) -> scan_module.FileCheck:
        checked.append(path)
        return original(path, header_only)

    monkeypatch.setattr(scan_module, "check_file", counting)
    assert inspect_files(paths, workers=1) == first and checked == []
    assert inspect_files(paths, workers=1, header_only=True) == first and checked == []  # a decode answers both

    changed = folder / "red" / "img0.png"
    changed.write_bytes((folder / "red" / "bmp_palette_too_long.bmp").read_bytes())  # new size and mtime
    again = inspect_files(paths, workers=1)
    assert checked == [str(changed)]
    assert again[paths.index(str(changed))].error and "palette" in again[paths.index(str(changed))].error

    checked.clear()
    inspect_files(paths, workers=1, cache=False)
    assert len(checked) == len(paths)


def test_header_only_results_do_not_answer_a_decoding_check(tmp_path: Path) -> None:
    write_bad_files(tmp_path / "f")
    path = str(tmp_path / "f" / "bmp_palette_too_long.bmp")
    assert inspect_files([path], header_only=True, workers=1)[0].error is None  # headers are fine
    assert "palette" in inspect_files([path], workers=1)[0].error  # so the decode still runs
