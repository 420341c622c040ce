"""A callback for tests that signal a ``fit`` subprocess at a known step (``--trainer.callbacks+=...PauseAtStep``)."""

from __future__ import annotations

import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class PauseAtStep(Callback):
    """Once optimizer step ``step`` is done (its checkpoints written), create ``marker`` and wait up to ``seconds``
    before the next batch (less once SIGTERM arrived), so that a test's signal lands there whatever the machine's
    speed."""

    def __init__(self, step: int, marker: str, seconds: float = 60.0) -> None:
        self.step = step
        self.marker = Path(marker)
        self.seconds = seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step != self.step:
            return
        self.marker.touch()
        deadline = time.monotonic() + self.seconds
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.01)
