"""What reaches the user's terminal from other code: the app's warnings as one line, and library log lines that
are not about the user's run left out (or said once, in the app's words).

The shared pieces live here: the one-line warning format, the log filters, and the rules for the lines Lightning
prints on every command. A rule about one library call sits next to that call, where the reason for it is:
huggingface_hub's retry lines (``model/backbone.py``), cleanlab's per-class warnings (``evaluation/end_of_fit.py``),
numpy's copy warning around torchmetrics' plot (``evaluation/class_report.py``), Pillow's decompression-bomb warning
(``data/images.py``), torch's pickle-protocol warning (``weights/reading.py``), Lightning's per-command lines
(``cli/lightning_cli.py``), and the test run's own filters (``pyproject.toml``).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from lit_convnext.private_api import LIGHTNING_INFO_LOGGER  # noqa: F401  (re-exported: the logger filtered here)

#: Lightning's two lines when a checkpoint is loaded: "Restoring states from the checkpoint path at X" (it reads as a
#: resumed run, so only a resume shows it) and "Loaded model weights from the checkpoint at X".
RESTORING_LINE = "Restoring states from the checkpoint path"
LOADED_WEIGHTS_LINE = "Loaded model weights from the checkpoint"

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # lit_convnext/


class DropLines(logging.Filter):
    """Drops the log records whose message contains any of ``texts``."""

    def __init__(self, *texts: str) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.texts)


@contextmanager
def log_filter(logger_name: str, log_filter_: logging.Filter) -> Iterator[None]:
    """``log_filter_`` on the logger ``logger_name`` for the duration of the block."""
    logger = logging.getLogger(logger_name)
    logger.addFilter(log_filter_)
    try:
        yield
    finally:
        logger.removeFilter(log_filter_)


def show_warnings_as_one_line() -> None:
    """Print warnings raised by lit-convnext's own code as ``lit-convnext: warning: MESSAGE``.

    Python's default format adds the source file, line number and the line of code that warned, which tell a user
    nothing (Lightning shortens its own warnings the same way). Other packages' warnings keep their format.
    It replaces ``warnings.formatwarning`` for the rest of the process: only the console entry calls it, once, in a
    process that is the command's (:func:`lit_convnext.cli.entry.main`); Lightning, imported later, wraps it and
    still hands other files' warnings on.
    """
    previous = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None) -> str:
        if os.path.abspath(filename).startswith(_PACKAGE_DIR):
            return f"lit-convnext: warning: {message}\n"
        return previous(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning


def hide_library_advice(evaluating: bool) -> None:
    """Leave out the library warnings that give a user of the app nothing to act on (scope it with
    ``warnings.catch_warnings``); ``evaluating``: the command only evaluates weights (validate, test, predict)."""
    from lit_convnext.data.images import hide_pillow_file_warnings  # Pillow: not for the console entry's --help

    # Lightning 2.6 with torch >= 2.10 warns about torch's own pytree API on every run.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    # Lightning asks for a shorter log interval when an epoch has fewer batches than it: the app logs every training
    # metric per epoch as well (the report's curves draw them), so small datasets lose nothing.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the "
                                              r"logging interval")
    # Under DDP Lightning asks for sync_dist on every per-class value the per-class report logs (3 lines a class):
    # torchmetrics' compute() has gathered them from every device already.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/[^/']+/.+', "
                                              r"\.\.\., sync_dist=True\)`")
    # Lightning's all_gather (the end-of-fit analysis under DDP) calls a function torch >= 2.10 deprecates.
    warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")
    # Under mixed precision Lightning's model summary says it counts the weights' size at 32 bits "instead": mixed
    # precision keeps the weights in 32 bits, so the size shown is right (on every run of configs/gpu.yaml).
    warnings.filterwarnings("ignore", message=r"Precision (bf)?16-mixed is not supported by the model summary")
    # Under --trainer.barebones Lightning drops every self.log call, and says so: the user asked for exactly that.
    warnings.filterwarnings("ignore", message=r"You are trying to `self.log\(\)` but `Trainer\(barebones=True\)`")
    # A streaming dataset (--data.root from `lit-convnext optimize`) is an IterableDataset with a length: litdata gives
    # each loader worker its own chunks, so that length is exact, as Lightning's warning asks.
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    # torchdata's StatefulDataLoader (the resumable training loader) calls a torch function torch deprecates.
    warnings.filterwarnings("ignore", message=r"'set_vital' is deprecated")
    hide_pillow_file_warnings()  # the file checks before the run report them per file
    if evaluating:
        # Lightning asks for the callbacks that wrote a checkpoint whenever one is restored; that matters when
        # resuming training, not when only its weights are evaluated.
        warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`")
        # A config with the EMA callback (configs/ema.yaml) evaluated: Lightning says the averaging state is not
        # restored outside fit, which evaluating does not need (the checkpoint's weights are already the average).
        warnings.filterwarnings("ignore", message=r"You're using the WeightAveraging callback, but loading a "
                                                  r"checkpoint outside the 'fit' stage")
