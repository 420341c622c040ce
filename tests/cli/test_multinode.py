"""Two nodes of one process each on 127.0.0.1, launched the way cluster launchers do (CPU, gloo).

Each node is a ``python -m lit_convnext fit`` (or ``torchrun``) process of its own, in a process group of its own,
with its own working directory; every one is killed in a ``finally`` and waited for with a timeout, so a deadlock
fails the test instead of hanging CI.

What "trains as one process" can honestly mean: with augmentation and stochastic depth off and one global batch per
epoch (6 images per node, 12 in the folder), both nodes' gradients averaged by DDP equal the gradient of one process
over the same 12 images up to float rounding, so the final weights and every validation probability match a
single-process run with ``--data.batch_size 12`` to within 1e-7 (measured: 4e-9; a step moves weights by ~2e-5). With shuffling and augmentation on,
each rank draws its own images and random crops, so the runs differ as any two seeds do.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, TINY_MODEL, make_folder

#: Every launched process's limit: a run here takes 20-40 s on two busy cores.
PROCESS_TIMEOUT = 150
#: Deterministic full-batch training: see the module docstring.
EXACT = ["--model.model_name", TINY_MODEL, "--model.pretrained", "false", "--model.image_size", "32",
         "--model.drop_path_rate", "0", "--data.augmentation.enabled", "false", "--data.num_workers", "0",
         "--progress_bar.refresh_rate", "0", "--trainer.accelerator", "cpu", "--trainer.max_steps", "2"]
TWO_NODES = ["--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp",
             "--data.batch_size", "6"]
LIT = [sys.executable, "-m", "lit_convnext"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def images(root: Path) -> Path:
    make_folder(root / "train", 4)  # 12 images: one global batch of 6 per node
    make_folder(root / "val", 3, seed=500)  # 9: 5 + 4 per node, each image counted once
    return root


def node_env(cache: Path, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TORCHELASTIC_", "MASTER_", "NODE_RANK", "KUBERNETES_"))}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "LIT_CONVNEXT_CACHE_DIR": str(cache),
            **variables}


class Nodes:
    """The launched node processes: each in its own session (so its DDP children die with it), output in a file."""

    def __init__(self) -> None:
        self.processes: list[tuple[subprocess.Popen, Path]] = []

    def start(self, command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
        cwd.mkdir(parents=True, exist_ok=True)
        log = cwd.parent / f"{cwd.name}.log"
        with log.open("w") as handle:
            process = subprocess.Popen(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.processes.append((process, log))
        return process

    def wait(self, timeout: float = PROCESS_TIMEOUT) -> list[str]:
        """Every node's output, after asserting each exited 0 within ``timeout``."""
        deadline = time.monotonic() + timeout
        for process, log in self.processes:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
        for process, log in self.processes:
            assert process.returncode == 0, log.read_text()[-4000:]
        return [log.read_text() for _, log in self.processes]

    def kill_all(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


@pytest.fixture
def nodes():
    launched = Nodes()
    try:
        yield launched
    finally:
        launched.kill_all()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reference: the same data and recipe in one process with the global batch of 12."""
    base = tmp_path_factory.mktemp("one_process")
    root = images(base / "images")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        patch.setenv("LIT_CONVNEXT_CACHE_DIR", str(base / "cache"))
        from lit_convnext.cli.entry import main

        main(["fit", "--data.root", str(root), *EXACT, "--data.batch_size", "12", "--trainer.devices", "1"])
    return {"root": root, "run": base / "runs" / "convnext" / "version_0"}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def probabilities(run: Path) -> list[tuple[str, str, float]]:
    with (run / "val_predictions.csv").open() as handle:
        return [(Path(row["path"]).relative_to(Path(row["path"]).parents[2]).as_posix(), row["predicted"],
                 float(row["confidence"])) for row in csv.DictReader(handle)]


def assert_same_training(run: Path, reference: Path) -> None:
    ours, theirs = weights(run), weights(reference)
    assert ours.keys() == theirs.keys()
    worst = max((ours[k].float() - theirs[k].float()).abs().max().item() for k in ours)
    # Float rounding of two half-batch means vs one mean (measured: 4e-9); each AdamW step moves a weight ~2e-5.
    assert worst < 1e-7, worst
    mine, single = probabilities(run), probabilities(reference)
    assert [(p, c) for p, c, _ in mine] == [(p, c) for p, c, _ in single]  # every image once, same order and class
    assert [x for _, _, x in mine] == pytest.approx([x for _, _, x in single], abs=2e-6)


def run_files(base: Path) -> list[str]:
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())


@pytest.mark.slow
def test_two_nodes_launched_with_the_variables_train_as_one_process_and_write_once(
        tmp_path: Path, nodes: Nodes, one_process: dict[str, Path]) -> None:
    """MASTER_ADDR, MASTER_PORT, NODE_RANK and --trainer.num_nodes 2, both nodes writing to one shared root."""
    root = images(tmp_path / "images")
    shared = tmp_path / "shared"
    port = str(free_port())
    for rank in (0, 1):
        nodes.start([*LIT, "fit", "--data.root", str(root), *EXACT, *TWO_NODES,
                     "--trainer.default_root_dir", str(shared)], tmp_path / f"node{rank}",
                    node_env(tmp_path / f"cache{rank}", MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                             NODE_RANK=str(rank)))
    out0, out1 = nodes.wait()

    run = shared / "convnext" / "version_0"
    assert_same_training(run, one_process["run"])
    assert "Effective batch 12 (6 per device x 2 device(s) x 1 accumulation)" in out0
    # One run directory, written by global rank 0 only: its checkpoints and report once, nothing from node 1.
    assert [p.name for p in (shared / "convnext").iterdir()] == ["version_0"]
    saved = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(saved) == 2 and saved[0].startswith("best-") and saved[1] == "last.ckpt", saved
    assert (run / "report.html").is_file() and (run / "config.yaml").is_file()
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert run_files(tmp_path / "node0") == run_files(tmp_path / "node1") == []
    assert "Report:" in out0 and "Report:" not in out1 and "Best checkpoint" not in out1


@pytest.mark.slow
def test_torchrun_two_nodes_on_separate_file_systems_train_as_one_process(
        tmp_path: Path, nodes: Nodes, one_process: dict[str, Path]) -> None:
    """``torchrun --nnodes 2`` per node, each node with its own copy of the data, its own cache and its own working
    directory (``runs/`` relative to it): node 0 holds the whole run, node 1 writes nothing."""
    port = str(free_port())
    for rank in (0, 1):
        node = tmp_path / f"node{rank}"
        root = images(node / "images") if rank == 0 else shutil.copytree(tmp_path / "node0" / "images",
                                                                          node / "images")
        nodes.start([*TORCHRUN, "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", port,
                     "-m", "lit_convnext", "fit", "--data.root", str(root), *EXACT, *TWO_NODES],
                    node / "work", node_env(node / "cache"))
    nodes.wait()

    run = tmp_path / "node0" / "work" / "runs" / "convnext" / "version_0"
    assert_same_training(run, one_process["run"])
    assert (run / "report.html").is_file() and len(list((run / "checkpoints").glob("best-*.ckpt"))) == 1
    assert run_files(tmp_path / "node1" / "work") == []


def wait_for_line(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0])
def test_a_killed_node_is_named_by_the_other_within_a_minute(tmp_path: Path, nodes: Nodes, killed: int) -> None:
    """SIGKILL one node mid-training: the survivor's next collective fails (gloo sees the closed socket), it finds
    which node did not answer and exits with one line naming it, instead of a traceback or a hang."""
    root = images(tmp_path / "images")
    port = str(free_port())
    launched = [nodes.start([*LIT, "fit", "--data.root", str(root), *EXACT, *TWO_NODES, "--trainer.max_steps", "100000",
                             "--trainer.max_epochs", "100000", "--evaluation.enabled", "false"],
                            tmp_path / f"node{rank}", node_env(tmp_path / f"cache{rank}", MASTER_ADDR="127.0.0.1",
                                                               MASTER_PORT=port, NODE_RANK=str(rank)))
                for rank in (0, 1)]
    wait_for_line(tmp_path / "node0.log", "Effective batch", PROCESS_TIMEOUT)  # training starts next
    time.sleep(3)
    os.killpg(launched[killed].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    survivor = launched[1 - killed]
    survivor.wait(timeout=PROCESS_TIMEOUT)
    took = time.monotonic() - killed_at
    print(f"node {1 - killed} exited {took:.1f} s after node {killed} was killed")  # shown with pytest -s
    out = (tmp_path / f"node{1 - killed}.log").read_text()
    assert took < 60, (took, out[-3000:])
    assert survivor.returncode == 2, out[-3000:]
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("lit-convnext: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"lit-convnext: error: lost node {killed} of 2 "), out[-3000:]
    assert f"this is node {1 - killed}, global rank {1 - killed}" in errors[0]


#: docs/clusters.md's SLURM options: Lightning's SLURM environment with auto-requeue on SIGUSR1.
SLURM_REQUEUE = ["--trainer.plugins", "lightning.pytorch.plugins.environments.SLURMEnvironment",
                 "--trainer.plugins.auto_requeue", "true", "--trainer.plugins.requeue_signal", "SIGUSR1"]


def slurm_variables(rank: int, port: int) -> dict[str, str]:
    """What ``srun`` sets for task ``rank`` of a two-node job with one task per node (both nodes are 127.0.0.1)."""
    return {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1",
            "SLURM_NNODES": "2", "SLURM_NODELIST": "127.0.0.1", "SLURM_PROCID": str(rank), "SLURM_NODEID": str(rank),
            "SLURM_LOCALID": "0", "MASTER_PORT": str(port)}


@pytest.fixture
def clean_launch_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_", "MASTER_", "KUBERNETES_"))]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("NODE_RANK", raising=False)
    # A Trainer made here for rank 1 sets Lightning's process-wide rank_zero_only.rank to 1: put it back after the
    # test, or every later test's rank_zero_info lines and CSV logs would be silenced as a rank 1's are.
    from lightning.fabric.utilities import rank_zero as fabric_rank_zero
    from lightning.pytorch.utilities import rank_zero as pytorch_rank_zero
    from lightning_utilities.core import rank_zero as utilities_rank_zero

    for module in (fabric_rank_zero, pytorch_rank_zero, utilities_rank_zero):
        monkeypatch.setattr(module.rank_zero_only, "rank", getattr(module.rank_zero_only, "rank", 0))
    return monkeypatch


@pytest.mark.parametrize("rank", [0, 1])
def test_the_slurm_variables_give_lightning_the_ranks_and_pass_the_launch_check(
        clean_launch_env: pytest.MonkeyPatch, rank: int) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from lit_convnext.cli.cluster import check_launch

    for name, value in slurm_variables(rank, 29876).items():
        clean_launch_env.setenv(name, value)
    trainer = pl.Trainer(accelerator="cpu", devices=1, num_nodes=2, strategy="ddp", logger=False)
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    assert (trainer.global_rank, trainer.node_rank, trainer.local_rank, trainer.world_size) == (rank, rank, 0, 2)
    assert (environment.main_address, environment.main_port) == ("127.0.0.1", 29876)
    check_launch(trainer)  # srun set the ranks: no MASTER_ADDR or NODE_RANK needed


@pytest.mark.parametrize(("variables", "options", "expected"), [
    ({}, ["--trainer.num_nodes", "2"],
     "--trainer.num_nodes 2 without a cluster launcher needs MASTER_ADDR, MASTER_PORT, NODE_RANK set on every node"),
    ({"MASTER_ADDR": "127.0.0.1", "NODE_RANK": "0"}, ["--trainer.num_nodes", "2"],
     "--trainer.num_nodes 2 without a cluster launcher needs MASTER_PORT set on every node"),
    ({"NODE_RANK": "1"}, ["--trainer.num_nodes", "2"], "NODE_RANK=1 is set but MASTER_ADDR is not"),
    ({"NODE_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, [],
     "NODE_RANK=1 does not fit --trainer.num_nodes 1"),
])
def test_a_multinode_launch_that_would_wait_forever_is_refused_before_training(
        image_root: Path, clean_launch_env: pytest.MonkeyPatch, variables: dict[str, str], options: list[str],
        expected: str) -> None:
    """Without them Lightning takes 127.0.0.1, a random port and node 0, and waits 30 minutes for the other nodes.
    ``run=False``: the check is at instantiation, so a regression fails here instead of hanging."""
    from lit_convnext.cli.lightning_cli import build_cli
    from lit_convnext.errors import UserError

    for name, value in variables.items():
        clean_launch_env.setenv(name, value)
    with pytest.raises(UserError) as error:
        build_cli(["--data.root", str(image_root), *EXACT, "--trainer.strategy", "ddp", *options], run=False)
    assert str(error.value).startswith(expected), error.value
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_two_nodes_under_simulated_slurm_train_as_one_process(
        tmp_path: Path, nodes: Nodes, one_process: dict[str, Path]) -> None:
    """Two tasks with the variables ``srun`` sets (no MASTER_ADDR, no NODE_RANK) and docs/clusters.md's
    auto-requeue plugin: Lightning's SLURM environment takes the ranks and the address from them."""
    root = images(tmp_path / "images")
    port = free_port()
    for rank in (0, 1):
        nodes.start([*LIT, "fit", "--data.root", str(root), *EXACT, *TWO_NODES, *SLURM_REQUEUE,
                     "--trainer.default_root_dir", str(tmp_path / "shared")], tmp_path / f"node{rank}",
                    node_env(tmp_path / f"cache{rank}", **slurm_variables(rank, port)))
    out0, _ = nodes.wait()
    assert "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in out0
    assert_same_training(tmp_path / "shared" / "convnext" / "version_0", one_process["run"])


def test_the_pytorchjob_manifest_gives_each_pod_its_rank(
        image_root: Path, tmp_path: Path, clean_launch_env: pytest.MonkeyPatch) -> None:
    """docs/pytorchjob.yaml's command line, in the Worker pod (the variables the training operator sets there):
    Lightning's KubeflowEnvironment (which it does not detect by itself) takes its rank from them."""
    import yaml
    from lightning.pytorch.plugins.environments import KubeflowEnvironment

    from lit_convnext.cli.lightning_cli import build_cli

    job = yaml.safe_load((REPO / "docs" / "pytorchjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    pods = sum(spec["replicas"] for spec in replicas.values())
    command = replicas["Worker"]["template"]["spec"]["containers"][0]["command"]
    assert command == replicas["Master"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["lit-convnext", "fit"] and command[command.index("--trainer.num_nodes") + 1] == str(pods)
    config = tmp_path / "run.yaml"  # the manifest's /shared/run.yaml: the base recipe
    config.write_text((REPO / "configs" / "finetune.yaml").read_text())
    shared = {"/shared/run.yaml": str(config), "/shared/images": str(image_root), "/shared/runs": str(tmp_path)}
    for name, value in {"KUBERNETES_PORT": "tcp://10.96.0.1:443", "MASTER_ADDR": "convnext-finetune-master-0",
                        "MASTER_PORT": "23456", "WORLD_SIZE": "2", "RANK": "1"}.items():
        clean_launch_env.setenv(name, value)
    cli = build_cli([shared.get(value, value) for value in command[2:]] + EXACT, run=False)
    trainer = cli.trainer
    assert isinstance(trainer.strategy.cluster_environment, KubeflowEnvironment)
    assert (trainer.global_rank, trainer.node_rank, trainer.world_size) == (1, 1, 2)
