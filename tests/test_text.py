"""One truncation rule for the lists inside one-line messages."""

from __future__ import annotations

from lit_convnext.text import preview


def test_a_short_list_is_shown_whole_and_a_long_one_ends_with_an_ellipsis() -> None:
    assert preview(["a", "b"], 3) == "a, b"
    assert preview(["a", "b", "c"], 3) == "a, b, c"
    assert preview(["a", "b", "c", "d"], 3) == "a, b, c, ..."
    assert preview([], 3) == ""


def test_the_rest_can_be_counted_and_the_separator_chosen() -> None:
    assert preview(["x (bad)", "y (bad)", "z (bad)"], 1, "; ", "and {left} more") == "x (bad); and 2 more"
    assert preview(list("abcdef"), 4, separator="") == "abcd..."
    assert preview(["a", "b"], 0) == "..."
