"""Short lists inside one-line messages: the first few items and an ellipsis, the same way everywhere."""

from __future__ import annotations

from collections.abc import Sequence


def preview(items: Sequence[object], limit: int, separator: str = ", ", more: str = "...") -> str:
    """The first ``limit`` of ``items`` joined by ``separator``, then ``more`` when some were left out.

    ``more`` may name ``{left}``, the number left out (``"and {left} more"``). A message that lists classes, keys
    or files stays one readable line however many there are.
    """
    shown = separator.join(str(item) for item in items[:limit])
    left = len(items) - limit
    if left <= 0:
        return shown
    return f"{shown}{separator}{more.format(left=left)}" if shown else more.format(left=left)
