"""The ``lit-convnext`` command: LightningCLI wired for fine-tuning ConvNeXt on image folders.

This module owns the wiring only: which arguments are linked (class names, image size and batch size
flow from the data to the model), the default callbacks and logger, and turning user mistakes into
one-line errors.
"""

from __future__ import annotations

import importlib
import pickle
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_convnext.backbone import check_model_name
from lit_convnext.callbacks import (
    AtomicCheckpointIO,
    DataWaitMonitor,
    EvaluationReport,
    FiniteLossGuard,
    PerClassReport,
    ResumableModelCheckpoint,
    ThrottledRichProgressBar,
)
from lit_convnext.callbacks.checkpointing import newest_last_checkpoint, run_version
from lit_convnext.commands import COMMANDS
from lit_convnext.data import ImageFolderDataModule
from lit_convnext.errors import UserError, out_of_memory_message
from lit_convnext.model import ConvNeXtClassifier
from lit_convnext.trainer import ConvNeXtTrainer

#: ``--ckpt_path`` values that Lightning resolves itself instead of reading a file.
SPECIAL_CKPT_PATHS = {"last", "best", "hpc", "registry"}


class OneLineErrorParser(LightningArgumentParser):
    """Reports a bad option as one line naming it (jsonargparse prints the usage and a nested explanation)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        raise UserError(option_error(message))


_BOUNDS = {"Gt": ">", "Ge": ">=", "Lt": "<", "Le": "<=", "MultipleOf": "a multiple of"}


def option_error(message: str) -> str:
    """``--model.lr 0: must be > 0`` from jsonargparse's and pydantic's multi-line message."""
    key = re.search(r'Parser key "([^"]+)"', message)
    nested = re.search(r"--([\w.]+) (\S+): must be (.+?)(?= - |\n|$)", message)  # a nested parser's own line
    if key and nested:  # e.g. a callback's init argument inside --trainer.callbacks
        return f"--{key.group(1)}.{nested.group(1)} {nested.group(2)}: must be {nested.group(3).strip()}"
    value = re.search(r"input_value=('[^']*'|\S+?)[,\]]", message) or re.search(r"Given value: (.+)", message)
    shown = f" {value.group(1).strip(chr(39))}" if value else ""
    bounds = re.findall(r"\b(Gt|Ge|Lt|Le|MultipleOf)\(\w+=([^)]+)\)", message)  # listed for Optional options
    reason = re.search(r"Input should be ([^\[\n]+)", message)
    if key and bounds:
        rule = " and ".join(f"{_BOUNDS[name]} {bound}" for name, bound in bounds)
        optional = " (or null)" if "NoneType" in message else ""
        return f"--{key.group(1)}{shown}: must be {rule}{optional}"
    if key and reason:
        return f"--{key.group(1)}{shown}: must be {reason.group(1).strip()}"
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


class ConvNeXtCLI(LightningCLI):
    """LightningCLI with lit-convnext's links, defaults and checks."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The folder decides the classes: num_classes is never typed by the user.
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.class_counts", "model.class_counts", apply_on="instantiate")
        parser.add_lightning_class_args(ResumableModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc1",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:03d}-acc{val/acc1:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_lightning_class_args(ThrottledRichProgressBar, "progress_bar")
        parser.add_lightning_class_args(PerClassReport, "class_report")
        parser.add_lightning_class_args(DataWaitMonitor, "data_wait")
        parser.add_lightning_class_args(EvaluationReport, "evaluation")

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None:  # run=False: instantiate only (used by the config tests)
            return
        config = self.config[self.subcommand]
        if config.get("model") is not None:  # before the data folder is scanned (class_names link) or weights are read
            check_model_name(config.model.model_name)
        ckpt_path = config.get("ckpt_path")
        if self.subcommand == "fit" and str(ckpt_path) == "last":
            ckpt_path = config.ckpt_path = str(self._resume_into_last_run(config))
        if ckpt_path and str(ckpt_path) not in SPECIAL_CKPT_PATHS:
            path = Path(ckpt_path)
            if not path.is_file():
                raise UserError(f"checkpoint {path} does not exist: pass the path of a .ckpt file with --ckpt_path")
        if ckpt_path:
            # The weights come from the checkpoint: do not download or read the original ones again.
            config.model.pretrained = False
        elif self.subcommand in ("validate", "test", "predict"):
            raise UserError(f"`{self.subcommand}` needs a trained model: pass --ckpt_path CHECKPOINT.ckpt")
        if self.subcommand != "fit":
            self.save_config_callback = None  # only training runs get a run directory with config.yaml
            # Nothing to save; and a restored ModelCheckpoint only warns that its dirpath changed.
            config.trainer.enable_checkpointing = False
        if self.subcommand == "predict":
            config.trainer.logger = False  # predict logs no metrics; it writes the output file only
        precision = str(config.trainer.get("precision"))
        if precision.startswith("bf16") and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            rank_zero_warn(f"This GPU does not support bfloat16: using 16-mixed instead of {precision}.")
            config.trainer.precision = "16-mixed"

    def _resume_into_last_run(self, config) -> Path:
        """Resolve ``--ckpt_path last`` to the newest run's last.ckpt and log into that run again."""
        logger = config.trainer.get("logger")
        init = getattr(logger, "init_args", None)
        if init is None or init.get("save_dir") is None:
            raise UserError("--ckpt_path last needs a logger with a save_dir (runs/...): pass the .ckpt path instead")
        checkpoint = newest_last_checkpoint(Path(init.save_dir), init.get("name") or "")
        init.version = run_version(checkpoint)
        self.save_config_kwargs["overwrite"] = True  # the same run directory: config.yaml records the resume
        rank_zero_info(f"Resuming {checkpoint}")
        return checkpoint

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:  # keep a user's own CheckpointIO plugin
            strategy.checkpoint_io = AtomicCheckpointIO()
        if self.subcommand in ("fit", None):  # None: build_cli(run=False), the caller runs the Trainer
            self.trainer.callbacks.append(FiniteLossGuard())

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # Lightning refuses these callbacks when their feature is switched off: drop our defaults instead.
        if config.get("enable_progress_bar") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except torch.cuda.OutOfMemoryError as err:
            raise UserError(out_of_memory_message(subcommand, self.datamodule.batch_size,
                                                  self.trainer.accumulate_grad_batches)) from err

    def after_fit(self) -> None:
        for callback in self.trainer.callbacks:  # every rank: the best checkpoint is validated distributed
            if isinstance(callback, EvaluationReport):
                callback.analyse_fit(self.trainer, self.model, self.datamodule)
        checkpoint = self.trainer.checkpoint_callback
        if checkpoint is None or not self.trainer.is_global_zero:
            return
        if checkpoint.best_model_path:
            score = checkpoint.best_model_score
            shown = f"{score.item():.4f}" if score is not None else "n/a"
            rank_zero_info(f"Best checkpoint ({checkpoint.monitor} = {shown}): {checkpoint.best_model_path}")
        if checkpoint.last_model_path:
            rank_zero_info(f"Last checkpoint: {checkpoint.last_model_path}")


def build_cli(args: ArgsType = None, run: bool = True) -> ConvNeXtCLI:
    """Parse ``args`` and instantiate model, data and trainer; with ``run`` also execute the subcommand."""
    return ConvNeXtCLI(
        ConvNeXtClassifier,
        ImageFolderDataModule,
        trainer_class=ConvNeXtTrainer,
        parser_class=OneLineErrorParser,
        seed_everything_default=42,
        trainer_defaults={
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "convnext"},
            },
        },
        args=args,
        run=run,
        parser_kwargs={"epilog": "More commands: lit-convnext doctor DATA_ROOT (check a data folder before training); "
                            "lit-convnext export CKPT OUTPUT.safetensors (the weights for plain timm); "
                            "lit-convnext report RUN_DIR (rebuild a run's report.html)."},
    )



def main(args: ArgsType = None) -> None:
    """Entry point of ``lit-convnext`` and ``python -m lit_convnext``; ``args`` allows in-process use."""
    argv = list(sys.argv[1:] if args is None else args) if args is None or isinstance(args, list) else None
    # Lightning 2.6 with torch >= 2.10 warns about torch's own pytree API on every run; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    if argv and argv[0] in COMMANDS:
        _run_command(argv[0], argv[1:])
    try:
        build_cli(args)
    except UserError as err:
        _fail(str(err))
    except pickle.UnpicklingError as err:
        _fail(f"refusing to load a checkpoint that is not plain tensors and values (it would run code "
              f"when unpickled): {str(err).splitlines()[0]}")


def _run_command(name: str, argv: list[str]) -> None:
    """Run a command that needs no Trainer (``doctor``, ``export``) from its function's typed signature."""
    from jsonargparse import auto_cli

    module_name, function_name = COMMANDS[name].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    try:
        result = auto_cli(function, args=argv, prog=f"lit-convnext {name}")
    except UserError as err:
        _fail(str(err))
    raise SystemExit(result if isinstance(result, int) else 0)


def _fail(message: str) -> None:
    # Errors raised inside DataLoader workers arrive wrapped with the worker's traceback: keep our line.
    if "Original Traceback" in message:
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    print(f"lit-convnext: error: {message}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
