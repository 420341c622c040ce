"""What the training step keeps between the steps at which it logs: its logits for the metrics, sums of its loss.

Logging or updating metrics at every step is Python that runs at every step (``self.log`` about 0.7 ms,
three torchmetrics updates about 0.8 ms on CPU; on a GPU several kernel launches each) for values that
Lightning writes only every ``log_every_n_steps`` steps, and that the epoch's end summarises. Keeping them
here costs a list append and two tensor additions per step; what is logged is the same.
"""

from __future__ import annotations

import torch


class TrainingTally:
    """The training step's logits (for the training metrics) and loss sums (for ``train/loss_step`` and
    ``train/loss_epoch``), between the points where :class:`~lit_convnext.model.classifier.ConvNeXtClassifier` logs them."""

    #: Batches of logits kept before the metrics are updated with all of them at once ...
    BATCHES = 16
    #: ... or fewer, once this many logits are kept (16 MB of float32: many classes, large batches).
    MAX_LOGITS = 1 << 22

    def __init__(self) -> None:
        self._logits: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._kept = 0
        self._window_sum: torch.Tensor | None = None  # loss x images since train/loss_step was last logged
        self._window_images = 0
        self._window_closed_at: int | None = None  # the optimizer step at which it was logged
        self._epoch_sum: torch.Tensor | None = None
        self._epoch_images = 0

    # ------------------------------------------------------------------------------------------- logits
    def keep(self, logits: torch.Tensor, targets: torch.Tensor) -> bool:
        """Keep a batch's logits (detached) and targets; ``True`` when the metrics should take them now."""
        self._logits.append((logits.detach(), targets))
        self._kept += logits.numel()
        return len(self._logits) >= self.BATCHES or self._kept >= self.MAX_LOGITS

    def take_logits(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The kept logits and targets, concatenated (``None`` when none are kept), and forget them."""
        if not self._logits:
            return None
        logits = torch.cat([batch for batch, _ in self._logits])
        targets = torch.cat([batch for _, batch in self._logits])
        self._logits.clear()
        self._kept = 0
        return logits, targets

    # --------------------------------------------------------------------------------------------- loss
    def add_loss(self, loss: torch.Tensor, images: int, step: int) -> bool:
        """Add a batch's mean ``loss`` over its ``images`` at optimizer step ``step`` (several batches share a
        step under gradient accumulation). Returns whether it is the epoch's first batch."""
        if self._window_closed_at is not None and step != self._window_closed_at:
            self._window_sum, self._window_images, self._window_closed_at = None, 0, None
        first = self._epoch_images == 0
        weighted = loss.detach() * images
        self._window_sum = weighted if self._window_sum is None else self._window_sum + weighted
        self._epoch_sum = weighted if self._epoch_sum is None else self._epoch_sum + weighted
        self._window_images += images
        self._epoch_images += images
        return first

    def window_mean(self, step: int, end: bool = True) -> torch.Tensor:
        """Mean loss per image since the previous window ended; with ``end`` this window ends with ``step``."""
        assert self._window_sum is not None, "add_loss first"
        if end:
            self._window_closed_at = step
        return self._window_sum / self._window_images

    def take_epoch_loss(self) -> torch.Tensor | None:
        """Mean loss per image of the epoch (``None`` before any batch), and start the next epoch."""
        if self._epoch_sum is None:
            return None
        mean = self._epoch_sum / self._epoch_images
        self._epoch_sum, self._epoch_images = None, 0
        self._window_sum, self._window_images, self._window_closed_at = None, 0, None
        return mean

    # ------------------------------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """What is kept so far (a checkpoint inside an epoch holds it, so a resumed epoch's loss and metrics count
        the batches before the save too)."""
        return {"logits": [(logits.cpu(), targets.cpu()) for logits, targets in self._logits],
                "window_sum": self._window_sum, "window_images": self._window_images,
                "window_closed_at": self._window_closed_at, "epoch_sum": self._epoch_sum,
                "epoch_images": self._epoch_images}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Take :meth:`state_dict`'s values back, the tensors onto ``device``."""
        self._logits = [(logits.to(device), targets.to(device)) for logits, targets in state["logits"]]
        self._kept = sum(logits.numel() for logits, _ in self._logits)
        self._window_sum = state["window_sum"].to(device) if state["window_sum"] is not None else None
        self._epoch_sum = state["epoch_sum"].to(device) if state["epoch_sum"] is not None else None
        self._window_images, self._epoch_images = state["window_images"], state["epoch_images"]
        self._window_closed_at = state["window_closed_at"]
