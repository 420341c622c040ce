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

from lit_convnext.callbacks.mlflow_artifacts import FILE_STORE_SWITCH
from lit_convnext.cli.entry import MLFLOW_FILE_STORE_SWITCH
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
def test_a_new_users_tracking_uris_run(store: str, image_root: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from lit_convnext.cli.entry import main

    uri = f"file://{tmp_path / 'mlruns'}" if store == "file" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = fit_args(image_root, "--trainer.logger", "MLFlowLogger", "--trainer.logger.init_args.tracking_uri", uri)
    monkeypatch.delenv(FILE_STORE_SWITCH, raising=False)
    if store == "file":
        # In a user's program the library does not change the process's environment: one line says what to set
        # (the `lit-convnext` command sets it for its own process: test_the_command_allows_the_file_store_for_itself).
        line = one_line_error(capsys, args)
        assert f"{FILE_STORE_SWITCH}=true" in line and "sqlite:///mlflow.db" in line
        assert FILE_STORE_SWITCH not in os.environ
        monkeypatch.setenv(FILE_STORE_SWITCH, "true")
    main(args)
    client = mlflow.MlflowClient(uri)
    run = only_run(client)
    files = artifacts(client, run.info.run_id)
    assert "val/acc1" in run.data.metrics and "lr" in run.data.params
    assert {"report.html", "config.yaml", "val_predictions.csv", "val_per_class.csv"} <= files
    assert (Path("runs/version_0/config.yaml")).is_file()  # the run's own directory, as without a logger


def test_the_command_allows_the_file_store_for_itself() -> None:
    """The console entry (no ``args``: the process is the command's) sets MLflow's switch; a call with ``args`` does
    not."""
    probe = ("import os, sys\n"
             "from lit_convnext.cli.entry import main\n"
             "for args in ([\"--help\"], None):\n"
             "    sys.argv = [\"lit-convnext\", \"--help\"]\n"
             "    try:\n"
             "        main(args)\n"
             "    except SystemExit:\n"
             "        print('switch:', os.environ.get(%r))\n" % FILE_STORE_SWITCH)
    env = {key: value for key, value in os.environ.items() if key != FILE_STORE_SWITCH}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    assert [line for line in out.splitlines() if line.startswith("switch:")] == ["switch: None", "switch: true"]
    assert FILE_STORE_SWITCH == MLFLOW_FILE_STORE_SWITCH


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
