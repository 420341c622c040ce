"""`doctor` and the top-level help start without torch/Lightning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import REPO, make_folder

HEAVY = ("torch", "lightning", "timm", "torchvision")
PROBE = """
import sys
from lit_convnext.cli.entry import main
try:
    main({args!r})
except SystemExit as exit:
    print("exit", exit.code)
print("heavy", sorted(m for m in {heavy!r} if m in sys.modules))
"""


def _run(args: list[str]) -> str:
    code = PROBE.format(args=args, heavy=HEAVY)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=REPO).stdout


@pytest.mark.parametrize("args", [["--help"], ["doctor", "--help"], ["suggest", "--help"],
                                  ["doctor", "ROOT", "--workers", "1"]])
def test_doctor_and_help_import_no_torch(args: list[str], tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", 2)
    out = _run([str(root) if a == "ROOT" else a for a in args])
    assert "heavy []" in out, out
    if args == ["--help"]:
        assert "exit 0" in out and all(c in out for c in ("fit", "validate", "test", "predict", "doctor", "export"))
    if args[-1] == "1":
        assert "exit 0" in out and "OK" in out


def test_fit_help_still_comes_from_lightning(capsys: pytest.CaptureFixture[str]) -> None:
    from lit_convnext.cli.entry import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    assert "--trainer.default_root_dir" in capsys.readouterr().out


FROZEN = """
import gc, sys
from lit_convnext.cli.entry import main
sys.argv = ["lit-convnext", *{args!r}]
try:
    main({call})
except SystemExit as exit:
    print("exit", exit.code, "frozen", gc.get_freeze_count() > 0, "collecting", gc.isenabled())
"""


@pytest.mark.parametrize("call", ["", "sys.argv[1:]"])
def test_only_the_console_entry_leaves_its_heap_to_the_os(call: str, tmp_path: Path) -> None:
    """The console entry (``main()``) imports with the cyclic collector off, then freezes what the imports made and
    turns the collector back on, and freezes the heap as the process ends, so Python's last garbage collection does
    not walk it; ``main(args)`` from a caller's code must leave the caller's collector as it was."""
    root = make_folder(tmp_path / "data", 2)
    code = FROZEN.format(args=["doctor", str(root), "--workers", "1", "--cache", "false"], call=call)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout
    assert f"exit 0 frozen {not call} collecting True" in out, out
