"""The ``lit-convnext`` console entry: light commands and the top-level help start without torch.

``doctor`` and ``export`` are plain functions run by jsonargparse; ``lit-convnext --help`` lists the
subcommands. Only ``fit``, ``validate``, ``test`` and ``predict`` (and their ``--help``) import
LightningCLI, torch and timm, which take seconds to load.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import warnings
from typing import NoReturn

from lit_convnext.commands import COMMANDS
from lit_convnext.cli.messages import fail
from lit_convnext.errors import UserError
from lit_convnext.cli.terminal import show_warnings_as_one_line

HELP = """\
usage: lit-convnext [-h] {fit,validate,test,predict,tune,doctor,export,serve,report,suggest,optimize} ...

Fine-tune ConvNeXt (V1 and V2) on a folder of images with timm and PyTorch Lightning.

subcommands (`lit-convnext SUBCOMMAND --help` lists each one's options):
  fit        train on --data.root (writes runs/convnext/version_N, or under --trainer.default_root_dir)
  validate   measure a checkpoint or weights on the validation images of --data.root
  test       measure a checkpoint or weights on the test images of --data.root
  predict    label the images of --data.predict_dir with a checkpoint, one row per file
  tune       search the recipe's hyper-parameters: every fit option plus --tune.* (needs the `tune` extra)
  doctor     check a data folder before training (bad files, leakage, empty classes)
  export     write a checkpoint's weights for plain timm (.safetensors + .json) or as ONNX/OpenVINO/LiteRT/Core ML
  serve      answer HTTP requests with a checkpoint's predictions (needs the `serve` extra)
  report     rebuild a run's report.html from its run directory and a checkpoint
  suggest    list the images of an unlabelled pool to label next, best first (active learning)
  optimize   write a data folder as a litdata streaming dataset (local or s3://) for fit --data.root (`stream` extra)
"""


#: MLflow 3 keeps runs in its file store (``file:`` tracking URIs, Lightning's default) only where this variable is set
#: (``lit_convnext.callbacks.mlflow_artifacts.check_file_store``); the command sets it for its own process.
MLFLOW_FILE_STORE_SWITCH = "MLFLOW_ALLOW_FILE_STORE"


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lit-convnext`` and ``python -m lit_convnext``; ``args`` allows in-process use.

    Without ``args`` the process is the command's: only then are the garbage collector, the warning format and
    MLflow's file-store switch set, for that process. With ``args`` (a test, a user's program) nothing outside the
    command's own scope changes.
    """
    ends_process = args is None
    if ends_process:
        gc.disable()  # while the imports run: see settle_the_imports
        show_warnings_as_one_line()
        os.environ.setdefault(MLFLOW_FILE_STORE_SWITCH, "true")  # asked for by a file: tracking URI, said in one line
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in COMMANDS:
        run_command(argv[0], argv[1:], ends_process=ends_process)
    if argv and argv[0] == "tune":
        run_tune(argv[1:], ends_process=ends_process)
    if argv in (["-h"], ["--help"]):
        print(HELP, end="")
        raise SystemExit(0)
    from lit_convnext.cli.lightning_cli import run_lightning_command

    if ends_process:
        settle_the_imports()
    run_lightning_command(args)
    if ends_process:
        leave_the_heap_to_the_os()


def run_command(name: str, argv: list[str], ends_process: bool = False) -> NoReturn:
    """Run a command that needs no Trainer (``doctor``, ``export``) from its function's typed signature;
    ``ends_process`` when its exit ends the Python process (the console entry), not a caller's code."""
    from jsonargparse import auto_cli

    from lit_convnext.data.images import hide_pillow_file_warnings

    module_name, function_name = COMMANDS[name].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    if ends_process:
        settle_the_imports()
    try:
        with warnings.catch_warnings():
            hide_pillow_file_warnings()
            result = auto_cli(function, args=argv, prog=f"lit-convnext {name}")
    except UserError as err:
        fail(str(err))
    if ends_process:
        leave_the_heap_to_the_os()
    raise SystemExit(result if isinstance(result, int) else 0)


def run_tune(argv: list[str], ends_process: bool = False) -> NoReturn:
    """``lit-convnext tune``: every ``fit`` option and ``--tune.*`` (:mod:`lit_convnext.commands.tune`); its user
    mistakes, found before any trial trains, end as one line."""
    from lit_convnext.commands.tune import tune

    if ends_process:
        settle_the_imports()
    try:
        tune(argv)
    except UserError as err:
        fail(str(err))
    if ends_process:
        leave_the_heap_to_the_os()
    raise SystemExit(0)


def settle_the_imports() -> None:
    """Called once the command's modules are imported, in a process that is the command's (the console entry):
    torch, Lightning and timm make about a million objects that live as long as the process. The cyclic garbage
    collector, off while they were imported, would have walked them all seven times on the way (0.6 s of every
    ``fit`` on 2 cores); frozen now, later collections skip them and forked loader workers do not copy their
    pages by touching them."""
    gc.freeze()
    gc.enable()


def leave_the_heap_to_the_os() -> None:
    """Called when a command has finished and the process is about to end: Python's last full garbage collection
    would walk every object the imports and the run made, only for the OS to reclaim the memory (1 s after each
    ``fit`` beside torch and Lightning on 2 cores, 25 ms after ``doctor``). The commands close their files,
    loggers and loader workers before they return, so nothing waits for that collection."""
    gc.freeze()
