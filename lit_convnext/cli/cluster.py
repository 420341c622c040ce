"""Runs over several machines: the launch checked before it can hang, and a lost node named instead of a traceback.

Lightning picks its cluster environment from the variables a launcher sets (``srun``: SLURM's, ``torchrun``:
``TORCHELASTIC_RUN_ID`` and the ranks, Kubeflow's PyTorchJob: ``KUBERNETES_PORT`` with the ranks). Without one of
those it uses the plain variables ``MASTER_ADDR``, ``MASTER_PORT`` and ``NODE_RANK``, and where they are missing it
falls back to 127.0.0.1, a random port and node 0: every node then waits for the others until torch's 30-minute
timeout. :func:`check_launch` refuses that in one line before anything is read or trained.

When a node dies mid-run, gloo and NCCL notice the closed connection in the next collective and the surviving
processes raise a ``RuntimeError`` with a long traceback that does not say which node went. :func:`lost_nodes`
finds out through the run's own rendezvous store: every process still alive leaves its rank there, and the ranks
missing after a few seconds are the lost ones; a store that cannot be reached means the node hosting it is gone.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

from lit_convnext.errors import UserError

#: The variables a run launched by hand over several machines needs on every node (Lightning's
#: ``LightningEnvironment`` reads them).
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK")
#: How long a surviving process waits for the others to check in after a collective failed: long enough for a
#: loaded machine to reach its own exception handler, short enough that the run still ends within a minute.
CHECK_IN_SECONDS = 5.0
#: The store keys of that check-in (beside torch's own keys, under a prefix of their own).
CHECK_IN_KEY = "lit_convnext/alive_after_failure/{rank}"


def check_launch(trainer) -> None:
    """Refuse, in one line, a multi-node launch that would wait forever: ``--trainer.num_nodes`` above 1 without a
    cluster launcher and without the variables, ``NODE_RANK`` without ``MASTER_ADDR``, or a ``NODE_RANK`` outside
    ``--trainer.num_nodes``."""
    from lightning.fabric.plugins.environments import LightningEnvironment

    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is not None and type(environment) is not LightningEnvironment:
        return  # SLURM, torchrun, Kubeflow, LSF or MPI set the ranks and the address themselves
    nodes = trainer.num_nodes
    node_rank = os.environ.get("NODE_RANK")
    if node_rank is not None and "MASTER_ADDR" not in os.environ:
        raise UserError(f"NODE_RANK={node_rank} is set but MASTER_ADDR is not: set MASTER_ADDR to the address of the "
                        "node with NODE_RANK=0 (and the same MASTER_PORT) on every node, or unset NODE_RANK")
    if nodes > 1:
        missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
        if missing:
            raise UserError(f"--trainer.num_nodes {nodes} without a cluster launcher needs {', '.join(missing)} set "
                            f"on every node (MASTER_ADDR and MASTER_PORT of node 0, NODE_RANK 0 to {nodes - 1}), or "
                            "a launcher that sets them: torchrun, srun (see docs/clusters.md)")
    if node_rank is not None and not (node_rank.isdigit() and int(node_rank) < nodes):
        raise UserError(f"NODE_RANK={node_rank} does not fit --trainer.num_nodes {nodes}: give every node the same "
                        f"--trainer.num_nodes (the number of nodes) and NODE_RANK 0 to {nodes - 1}")


def lost_nodes(trainer, wait_s: float = CHECK_IN_SECONDS) -> list[int]:
    """After a failed collective, the nodes whose processes did not check in at the run's rendezvous store within
    ``wait_s`` seconds (every live process calls this, so the ones that answer are alive); ``[]`` when all did.

    A store that cannot be reached means its host is gone: the node of global rank 0 (``MASTER_ADDR``).
    """
    from torch.distributed import TCPStore

    environment = trainer.strategy.cluster_environment
    per_node = max(trainer.world_size // max(trainer.num_nodes, 1), 1)
    deadline = time.monotonic() + wait_s
    try:
        store = TCPStore(environment.main_address, environment.main_port, is_master=False,
                         timeout=timedelta(seconds=wait_s), wait_for_workers=False)
        store.set(CHECK_IN_KEY.format(rank=trainer.global_rank), str(trainer.node_rank))
    except (RuntimeError, OSError):  # torch's DistNetworkError and DistStoreError are RuntimeErrors
        return [0]
    missing = []
    for rank in range(trainer.world_size):
        remaining = max(deadline - time.monotonic(), 0.1)
        try:
            store.wait([CHECK_IN_KEY.format(rank=rank)], timedelta(seconds=remaining))
        except (RuntimeError, OSError):
            missing.append(rank)
    return sorted({rank // per_node for rank in missing})


def lost_node_message(trainer, nodes: list[int], error: BaseException) -> str:
    """One line: which node was lost, what this node saw (torch's first line), what to do."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    named = ", ".join(str(node) for node in nodes)
    return (f"lost node {named} of {trainer.num_nodes} (NODE_RANK {named} did not answer after a collective failed; "
            f"this is node {trainer.node_rank}, global rank {trainer.global_rank}, stopped at step "
            f"{trainer.global_step}): {type(error).__name__}: {first} -- see node {named}'s log, then start every "
            "node again with --ckpt_path last")
