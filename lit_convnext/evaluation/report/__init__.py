"""``report.html``: one self-contained page per run, built from the files in the run directory.

``figures`` draws the pictures (matplotlib, PIL), ``cam`` the class-activation overlays (torchcam, optional),
``html`` reads the run's files and assembles the page.
"""

from lit_convnext.evaluation.report.html import build_report

__all__ = ["build_report"]
