"""The long-lived Ray actor that trains block after block on one GPU (or CPU slot).

An actor, not plain tasks: Ray starts a fresh process per GPU task by default
(``max_calls=1``), paying the torch import and the dataset load every block.
"""

from __future__ import annotations

import os
from pathlib import Path

import ray

from workers.block_runner import BlockReceipt, BlockRunner

__all__ = ["SweepWorker"]


@ray.remote
class SweepWorker:
    """Builds the store's recipe once, then trains blocks as the driver sends them."""

    def __init__(self, store_path: str, num_cpus: float) -> None:
        import torch

        # One torch thread per CPU the actor was given: actors share the node.
        torch.set_num_threads(max(1, int(num_cpus)))
        context = ray.get_runtime_context()
        self._node_ip = ray.util.get_node_ip_address()
        self._node_id = context.get_node_id()
        self._runner = BlockRunner(Path(store_path), node=self._node_ip)

    def ready(self) -> dict[str, object]:
        """Where this actor runs; answering means setup (the dataset load) is done."""
        return {"node_ip": self._node_ip, "node_id": self._node_id, "pid": os.getpid(), "device": self._runner.device}

    def train(self, block_id: int) -> BlockReceipt:
        return self._runner.run(block_id)
