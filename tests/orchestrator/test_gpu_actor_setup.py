"""A worker given a GPU whose torch cannot see CUDA refuses at setup, in one line (it never trains on the CPU unnoticed).

A one-node ``ray.cluster_utils.Cluster`` with a fake GPU (``num_gpus=1`` on a
machine without CUDA) runs in a subprocess, as in test_cluster.py. A spec that
asks for the GPU with a recipe that trains is refused with the worker's line;
the same node runs a ``noop`` sweep (a recipe that computes nothing) as before.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from subprocess_script import run_result_script

_SCRIPT = r'''
import sys
from pathlib import Path

from subprocess_script import local_cluster, report

from orchestrator.api import run_sweep
from orchestrator.run_options import DriverOptions
from orchestrator.spec import parse_spec
from storage.errors import DmsweepError

tmp = Path(sys.argv[1])


def spec(name, recipe):
    return parse_spec({"store": str(tmp / name), "alpha": 0.5, "num_models": 4, "block": 2, "seed": 1,
                       "recipe": recipe, "resources": {"num_cpus": 1, "num_gpus": 1}, "retries": 0,
                       "timeout_s": 120})


out = {"refused": None}
with local_cluster(num_cpus=1, num_gpus=1):  # a fake GPU: this machine's torch sees no CUDA
    digits = {"name": "digits-mlp", "params": {"epochs": 1, "hidden": 4, "n_train": 60}}
    try:
        run_sweep(spec("digits.zarr", digits), progress=False,
                  options=DriverOptions(max_actor_start_failures=2, actor_start_timeout_s=120))
    except DmsweepError as exc:
        out["refused"] = str(exc)
    noop = {"name": "noop", "params": {"n_train": 20, "n_test": 5}}
    out["noop_done"] = run_sweep(spec("noop.zarr", noop), progress=False).done
report(out)
'''


@pytest.mark.slow
def test_gpu_worker_without_cuda_refuses_in_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine whose torch cannot see CUDA")
    out = run_result_script(_SCRIPT, tmp_path)
    refused = out["refused"]
    assert refused is not None, "the sweep trained on a GPU worker whose torch cannot see CUDA"
    assert "\n" not in refused
    assert "worker actors fail in their setup" in refused
    assert "was given GPU" in refused and "cannot use CUDA" in refused and "resources.num_gpus: 0" in refused
    assert out["noop_done"]  # a recipe that computes nothing still runs on the fake GPU
