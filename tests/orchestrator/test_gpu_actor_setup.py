"""A worker given a GPU whose torch cannot see CUDA refuses at setup, in one line (it never trains on the CPU unnoticed).

A one-node ``ray.cluster_utils.Cluster`` with a fake GPU (``num_gpus=1`` on a
machine without CUDA) runs in a subprocess, as in test_cluster.py. A spec that
asks for the GPU with a recipe that trains is refused with the worker's line;
the same node runs a ``noop`` sweep (a recipe that computes nothing) as before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = r'''
import json, sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from orchestrator.api import run_sweep
from orchestrator.run_options import DriverOptions
from orchestrator.spec import parse_spec
from storage.errors import DmsweepError

tmp = Path(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1, "include_dashboard": False})
ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
out = {}

def spec(name, recipe):
    return parse_spec({"store": str(tmp / name), "alpha": 0.5, "num_models": 4, "block": 2, "seed": 1,
                       "recipe": recipe, "resources": {"num_cpus": 1, "num_gpus": 1}, "retries": 0,
                       "timeout_s": 120})

try:
    try:
        run_sweep(spec("digits.zarr", {"name": "digits-mlp", "params": {"epochs": 1, "hidden": 4, "n_train": 60}}),
                  progress=False, options=DriverOptions(max_actor_start_failures=2, actor_start_timeout_s=120))
        out["refused"] = None
    except DmsweepError as exc:
        out["refused"] = str(exc)
    noop = run_sweep(spec("noop.zarr", {"name": "noop", "params": {"n_train": 20, "n_test": 5}}), progress=False)
    out["noop_done"] = noop.done
finally:
    ray.shutdown()
    cluster.shutdown()
print("RESULT " + json.dumps(out))
'''


@pytest.mark.slow
def test_gpu_worker_without_cuda_refuses_in_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine whose torch cannot see CUDA")
    script = tmp_path / "fake_gpu_sweep.py"
    script.write_text(_SCRIPT)
    tests = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    out = json.loads(lines[-1][len("RESULT "):])
    refused = out["refused"]
    assert refused is not None, "the sweep trained on a GPU worker whose torch cannot see CUDA"
    assert "\n" not in refused
    assert "worker actors fail in their setup" in refused
    assert "was given GPU" in refused and "cannot use CUDA" in refused and "resources.num_gpus: 0" in refused
    assert out["noop_done"]  # a recipe that computes nothing still runs on the fake GPU
