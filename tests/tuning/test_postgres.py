"""Two ``tune`` processes at once on one PostgreSQL study: both processes' trials end in it.

The server's URL comes from ``LIT_CONVNEXT_TEST_POSTGRES`` (``.ci/run`` starts Debian's PostgreSQL and sets it).
Without it the test skips, saying so; under CI (``CI`` set) it fails instead, so a CI run cannot pass without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import FAST, REPO

URL_VARIABLE = "LIT_CONVNEXT_TEST_POSTGRES"


def postgres_url() -> str:
    url = os.environ.get(URL_VARIABLE)
    if not url:
        reason = f"no PostgreSQL server: set {URL_VARIABLE}=postgresql://USER:PASSWORD@HOST/DB (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return url


@pytest.mark.slow  # two search processes of two trials each (~1 min)
def test_two_processes_share_one_study_on_postgresql(image_root: Path) -> None:
    optuna = pytest.importorskip("optuna", reason="the `tune` extra (optuna) is not installed")
    url = postgres_url()
    name = f"shared-{uuid.uuid4().hex[:8]}"
    args = [sys.executable, "-m", "lit_convnext", "tune", "--data.root", str(image_root), "--trainer.max_epochs",
            "1", *FAST, "--evaluation.enabled", "false", "--tune.storage", url, "--tune.study_name", name,
            "--tune.trials", "4"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [process.communicate(timeout=500) for process in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name=name, storage=url)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL")]
    assert len(finished) >= 4
    assert {t.user_attrs["process"] for t in finished} == {f"{os.uname().nodename}:{p.pid}" for p in processes}
    optuna.delete_study(study_name=name, storage=url)
