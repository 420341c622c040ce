"""The search: an Optuna study whose trials are ordinary ``fit`` runs of the app's own command line.

Each trial is ``lit-convnext fit`` with the user's options, the trial's values of the space and its own run
directory (``<root>/tune/<study>/trial_NNN``), run in this process through :func:`lightning_command` with
optuna-integration's ``PyTorchLightningPruningCallback``, which reports the monitored metric after every validation
and stops the trial when the pruner (Hyperband by default) says so. Its score is the run's best checkpoint's. A trial
that ends on the app's one-line error (a non-finite loss, an unreadable batch) is recorded as failed and the search
goes on. The study lives at a storage URL (SQLite in the study's directory by default; PostgreSQL or MySQL across
machines), so several processes share it and a killed search continues where it was.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from lit_convnext.callbacks.checkpointing import BEST_BY
from lit_convnext.callbacks.time_budget import BudgetTooShort
from lit_convnext.data.labels import data_task
from lit_convnext.errors import UserError
from lit_convnext.tuning import space as spaces

#: The states of the trials a budget of ``--tune.trials`` counts (a killed process's trial stays RUNNING until
#: its heartbeat is stale, then becomes FAIL).
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
#: Seconds between a running trial's heartbeats, and the silence after which another process marks it failed.
HEARTBEAT_S, GRACE_S = 30, 120


def parse_duration(value: str | None) -> float | None:
    """``--tune.max_time``: seconds, or ``DD:HH:MM:SS`` as Lightning's ``--trainer.max_time`` takes it."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        if ":" not in text:
            seconds = float(text)
        else:
            parts = [float(part) for part in text.split(":")]
            if len(parts) > 4:
                raise ValueError
            seconds = sum(part * unit for part, unit in zip(reversed(parts), (1, 60, 3600, 86400)))
    except ValueError:
        raise UserError(f"--tune.max_time {value}: write seconds (600) or DD:HH:MM:SS (00:01:30:00)") from None
    if seconds <= 0:
        raise UserError(f"--tune.max_time {value}: the search's budget must be more than 0 seconds")
    return seconds


def resolved_config(fit_args: list[str]) -> dict[str, Any]:
    """The whole ``fit`` configuration that ``fit_args`` give (LightningCLI's ``--print_config``): parsed and
    checked, nothing instantiated, no file read but the configs."""
    from lit_convnext.cli.lightning_cli import build_cli

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ARGS_WARNING)
        build_cli(["fit", *fit_args, "--print_config"])
    return yaml.safe_load(printed.getvalue())


def hidden_password(url: str) -> str:
    """A storage URL as it may be printed: ``postgresql://user:***@host/db``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str) -> Any:
    """Optuna's RDB storage at ``url``, connected now: an unreachable server, a missing driver or a bad URL is one
    line before any training."""
    import optuna
    import sqlalchemy.exc

    shown = hidden_password(url)
    try:
        for attempt in range(3):
            try:
                with warnings.catch_warnings():
                    # heartbeats (experimental in Optuna): a killed process's trial is failed, and the search resumes
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                                      engine_kwargs={"pool_pre_ping": True})
            except sqlalchemy.exc.IntegrityError:
                # Processes started together on a new database: another one is creating Optuna's tables.
                if attempt == 2:
                    raise
                time.sleep(1.0 + attempt)
    except ImportError as err:
        missing = getattr(err.__cause__, "name", None) or err
        raise UserError(f"--tune.storage {shown}: its database driver is not installed ({missing}): "
                        "pip install 'lit-convnext[tune]'") from err
    except sqlalchemy.exc.ArgumentError as err:
        raise UserError(f"--tune.storage {shown}: not a database URL ({err}); write sqlite:///PATH/study.db or "
                        "postgresql://USER:PASSWORD@HOST/DB") from err
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise UserError(f"--tune.storage {shown}: cannot open the study's database ({reason}); start the "
                        "database server or correct the URL") from err


def build_pruner(name: str, max_epochs: int) -> Any:
    """Multi-fidelity pruning by epoch: Hyperband (brackets of successive halving), one successive halving, or
    none."""
    import optuna

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_epochs), reduction_factor=3)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


#: The loggers of Optuna's per-trial lines (a failed trial's with its traceback) and of its notes on a study.
OPTUNA_LOGGERS = ("optuna.study.study", "optuna.study._optimize", "optuna.storages._rdb.storage")
#: LightningCLI warns when it is given ``args`` while ``sys.argv`` holds a command line: here that command line is
#: ``tune``'s, and each trial's ``fit`` is given its own arguments on purpose.
ARGS_WARNING = "LightningCLI's args parameter is intended"


@contextlib.contextmanager
def optuna_lines() -> Iterator[None]:
    """Optuna's per-trial log lines are replaced by the search's own one line per trial, for this search only."""
    from lit_convnext.cli.terminal import DropLines, log_filter

    drop = DropLines("Trial ", "A new study created", "Using an existing study")
    with contextlib.ExitStack() as stack, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ARGS_WARNING)
        for name in OPTUNA_LOGGERS:
            stack.enter_context(log_filter(name, drop))
        yield


def checked_space(fit_args: list[str], config: Mapping[str, Any], user_space: str | None) -> dict[str, dict]:
    """The default space around ``config``'s recipe with ``--tune.space``'s entries, every name an option of
    ``fit`` and every bound a value that option takes (parsed as a trial's would be), before any training."""
    space = spaces.merge_space(spaces.default_space(config), spaces.read_space(user_space))
    missing = spaces.missing_options(space, config)
    if missing:
        raise UserError(f"--tune.space names {', '.join(missing)}, which is no option of `fit`: use dotted names "
                        "such as model.lr (see lit-convnext fit --help)")
    ends = [{name: spec["low"] for name, spec in space.items() if "low" in spec},
            {name: spec["high"] for name, spec in space.items() if "high" in spec}]
    longest = max((len(spec["choices"]) for spec in space.values() if "choices" in spec), default=0)
    for i in range(longest):
        ends.append({name: spec["choices"][i] for name, spec in space.items()
                     if "choices" in spec and i < len(spec["choices"])})
    for values in ends:
        if values:
            try:
                resolved_config([*fit_args, *spaces.as_arguments(values)])
            except UserError as err:
                raise UserError(f"--tune.space: a trial would stop on {err}") from err
    return space


def monitored(config: Mapping[str, Any]) -> tuple[str, str]:
    """The metric a trial is scored and pruned by, and its direction: the run's checkpoint monitor, which follows
    the task as in ``fit`` (``val/map`` for multi-label)."""
    checkpoint = config.get("checkpoint") or {}
    monitor = checkpoint.get("monitor") or BEST_BY["multiclass"]["monitor"]
    data = config.get("data") or {}
    if monitor == BEST_BY["multiclass"]["monitor"] and data_task(data.get("labels"), data.get("task")) == "multilabel":
        monitor = BEST_BY["multilabel"]["monitor"]
    return monitor, "maximize" if checkpoint.get("mode", "max") == "max" else "minimize"


def finished_trials(study: Any) -> list[Any]:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED]


class Search:
    """One process's part of a study: runs trials until the study has ``trials`` finished ones or ``max_time``
    seconds have passed in this process.

    Args:
        fit_args: The ``fit`` options every trial starts from (configs, ``--data.*``, ``--model.*``, ...).
        trials: How many finished trials (complete, pruned or failed) the study should have, across every process
            and every resume; ``None``: no count, the time budget alone.
        max_time: This process's budget in seconds; a trial gets what is left as its ``--trainer.max_time``.
        study_name: The study's name in the storage: the same name and storage continue it.
        storage: Optuna's RDB URL; ``None``: ``sqlite:///<root>/study.db``.
        space: ``--tune.space`` (a YAML file or an inline mapping) over the default space.
        pruner: ``hyperband``, ``halving`` (successive halving) or ``none``.
        seed: The sampler's seed (each trial's own training seed is the configuration's ``seed_everything``).
    """

    def __init__(self, fit_args: list[str], trials: int | None, max_time: float | None, study_name: str,
                 storage: str | None, space: str | None, pruner: Literal["hyperband", "halving", "none"],
                 seed: int) -> None:
        import optuna

        if trials is None and max_time is None:
            raise UserError("tune needs a budget: --tune.trials N, --tune.max_time DD:HH:MM:SS, or both")
        self.fit_args = list(fit_args)
        self.config = resolved_config(self.fit_args)
        trainer = self.config["trainer"]
        self.root = Path(trainer.get("default_root_dir") or "runs") / "tune" / study_name
        self.trials, self.max_time = trials, max_time
        self.space = checked_space(self.fit_args, self.config, space)
        self.monitor, direction = monitored(self.config)
        self.storage_url = storage or f"sqlite:///{(self.root / 'study.db').as_posix()}"
        if storage is None:
            self.root.mkdir(parents=True, exist_ok=True)
        self.study_name = study_name
        storage_ = open_storage(self.storage_url)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, (trials or 20) // 3)))
        with optuna_lines():
            try:
                self.study = optuna.create_study(storage=storage_, study_name=study_name, direction=direction,
                                                 sampler=sampler, load_if_exists=True,
                                                 pruner=build_pruner(pruner, trainer.get("max_epochs") or 1))
            except ValueError as err:  # an existing study of the other direction
                raise UserError(f"--tune.study_name {study_name}: {err}; choose another study name") from err
        self._check_budget()
        if not self.study.get_trials(deepcopy=False):
            # The first trial runs the recipe as it is: the search starts from it and the report compares with it.
            self.study.enqueue_trial(spaces.starting_values(self.space, self.config), user_attrs={"recipe": True},
                                     skip_if_exists=True)
        self.study.set_user_attr("fit_args", self.fit_args)
        self.study.set_user_attr("monitor", self.monitor)
        self.mlflow = MlflowParent.of(self.config, study_name, self.study)
        #: Set when the first trial's budget could not hold one epoch: the search ends with this line.
        self.too_short: UserError | None = None

    def _check_budget(self) -> None:
        """A time budget shorter than one epoch of the study's earlier trials would only start a trial to stop it.
        (A new study has no epoch to compare with: its first trial times its first steps, and a budget that cannot
        hold the epoch they predict ends the search in one line, :class:`BudgetTooShort`.)"""
        if self.max_time is None:
            return
        epochs = [t.user_attrs["epoch_seconds"] for t in self.study.get_trials(deepcopy=False)
                  if "epoch_seconds" in t.user_attrs]
        if epochs:
            epoch = sorted(epochs)[len(epochs) // 2]
            if self.max_time < epoch:
                raise UserError(f"--tune.max_time {self.max_time:.0f} s is shorter than one epoch of this study's "
                                f"trials ({epoch:.0f} s): give at least {2 * epoch:.0f} s, or fewer images or epochs")

    def remaining(self) -> int | None:
        if self.trials is None:
            return None
        return max(0, self.trials - len(finished_trials(self.study)))

    def run(self) -> None:
        """Run this process's trials; Ctrl-C or a kill leaves the study as it is, to be continued."""
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        remaining = self.remaining()
        if remaining == 0:
            print(f"Study {self.study_name} has its {self.trials} trials already: writing its results")
            return
        self.started = time.monotonic()
        stop = [MaxTrialsCallback(self.trials, states=tuple(TrialState[s] for s in FINISHED))] if self.trials else []
        with optuna_lines(), self.mlflow:
            self.study.optimize(self.objective, n_trials=remaining, timeout=self.max_time, callbacks=stop,
                                catch=(UserError,), gc_after_trial=True)
        if self.too_short is not None:
            raise self.too_short

    def completed_before(self, trial: Any) -> bool:
        """Whether a trial other than ``trial`` trained at least one whole epoch in this study."""
        return any(t.number != trial.number and t.intermediate_values for t in self.study.get_trials(deepcopy=False))

    def objective(self, trial: Any) -> float:
        import optuna
        from lit_convnext.cli.lightning_cli import lightning_command

        values = spaces.suggest(trial, self.space)
        run_root = self.root / f"trial_{trial.number:03d}"
        trial.set_user_attr("run_root", str(run_root))
        trial.set_user_attr("process", f"{socket.gethostname()}:{os.getpid()}")  # which machine and process ran it
        args = ["fit", *self.fit_args, *spaces.as_arguments(values), "--trainer.default_root_dir", str(run_root),
                *self._logger_args(trial, run_root), *self._time_args()]
        started = time.monotonic()
        try:
            cli = lightning_command(args, callbacks=[pruning_callback(trial, self.monitor)])
        except BudgetTooShort as err:
            # What is left of the budget holds no epoch, and no later trial has more: the search ends. The study
            # keeps the measured epoch, for a resume's check.
            trial.set_user_attr("epoch_seconds", err.epoch)
            trial.set_user_attr("error", str(err))
            self.study.stop()
            if self.completed_before(trial):
                print(f"Trial {trial.number} stopped: the {err.budget:.0f} s left of the search's budget hold no "
                      f"epoch ({err.epoch:.0f} s); the search ends")
            elif self.max_time is not None and self.config["trainer"].get("max_time") is None:
                self.too_short = BudgetTooShort(self.max_time, err.epoch, err.steps, "--tune.max_time")
            else:  # the user's own --trainer.max_time
                self.too_short = err
            raise
        except UserError as err:
            trial.set_user_attr("error", str(err))
            print(f"Trial {trial.number} failed: {err}")
            raise
        except optuna.TrialPruned as pruned:
            print(f"Trial {trial.number}: {pruned}")
            raise
        trainer = cli.trainer
        epochs = max(1, trainer.current_epoch)
        trial.set_user_attr("epoch_seconds", (time.monotonic() - started) / epochs)
        trial.set_user_attr("run_dir", str(trainer.log_dir))
        score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
        if score is None:
            raise UserError(f"trial {trial.number} ended without a validated {self.monitor} (no best checkpoint)")
        print(f"Trial {trial.number}: {self.monitor} {float(score):.4f} ({run_root})")
        return float(score)

    def _time_args(self) -> list[str]:
        """What is left of this process's budget bounds the trial (Lightning stops it, validated, at that time)."""
        if self.max_time is None:
            return []
        left = max(1, int(self.max_time - (time.monotonic() - self.started)))
        own = self.config["trainer"].get("max_time")
        if own is not None:
            return []  # the user's own per-run limit stays; optimize's timeout still ends the search
        return ["--trainer.max_time", f"{left // 86400:02d}:{left % 86400 // 3600:02d}:{left % 3600 // 60:02d}:"
                                      f"{left % 60:02d}"]

    def _logger_args(self, trial: Any, run_root: Path) -> list[str]:
        """The trial's logger writes into its own run directory; an MLflow trial is a nested run of the study's."""
        logger = self.config["trainer"].get("logger")
        if not isinstance(logger, dict):
            return []
        init = logger.get("init_args") or {}
        args = []
        if init.get("save_dir") is not None and init.get("save_dir") == self.config["trainer"].get("default_root_dir"):
            args += ["--trainer.logger.init_args.save_dir", str(run_root)]
        if self.mlflow.run_id:
            tags = {**(init.get("tags") or {}), "mlflow.parentRunId": self.mlflow.run_id}
            args += ["--trainer.logger.init_args.run_name", f"{self.study_name}-trial_{trial.number:03d}",
                     "--trainer.logger.init_args.tags", yaml.safe_dump(tags, default_flow_style=True).strip()]
        return args


def pruning_callback(trial: Any, monitor: str) -> Any:
    """optuna-integration's ``PyTorchLightningPruningCallback`` (it works with Lightning 2.6's ``lightning.pytorch``),
    except at the last epoch: the trial has then trained in full, and pruning it would only throw its score away
    (Hyperband's rungs fall on the last epoch when the epochs are few: 1, 3, 9, ...)."""
    from optuna_integration import PyTorchLightningPruningCallback

    class LastEpochKept(PyTorchLightningPruningCallback):
        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            last = trainer.max_epochs is not None and pl_module.current_epoch >= trainer.max_epochs - 1
            if last and not trainer.sanity_checking and not self.is_ddp_backend:
                score = trainer.callback_metrics.get(self.monitor)
                if score is not None:
                    trial.report(score.item(), step=pl_module.current_epoch)
                return
            super().on_validation_end(trainer, pl_module)

    return LastEpochKept(trial, monitor)


class MlflowParent:
    """The study's own MLflow run, the parent of its trials' runs (one per study: a resume reuses it), when the
    trials log to MLflow (``--trainer.logger MLFlowLogger``)."""

    def __init__(self, client: Any = None, run_id: str | None = None) -> None:
        self.client, self.run_id = client, run_id

    @classmethod
    def of(cls, config: Mapping[str, Any], study_name: str, study: Any) -> MlflowParent:
        logger = config["trainer"].get("logger")
        if not isinstance(logger, dict) or not str(logger.get("class_path", "")).endswith("MLFlowLogger"):
            return cls()
        from lit_convnext.callbacks.mlflow_artifacts import mlflow_client

        init = logger.get("init_args") or {}
        client, experiment_id = mlflow_client(init.get("tracking_uri"), init.get("experiment_name") or "lightning_logs")
        run_id = study.user_attrs.get("mlflow_run_id")
        if run_id is None:
            run_id = client.create_run(experiment_id, run_name=study_name, tags={"lit_convnext.study": study_name}).info.run_id
            study.set_user_attr("mlflow_run_id", run_id)
        else:
            client.update_run(run_id, status="RUNNING")
        return cls(client, run_id)

    def __enter__(self) -> MlflowParent:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, status="KILLED" if exc[0] is KeyboardInterrupt else "FINISHED")

    def log_results(self, best_value: float | None, monitor: str, files: list[Path]) -> None:
        if self.client is None:
            return
        if best_value is not None:
            self.client.log_metric(self.run_id, f"best_{monitor.replace('/', '_')}", best_value)
        for path in files:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
