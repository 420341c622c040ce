"""What ``load_pretrained`` did, for the console and for the run directory (JSON)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from lit_convnext.text import preview

HeadStatus = Literal["kept", "by_name", "reset", "none"]


@dataclass
class LoadReport:
    """Outcome of loading pretrained weights into a model.

    ``head`` is ``kept`` (classifier loaded from the file), ``by_name`` (the file's rows matched to the model's
    classes by name: ``classes_kept`` maps each old class to its row in the file, ``classes_added`` lists the new
    classes, whose rows stay at the model's fresh init), ``reset`` (left at the model's fresh init, see
    ``head_reason``) or ``none`` (the model has no classifier). ``missing``/``unexpected`` are
    backbone keys tolerated with ``allow_missing=True``; ``ignored`` are file entries that are not part
    of the network by design (decoder of a pre-training checkpoint, non-tensor values, loss buffers).
    """

    source: str
    layout: str
    container: str
    tensors_loaded: int
    head: HeadStatus
    head_reason: str
    ema_used: bool
    ema_available: bool
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    classes_kept: dict[str, int] = field(default_factory=dict)
    classes_added: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A short multi-line human-readable report."""
        if self.ema_used:
            ema = "EMA weights"
        elif self.ema_available:
            ema = "raw weights (EMA weights present but not used)"
        else:
            ema = "weights (no separate EMA weights in the file)"
        lines = [
            f"Loaded {self.tensors_loaded} tensors from {self.source}",
            f"  layout: {self.layout}; took {ema} from: {self.container}",
            f"  head: {self.head} ({self.head_reason})",
        ]
        if self.missing:
            lines.append(f"  missing (left at init): {len(self.missing)}: {preview(self.missing, 5)}")
        if self.unexpected:
            lines.append(f"  unexpected (not loaded): {len(self.unexpected)}: {preview(self.unexpected, 5)}")
        if self.ignored:
            lines.append(f"  ignored file entries: {len(self.ignored)}: {preview(self.ignored, 5)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of all fields."""
        return dataclasses.asdict(self)

