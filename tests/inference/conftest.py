"""The export check's speed measurement cut to its minimum number of runs: the tests assert what is measured, not
how fast, and a timed window per export would add seconds to every export test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _short_speed_window() -> Iterator[None]:
    from lit_convnext.inference import verify

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(verify, "SPEED_SECONDS", 0.0)
        yield
