"""Runs tracked in MLflow (``--trainer.logger MLFlowLogger``): a file store and a SQLite store as a new user would
give them, a real ``mlflow server`` with a SQLite backend (a fit with ``log_model``, then a search whose trials are
nested runs of the study's run), and a logger that cannot be built (one line)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import FAST, fit_args, one_line_error

mlflow = pytest.importorskip("mlflow", reason="the `mlflow` extra is not installed")


def artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact path of a run, folders walked."""
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def only_run(client, experiment: str = "lightning_logs"):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


@pytest.mark.slow  # two one-epoch fits (~20 s)
@pytest.mark.parametrize("store", ["file", "sqlite"])
def test_a_new_users_tracking_uris_run(store: str, image_root: Path, tmp_path: Path) -> None:
    from lit_convnext.cli.entry import main

    uri = f"file://{tmp_path / 'mlruns'}" if store == "file" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    main(fit_args(image_root, "--trainer.logger", "MLFlowLogger", "--trainer.logger.init_args.tracking_uri", uri))
    client = mlflow.MlflowClient(uri) if store == "sqlite" else None
    if client is None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
            client = mlflow.MlflowClient(uri)
            run = only_run(client)
            files = artifacts(client, run.info.run_id)
    else:
        run = only_run(client)
        files = artifacts(client, run.info.run_id)
    assert "val/acc1" in run.data.metrics and "lr" in run.data.params
    assert {"report.html", "config.yaml", "val_predictions.csv", "val_per_class.csv"} <= files
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # allowed for the run only
    assert (Path("runs/version_0/config.yaml")).is_file()  # the run's own directory, as without a logger


@pytest.mark.slow  # builds the model and data before the logger (~3 s)
def test_a_logger_that_cannot_be_built_is_one_line(capsys: pytest.CaptureFixture[str], image_root: Path) -> None:
    line = one_line_error(capsys, fit_args(image_root, "--trainer.logger", "MLFlowLogger",
                                           "--trainer.logger.init_args.tracking_uri", "nosuch://x"))
    assert "--trainer.logger MLFlowLogger could not be built" in line


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 with a SQLite backend and proxied artifacts, stopped at the end."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server_artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own process group: its workers end with it
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:  # a busy machine: the workers' graceful shutdown can take longer
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)


@pytest.mark.slow  # an MLflow server, a fit and a two-trial search (~1 min)
def test_tracking_server_gets_artifacts_checkpoints_and_nested_trials(mlflow_server: str, image_root: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from lit_convnext.cli.entry import main

    logger = ["--trainer.logger", "MLFlowLogger", "--trainer.logger.init_args.tracking_uri", mlflow_server,
              "--trainer.logger.init_args.log_model", "true"]
    main(fit_args(image_root, *logger))
    client = mlflow.MlflowClient(mlflow_server)
    run = only_run(client)
    files = artifacts(client, run.info.run_id)
    assert {"report.html", "config.yaml", "val_predictions.csv"} <= files
    assert any(name.endswith(".ckpt") and "best-" in name for name in files), files  # log_model: the best checkpoint
    assert run.data.metrics["val/acc1"] >= 0 and run.data.params["lr"]

    with pytest.raises(SystemExit) as ended:
        main(["tune", "--data.root", str(image_root), "--trainer.max_epochs", "1", *FAST, *logger,
              "--trainer.logger.init_args.experiment_name", "search", "--tune.trials", "2"])
    assert ended.value.code == 0, capsys.readouterr().err
    experiment = client.get_experiment_by_name("search").experiment_id
    runs = client.search_runs([experiment])
    parent = [r for r in runs if r.data.tags.get("lit_convnext.study") == "study"]
    assert len(parent) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(children) == 2 and all("val/acc1" in r.data.metrics for r in children)
    assert {"trials.csv", "best.yaml", "tune_report.html"} <= artifacts(client, parent[0].info.run_id)
    assert "report.html" in artifacts(client, children[0].info.run_id)
