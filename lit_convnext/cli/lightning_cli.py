"""The ``lit-convnext`` command: LightningCLI wired for fine-tuning ConvNeXt on image folders.

This module owns the wiring only: which arguments are linked (the data owns the class names and counts, the
task and the batch size, and they are linked to the model; the model owns the preprocessing, image size included,
which the DataModule reads from it), the callbacks exposed as options and the logger, and turning user mistakes into
one-line errors. What a run does is in the model, the DataModule and the callbacks (the model's
``configure_callbacks`` adds those not given here), so a plain ``Trainer(...).fit(model, datamodule=dm)`` runs the
same program.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import sys
import traceback
import warnings
from pathlib import Path
from typing import NoReturn

import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_convnext.model.backbone import check_model_name, pretrained_off
from lit_convnext.callbacks import CompactProgressBar, DataWaitMonitor, ResumableModelCheckpoint, TimeBudget
from lit_convnext.callbacks.batch_size import AUTO
from lit_convnext.callbacks.mlflow_artifacts import check_file_store, is_file_store
from lit_convnext.callbacks.run import LR_MONITOR_OPTIONS
from lit_convnext.evaluation.class_report import PerClassReport
from lit_convnext.evaluation.end_of_fit import EvaluationReport
from lit_convnext.callbacks.checkpointing import (BEST_BY, newest_last_checkpoint, next_run_dir, run_checkpoint_options,
                                                  run_version)
from lit_convnext.data import ImageFolderDataModule
from lit_convnext.data.labels import data_task
from lit_convnext.cli.cluster import check_launch, lost_node_message, lost_nodes
from lit_convnext.cli.messages import fail, option_error, out_of_memory_message
from lit_convnext.errors import UserError
from lit_convnext.cli.terminal import (LIGHTNING_INFO_LOGGER, RESTORING_LINE, DropLines, hide_library_advice,
                                   log_filter)
from lit_convnext.model.classifier import ConvNeXtClassifier, check_mixup_batch
from lit_convnext.private_api.lightning import CLIHooks, callback_keys, set_callback_keys, subcommand_parser
from lit_convnext.cli.trainer import ConvNeXtTrainer
from lit_convnext.weights.classes import stored_class_names
from lit_convnext.weights.reading import quiet_pickle_protocol

#: ``--ckpt_path`` values that Lightning resolves itself instead of reading a file.
SPECIAL_CKPT_PATHS = {"last", "best", "hpc", "registry"}

#: Where runs are written unless ``--trainer.default_root_dir`` (or a logger's ``save_dir``) says otherwise.
DEFAULT_ROOT_DIR = "runs"

#: The file ``predict`` writes unless ``--output`` names another (``ConvNeXtTrainer.predict`` writes none by default).
DEFAULT_PREDICTIONS = Path("predictions.csv")

#: Default callbacks (their option group) and the Trainer switch that turns their feature off: Lightning
#: refuses a progress bar without ``enable_progress_bar``, a checkpoint callback without ``enable_checkpointing``
#: and an lr monitor without a logger, so each default follows its feature off.
CALLBACK_SWITCHES = {
    "progress_bar": "enable_progress_bar",
    "checkpoint": "enable_checkpointing",
    "lr_monitor": "logger",
}


def known_batch_size(batch_size: int | str) -> int | None:
    """The model's ``batch_size`` from the data's: ``None`` while it is ``auto`` (the model reads the datamodule's
    number when its optimizer is built)."""
    return None if batch_size == AUTO else batch_size


class OneLineErrorParser(LightningArgumentParser):
    """Reports a bad option as one line naming it (jsonargparse prints the usage and a nested explanation)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        raise UserError(option_error(message, ex))


class ConvNeXtCLI(CLIHooks):
    """LightningCLI with lit-convnext's links, defaults and checks.

    ``only_subcommand`` builds the parser of that subcommand alone: each of ``fit``, ``validate``, ``test`` and
    ``predict`` gets a full parser of the Trainer, model, data and callback signatures, about 0.2 s apiece, and a
    command line that starts with one of them never uses the others.
    """

    def __init__(self, *args, only_subcommand: str | None = None, **kwargs) -> None:
        self._only_subcommand = only_subcommand
        with warnings.catch_warnings():  # the filters added while parsing and running end with this CLI's run
            super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:
        every = LightningCLI.subcommands()
        return {self._only_subcommand: every[self._only_subcommand]} if self._only_subcommand in every else every

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The data owns these; each reaches the model by one link, in one direction. The folder decides the
        # classes (num_classes is never typed by the user), the label file (or --data.task) the task.
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.class_counts", "model.class_counts", apply_on="instantiate")
        parser.link_arguments("data.task", "model.task", apply_on="instantiate")
        # `auto` is decided when the fit is set up (AutoBatchSize); the model then reads the datamodule's number.
        parser.link_arguments("data.batch_size", "model.batch_size", compute_fn=known_batch_size, apply_on="parse")
        # The same defaults as the callbacks the model adds to a plain Trainer (configure_callbacks).
        parser.add_lightning_class_args(ResumableModelCheckpoint, "checkpoint")
        parser.set_defaults({f"checkpoint.{key}": value for key, value in run_checkpoint_options().items()})
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({f"lr_monitor.{key}": value for key, value in LR_MONITOR_OPTIONS.items()})
        parser.add_lightning_class_args(CompactProgressBar, "progress_bar")
        parser.add_lightning_class_args(PerClassReport, "class_report")
        parser.add_lightning_class_args(DataWaitMonitor, "data_wait")
        parser.add_lightning_class_args(EvaluationReport, "evaluation")
        parser.add_lightning_class_args(TimeBudget, "time_budget")

    def parse_ckpt_path(self) -> None:
        # An exported model (predict) is no torch checkpoint: its classes and preprocessing are read by
        # ExportedClassifier from the file's metadata instead of being parsed into the model's options.
        from lit_convnext.inference.exported import is_exported

        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if is_exported(ckpt_path):
            if subcommand != "predict":
                raise UserError(f"`{subcommand}` needs a .ckpt checkpoint; an exported {Path(ckpt_path).suffix} "
                                "model can only `predict`")
            return
        with quiet_pickle_protocol():  # a plain pickle is refused with its name (see lit_convnext.cli.entry)
            super().parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None:  # run=False: instantiate only (used by the config tests)
            self._task_of_earlier_runs(self.config)
            self._monitor_follows_task(self.config)
            return
        config = self.config[self.subcommand]
        # Before the data folder is scanned (class_names link) or weights are read:
        if config.get("model") is not None:
            check_model_name(config.model.model_name)
            if self.subcommand == "fit":
                if config.data.batch_size != AUTO:  # auto is found when the fit is set up, and made even then
                    check_mixup_batch(config.data.batch_size, config.model.mixup_alpha, config.model.cutmix_alpha)
            elif config.data.batch_size == AUTO:
                raise UserError(f"--data.batch_size auto searches a training batch, and `{self.subcommand}` does not "
                                "train: pass a number of images per step")
            else:  # the model's batch_size is the training batch; validate, test and predict do not train
                config.model.batch_size = None
        ckpt_path = config.get("ckpt_path")
        resumed = self.subcommand == "fit" and str(ckpt_path) == "last"
        if resumed:
            ckpt_path = config.ckpt_path = str(self._resume_into_last_run(config))
        if ckpt_path and str(ckpt_path) not in SPECIAL_CKPT_PATHS:
            path = Path(ckpt_path)
            if not path.is_file():
                raise UserError(f"checkpoint {path} does not exist: pass the path of a .ckpt file with --ckpt_path")
        self._task_of_earlier_runs(config)
        self._monitor_follows_task(config)
        if ckpt_path:
            # The weights come from the checkpoint: do not download or read the original ones again.
            config.model.pretrained = False
        elif self.subcommand == "predict" or (self.subcommand in ("validate", "test")
                                              and pretrained_off(config.model.pretrained)):
            also = "" if self.subcommand == "predict" else " or --model.pretrained WEIGHTS with a head for the classes"
            raise UserError(f"`{self.subcommand}` needs a trained model: pass --ckpt_path CHECKPOINT.ckpt{also}")
        elif self.subcommand in ("validate", "test") and config.model.pretrained is True:
            # Refused before anything is downloaded: timm's hub weights carry a head for their own classes
            # (ImageNet's), never names for the folder's.
            raise UserError(f"`{self.subcommand}` needs a model trained on the folder's classes, and --model.pretrained "
                            "true means timm's hub weights, whose head is for ImageNet's classes: pass --ckpt_path "
                            "CHECKPOINT.ckpt or --model.pretrained WEIGHTS fine-tuned on these classes")
        if self.subcommand != "fit":
            self.save_config_callback = None  # only training runs get a run directory with config.yaml
            # Nothing to save; and a restored ModelCheckpoint only warns that its dirpath changed.
            config.trainer.enable_checkpointing = False
        if self.subcommand == "predict":
            config.trainer.logger = False  # predict logs no metrics; it writes the output file only
            if config.get("output") is None:
                config.output = DEFAULT_PREDICTIONS
        parser = subcommand_parser(self, self.subcommand)
        if config.trainer.get("barebones"):
            self._follow_barebones(config.trainer, parser)
        self._follow_default_root_dir(config.trainer)
        logger = config.trainer.get("logger")
        if self.subcommand != "predict" and not resumed and not keeps_run_dirs(logger):
            # Without a logger Lightning writes into default_root_dir itself, and with one that keeps no versioned
            # directory (MLflow: a shared store or a server) into the same place for every run, so that a second
            # run would overwrite the first (or stop at its config.yaml): each run gets its own version_N, as a
            # TensorBoard logger's runs do (ConvNeXtTrainer.log_dir), its checkpoints included.
            config.trainer.default_root_dir = str(next_run_dir(Path(config.trainer.default_root_dir)))
            if logger and config.get("checkpoint") is not None and config.checkpoint.get("dirpath") is None:
                config.checkpoint.dirpath = str(Path(config.trainer.default_root_dir) / "checkpoints")
        if str(getattr(logger, "class_path", "")).endswith("MLFlowLogger"):
            self._follow_mlflow_file_store(config, logger.init_args.get("tracking_uri"))
        set_callback_keys(parser, [key for key in callback_keys(parser)
                                   if config.trainer.get(CALLBACK_SWITCHES.get(key, "")) is not False])
        precision = str(config.trainer.get("precision"))
        if precision.startswith("bf16") and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            rank_zero_warn(f"This GPU does not support bfloat16: using 16-mixed instead of {precision}.")
            config.trainer.precision = "16-mixed"

    @staticmethod
    def _task_of_earlier_runs(config) -> None:
        """A checkpoint keeps its task, and so does a config.yaml written before the data owned it: their
        ``model.task`` (a checkpoint's hyperparameters are parsed into the model's options) is otherwise overridden
        by the ``data.task`` link, so a multi-label one becomes the data's task unless ``--data.task`` was given.
        A multi-class one needs nothing: the data is multi-class unless its label file says otherwise, and then the
        model refuses the checkpoint (``ConvNeXtClassifier.on_load_checkpoint``)."""
        data, model = config.get("data"), config.get("model")
        if data is not None and model is not None and model.get("task") == "multilabel" and data.get("task") is None:
            data.task = "multilabel"

    @staticmethod
    def _monitor_follows_task(config) -> None:
        """Multi-label checkpoints are chosen by mean average precision (``val/map``, there is no top-1) unless
        another monitor was given. The task is the data's (:func:`lit_convnext.data.labels.data_task`, which reads a
        label file's header only), the same value the ``data.task`` link gives the model."""
        data, checkpoint = config.get("data"), config.get("checkpoint")
        if data is None or checkpoint is None or checkpoint.monitor != BEST_BY["multiclass"]["monitor"]:
            return
        if data_task(data.get("labels"), data.get("task")) == "multilabel":
            checkpoint.monitor = BEST_BY["multilabel"]["monitor"]
            checkpoint.filename = checkpoint.filename.replace("acc{val/acc1", "map{val/map")

    def _follow_mlflow_file_store(self, config, tracking_uri: str | None) -> None:
        """MLflow 3 refuses its file store unless asked for it: a ``file:`` tracking URI (or none: Lightning's
        default is ``file:<save_dir>``) is the user's request: used with one line where the process allows it
        (:func:`~lit_convnext.callbacks.mlflow_artifacts.check_file_store`), else one line saying how. That store keeps
        each metric as a file, so ``val/f1`` and the per-class ``val/f1/<class>`` cannot both be kept: the per-class
        curves are left out, with one line (the per-class CSVs stay; a sqlite:/// store keeps the curves)."""
        if not is_file_store(tracking_uri):
            return
        check_file_store(tracking_uri)
        report = config.get("class_report")
        if report is not None and report.get("log_per_class"):
            report.log_per_class = False
            rank_zero_info("MLflow's file store keeps a metric as a file, so val/f1 and val/f1/<class> cannot both be "
                           "logged: per-class curves off for this run (the per-class CSVs stay; a sqlite:///mlflow.db "
                           "tracking_uri keeps them)")

    @staticmethod
    def _follow_barebones(trainer, parser: LightningArgumentParser) -> None:
        """Lightning's ``--trainer.barebones true`` times its loop alone: it turns logging, checkpointing, the progress
        bar and the model summary off, and refuses any of them set. The app's defaults for those follow it off, and
        so do its reports and monitors (per-class files, the end-of-fit analysis, the data-wait check), which are
        the kind of work barebones leaves out. A value the user set stays, and Lightning refuses it (one line)."""
        defaults = parser.get_defaults().trainer
        if trainer.get("logger") == defaults.get("logger"):
            trainer.logger = False
        if trainer.get("log_every_n_steps") == defaults.get("log_every_n_steps"):
            trainer.log_every_n_steps = None
        set_callback_keys(parser, [])

    @staticmethod
    def _follow_default_root_dir(trainer) -> None:
        """Write the run where ``--trainer.default_root_dir`` says: the default logger's ``save_dir`` follows it.

        A ``save_dir`` other than the default was chosen by the user and is kept.
        """
        init = getattr(trainer.get("logger"), "init_args", None)
        root = trainer.get("default_root_dir")
        if root is None:
            trainer.default_root_dir = root = DEFAULT_ROOT_DIR
        if init is not None and init.get("save_dir") == DEFAULT_ROOT_DIR:
            init.save_dir = str(root)

    def _resume_into_last_run(self, config) -> Path:
        """Resolve ``--ckpt_path last`` to the newest run's last.ckpt and log into that run again (whose checkpoint
        folder is not empty, by design: Lightning's warning about that is dropped, for this CLI's
        run only: see ``__init__``)."""
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        self._follow_default_root_dir(config.trainer)
        logger = config.trainer.get("logger")
        init = getattr(logger, "init_args", None)
        if not logger:  # no logger: each run is <default_root_dir>/version_N, with checkpoints/ in it
            checkpoint = newest_last_checkpoint(Path(config.trainer.default_root_dir), "")
            config.trainer.default_root_dir = str(checkpoint.parent.parent)
            self.save_config_kwargs["overwrite"] = True  # the same run directory: config.yaml records the resume
            rank_zero_info(f"Resuming {checkpoint}")
            return checkpoint
        if init is None or init.get("save_dir") is None:
            raise UserError("--ckpt_path last needs a logger with a save_dir (runs/...): pass the .ckpt path instead")
        checkpoint = newest_last_checkpoint(Path(init.save_dir), init.get("name") or "")
        init.version = run_version(checkpoint)
        self.save_config_kwargs["overwrite"] = True  # the same run directory: config.yaml records the resume
        rank_zero_info(f"Resuming {checkpoint}")
        return checkpoint

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:  # Lightning refuses a feature set together with barebones, with a traceback
            if "barebones=True" in str(err):
                raise UserError(f"{err} Leave that option out, or --trainer.barebones.") from err
            logger = self.config[self.subcommand].trainer.get("logger") if self.subcommand else None
            cause = logger_failure(err, logger)
            if cause is None:
                raise
            reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            raise UserError(f"--trainer.logger {logger.class_path.rsplit('.', 1)[-1]} could not be built: {reason} "
                            "(check its init_args, or pass --trainer.logger false)") from err
        check_launch(self.trainer)  # before a multi-node launch that would wait for nodes that never come
        if self.subcommand in ("validate", "test") and not self.config[self.subcommand].get("ckpt_path"):
            self._check_head_fits(self.config[self.subcommand].model.pretrained)

    def _check_head_fits(self, pretrained: bool | str) -> None:
        """``validate``/``test`` on ``--model.pretrained`` weights: only a trained head for these classes counts."""
        names = self.model.class_names
        source = str(pretrained)  # a file: hub weights are refused before they are read
        report = self.model.load_report or {}
        head = report.get("head")
        if head == "by_name" and not report.get("classes_added"):
            return  # the same classes in another order: the rows were put in the folder's order by name
        if head != "kept":
            reason = (self.model.load_report or {}).get("head_reason", "no head was loaded")
            raise UserError(f"--model.pretrained {source} has no head for the {len(names)} classes of the folder "
                            f"({reason}), so `{self.subcommand}` would measure a new, untrained head: pass weights "
                            "fine-tuned on these classes, or a --ckpt_path")
        stored = stored_class_names(pretrained)
        if stored != names:
            found = (f"its classes are {stored}" if stored else
                     "it carries no class names (a checkpoint of this app or an export with its .json sidecar does)")
            raise UserError(f"--model.pretrained {source}: {found}, the folder's are {names}; "
                            f"`{self.subcommand}` needs the same classes in the same order")

    def run_subcommand(self, subcommand: str) -> None:
        try:
            super().run_subcommand(subcommand)
        except torch.cuda.OutOfMemoryError as err:
            raise UserError(out_of_memory_message(subcommand, self.datamodule.batch_size,
                                                  self.trainer.accumulate_grad_batches)) from err
        except RuntimeError as err:  # a collective that failed because a node died: name it instead of a traceback
            nodes = lost_nodes(self.trainer) if self.trainer.num_nodes > 1 else []
            if not nodes:
                raise
            raise UserError(lost_node_message(self.trainer, nodes, err)) from err


def keeps_run_dirs(logger) -> bool:
    """Whether a ``--trainer.logger`` value gives each run a versioned directory of its own (TensorBoard, CSV)."""
    if not logger:
        return False
    class_paths = [getattr(one, "class_path", "") for one in (logger if isinstance(logger, list) else [logger])]
    return str(class_paths[0]).rsplit(".", 1)[-1] in ("TensorBoardLogger", "CSVLogger") if class_paths else False


def logger_failure(error: BaseException, logger) -> BaseException | None:
    """The exception a ``--trainer.logger`` class raised while it was built, when it is behind ``error`` (jsonargparse
    reports it as a Union that did not validate), found by the frames of the file that defines the logger class."""
    class_path = str(getattr(logger, "class_path", ""))
    module_name, _, class_name = class_path.rpartition(".")
    try:
        source = inspect.getfile(getattr(importlib.import_module(module_name), class_name))
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    cause = error.__cause__ or error.__context__
    while cause is not None:
        if any(frame.filename == source for frame in traceback.extract_tb(cause.__traceback__)):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def build_cli(args: ArgsType = None, run: bool = True, callbacks: list[Callback] | None = None) -> ConvNeXtCLI:
    """Parse ``args`` and instantiate model, data and trainer; with ``run`` also execute the subcommand.

    ``callbacks`` join the Trainer's whatever the configuration says (LightningCLI's persistent callbacks): ``tune``
    gives each trial its pruning callback this way.
    """
    argv = sys.argv[1:] if args is None else args
    return ConvNeXtCLI(
        ConvNeXtClassifier,
        ImageFolderDataModule,
        trainer_class=ConvNeXtTrainer,
        parser_class=OneLineErrorParser,
        seed_everything_default=42,
        trainer_defaults={
            # configs/finetune.yaml's trainer values (the model's and data's signature defaults are its values too), so
            # `fit --data.root DIR` without a config runs that recipe instead of Lightning's 1000 epochs.
            "max_epochs": 30,
            "log_every_n_steps": 10,
            "default_root_dir": DEFAULT_ROOT_DIR,
            **({"callbacks": list(callbacks)} if callbacks else {}),
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": DEFAULT_ROOT_DIR, "name": "convnext"},
            },
        },
        args=args,
        run=run,
        only_subcommand=argv[0] if isinstance(argv, list) and argv and isinstance(argv[0], str) else None,
        parser_kwargs={"epilog": "More commands: lit-convnext doctor DATA_ROOT (check a data folder before training); "
                            "lit-convnext export CKPT OUTPUT.safetensors|OUTPUT.onnx (the weights for plain timm, or an ONNX "
                            "model); lit-convnext serve --ckpt_path CKPT (an HTTP endpoint); "
                            "lit-convnext report RUN_DIR (rebuild a run's report.html)."},
    )



#: Lines Lightning logs on every run that are not about the user's run: its advertisement for a cloud logger, and
#: its note that it loads the training data early to count the steps (the app's "Effective batch" line that follows
#: gives the count, the warm-up and the learning rate).
LIGHTNING_NOISE = ("litlogger", "Loading `train_dataloader` to estimate number of stepping batches")
#: What validate, test and predict also leave out: the "restoring states" line (the next one says which weights load).
EVALUATION_NOISE = (RESTORING_LINE,)


def run_lightning_command(args: list[str] | None) -> None:
    """Run ``fit``, ``validate``, ``test`` or ``predict`` from ``args`` (without the program name; ``None``: the
    process's own command line), its user mistakes ending as one line; called by the console entry
    (:func:`lit_convnext.cli.entry.main`)."""
    try:
        lightning_command(args)
    except UserError as err:
        fail(str(err))
    except pickle.UnpicklingError as err:
        fail(f"refusing to load a checkpoint that is not plain tensors and values (it would run code "
             f"when unpickled): {str(err).splitlines()[0]}")


def lightning_command(args: list[str] | None, callbacks: list[Callback] | None = None) -> ConvNeXtCLI:
    """Run a Lightning subcommand as :func:`run_lightning_command` does, with the same lines left out of the
    terminal, but raising its ``UserError`` (``tune`` records a trial that raised one as failed and goes on);
    ``callbacks`` as in :func:`build_cli`."""
    argv = sys.argv[1:] if args is None else args
    evaluating = bool(argv) and argv[0] in ("validate", "test", "predict")
    noise = (*LIGHTNING_NOISE, *(EVALUATION_NOISE if evaluating else ()))
    with warnings.catch_warnings(), log_filter(LIGHTNING_INFO_LOGGER, DropLines(*noise)):
        hide_library_advice(evaluating)
        # None: LightningCLI reads sys.argv itself (args and sys.argv both set would warn)
        return build_cli(args, callbacks=callbacks)
