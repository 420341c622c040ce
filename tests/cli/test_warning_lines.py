"""The app's own warnings reach the terminal as one line of ours, without Python's file, line and code."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import lit_convnext
from lit_convnext.cli.entry import main
from lit_convnext.cli.terminal import show_warnings_as_one_line


def test_our_warnings_are_one_line_and_others_keep_their_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    show_warnings_as_one_line()
    ours = str(Path(lit_convnext.__file__).parent / "evaluation" / "end_of_fit.py")
    line = 'rank_zero_warn("val_label_issues.csv not written")'
    assert (warnings.formatwarning("val_label_issues.csv not written", UserWarning, ours, 259, line)
            == "lit-convnext: warning: val_label_issues.csv not written\n")
    other = warnings.formatwarning("something else", UserWarning, "/elsewhere/module.py", 7, "warn()")
    assert other.startswith("/elsewhere/module.py:7: UserWarning: something else") and "warn()" in other


def test_only_the_console_entry_sets_the_warning_format(capsys: pytest.CaptureFixture[str]) -> None:
    """``main(args)`` runs in a caller's process (a test, a user's program): the format is the caller's to choose."""
    before = warnings.formatwarning
    with pytest.raises(SystemExit):
        main(["--help"])
    assert warnings.formatwarning is before
    assert "usage: lit-convnext" in capsys.readouterr().out
