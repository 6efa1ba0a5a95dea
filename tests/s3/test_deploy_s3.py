"""The S3 alternatives in deploy/ agree with each other and with the code (offline: no cloud, no cluster)."""

from __future__ import annotations

import copy
import fnmatch
import json
import shlex
import subprocess
from pathlib import Path

import typer.main
import yaml

from orchestrator.cli import app
from orchestrator.spec import load_spec
from storage.location import STATE_SUFFIX, S3Location, store_location

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SPEC = DEPLOY / "sweeps" / "cifar-s3.yaml"


def _documents(path: Path) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text()) if doc}


def _parses_with_the_cli(argv: list[str]) -> str:
    group = typer.main.get_command(app)
    group.commands[argv[0]].make_context(argv[0], list(argv[1:]))  # raises on unknown options or bad values
    return argv[0]


def test_the_s3_spec_is_valid_and_the_configmap_holds_it() -> None:
    spec = load_spec(SPEC, check_recipe=False)
    assert isinstance(store_location(spec.store), S3Location)
    config_map = _documents(DEPLOY / "kuberay" / "raycluster-s3.yaml")["ConfigMap"]
    assert yaml.safe_load(config_map["data"]["cifar-s3.yaml"]) == yaml.safe_load(SPEC.read_text())


def test_rayjobs_run_and_fit_the_s3_store_on_the_s3_cluster() -> None:
    cluster = _documents(DEPLOY / "kuberay" / "raycluster-s3.yaml")
    name = cluster["RayCluster"]["metadata"]["name"]
    head = cluster["RayCluster"]["spec"]["headGroupSpec"]["template"]["spec"]
    mount = next(m["mountPath"] for m in head["containers"][0]["volumeMounts"] if m["name"] == "sweeps")
    store = load_spec(SPEC, check_recipe=False).store
    for job_file, command in [("rayjob-sweep-s3.yaml", "run"), ("rayjob-fit-s3.yaml", "fit")]:
        job = _documents(DEPLOY / "kuberay" / job_file)["RayJob"]
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": name}
        argv = shlex.split(job["spec"]["entrypoint"])
        dmsweep = argv[argv.index("--") + 1:]
        assert dmsweep[:3] == ["python", "-m", "orchestrator"]
        assert _parses_with_the_cli(dmsweep[3:]) == command
        assert dmsweep[4] == (f"{mount}/cifar-s3.yaml" if command == "run" else store)
    pods = [head, *(g["template"]["spec"] for g in cluster["RayCluster"]["spec"]["workerGroupSpecs"])]
    for pod in pods:  # every pod has the S3 identity and the data, no shared volume
        assert pod["serviceAccountName"] == cluster["ServiceAccount"]["metadata"]["name"]
        assert "persistentVolumeClaim" not in json.dumps(pod["volumes"])
        assert pod["initContainers"][0]["args"][:2] == ["s3", "sync"]


def test_the_s3_cluster_launcher_config_is_valid() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "ray-cluster-s3.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert all(t["node_config"]["IamInstanceProfile"] for t in config["available_node_types"].values())
    assert config["file_mounts"]["/home/ray/sweeps"] == "deploy/sweeps"  # the spec reaches every node
    for command in config["initialization_commands"] + config["head_start_ray_commands"]:
        subprocess.run(["bash", "-n", "-c", command], check=True)


def test_the_iam_policy_allows_what_a_store_needs() -> None:
    policy = json.loads((DEPLOY / "aws" / "iam-s3-policy.json").read_text())
    location = store_location(load_spec(SPEC, check_recipe=False).store)
    assert isinstance(location, S3Location)
    objects = [f"arn:aws:s3:::{location.bucket}/{location.prefix}/masks/c/0/0",
               f"arn:aws:s3:::{location.bucket}/{location.prefix}{STATE_SUFFIX}/lease.json"]

    def allowed(action: str, resource: str) -> bool:
        return any(action in s["Action"] and fnmatch.fnmatch(resource, s["Resource"]) for s in policy["Statement"])

    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert all(allowed(action, arn) for arn in objects), action
    assert allowed("s3:ListBucket", f"arn:aws:s3:::{location.bucket}")
    assert allowed("s3:GetObject", f"arn:aws:s3:::{location.bucket}/data/cifar10/cifar-10-batches-py/data_batch_1")
