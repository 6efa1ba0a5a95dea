"""The long-lived Ray actor that trains block after block on one GPU (or CPU slot).

An actor, not plain tasks: Ray starts a fresh process per GPU task by default
(``max_calls=1``), paying the torch import and the dataset load every block.
"""

from __future__ import annotations

import os
import sys

import ray

from workers.block_runner import BlockReceipt, BlockRunner

__all__ = ["SweepWorker"]


@ray.remote
class SweepWorker:
    """Builds the store's recipe once (its dataset loaded once), then trains blocks as the driver sends them.

    Parameters
    ----------
    store_path : the sweep's store: a path this node mounts, or an ``s3://`` URI.
    num_cpus : the CPUs Ray reserved for this actor (sets the thread count).
    """

    def __init__(self, store_path: str, num_cpus: float) -> None:
        threads = max(1, int(num_cpus))
        # One math thread per CPU the actor was given (actors share the node).
        # Set before the recipe imports torch, which reads it once at import.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        context = ray.get_runtime_context()
        self._node_ip = ray.util.get_node_ip_address()
        self._node_id = context.get_node_id()
        # An actor without a GPU of its own trains on the CPU even on a GPU node;
        # with one, the runner takes CUDA when it is usable.
        device = None if ray.get_gpu_ids() else "cpu"
        self._runner = BlockRunner(store_path, device=device, node=self._node_ip)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)

    def ready(self) -> dict[str, object]:
        """Where this actor runs; answering means setup (the dataset load) is done."""
        return {"node_ip": self._node_ip, "node_id": self._node_id, "pid": os.getpid(), "device": self._runner.device}

    def train(self, block_id: int) -> BlockReceipt:
        """Train and write one block; the receipt goes back to the driver, never the data."""
        return self._runner.run(block_id)
