"""MLflow runs: the run's files as artifacts (:class:`MlflowArtifacts`), and the check that MLflow's file store is
allowed where a run asks for it (:func:`check_file_store`).

Lightning's ``MLFlowLogger`` logs the metrics, the hyper-parameters and, with ``log_model``, the checkpoints; the files
the app writes into the run directory (``report.html``, ``config.yaml``, the per-image and per-class CSVs, exports)
reach the MLflow run here, once the fit has ended and the report is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lit_convnext.errors import UserError
from lit_convnext.private_api.lightning import mlflow_log_model

#: MLflow 3 refuses its file store (``file:`` tracking URIs, and Lightning's default ``file:<save_dir>``) unless
#: this variable says the user wants it; the store still works (maintenance mode, no new features).
FILE_STORE_SWITCH = "MLFLOW_ALLOW_FILE_STORE"
#: The files of a run directory that become artifacts: the report, the configuration, the per-image and
#: per-class tables; with ``log_model`` also the exported weights (Lightning's logger uploads the checkpoints).
RUN_FILES = ("report.html", "config.yaml", "*.csv")
EXPORT_FILES = ("*.safetensors", "*.onnx", "*.json")


def is_file_store(tracking_uri: str | None) -> bool:
    """Whether MLflow would keep the runs in a local folder (Lightning's default when no URI is given)."""
    return not tracking_uri or tracking_uri.startswith(("file:", "/", "."))


def check_file_store(tracking_uri: str | None) -> None:
    """One line when ``tracking_uri`` names MLflow's file store: that it is used (the ``lit-convnext`` command allows
    it for its own process, :func:`lit_convnext.cli.entry.main`), or, in a process that has not allowed it (a
    user's program), what to set; the library never changes the process's environment itself."""
    if not is_file_store(tracking_uri):
        return
    store = tracking_uri or "file:<save_dir>"
    if not os.environ.get(FILE_STORE_SWITCH):
        raise UserError(f"MLflow 3 keeps runs in its file store ({store}) only when {FILE_STORE_SWITCH}=true is set: "
                        f"set it in the environment, or pass --trainer.logger.init_args.tracking_uri "
                        "sqlite:///mlflow.db (MLflow's recommended store)")
    rank_zero_info(f"MLflow's file store ({store}) is in maintenance mode in MLflow 3: used for this run "
                   f"({FILE_STORE_SWITCH}=true); sqlite:///mlflow.db is MLflow's recommended store")


def mlflow_client(tracking_uri: str | None, experiment_name: str, save_dir: str = "runs") -> tuple[Any, str]:
    """An ``MlflowClient`` for ``tracking_uri`` (Lightning's default when None) and the id of ``experiment_name``,
    created if it does not exist: the ``tune`` command's parent run lives there."""
    from mlflow.tracking import MlflowClient

    check_file_store(tracking_uri)
    client = MlflowClient(tracking_uri or f"file:{save_dir}")
    experiment = client.get_experiment_by_name(experiment_name)
    return client, experiment.experiment_id if experiment else client.create_experiment(experiment_name)


class MlflowArtifacts(Callback):
    """Uploads the run directory's report, configuration and tables to the ``MLFlowLogger``'s run when the fit
    ends (and the exported weights when the logger's ``log_model`` is on). Added by the model's
    ``configure_callbacks`` whenever the Trainer logs to MLflow."""

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # teardown: after every on_fit_end (the report is written there), before the loggers finalize the run.
        if stage != "fit" or not trainer.is_global_zero or trainer.interrupted:
            return
        from lightning.pytorch.loggers import MLFlowLogger

        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        for logger in trainer.loggers:
            if not isinstance(logger, MLFlowLogger) or logger.run_id is None:
                continue
            patterns = RUN_FILES + (EXPORT_FILES if mlflow_log_model(logger) else ())
            files = sorted({path for pattern in patterns for path in run_dir.glob(pattern) if path.is_file()})
            for path in files:
                logger.experiment.log_artifact(logger.run_id, str(path))
