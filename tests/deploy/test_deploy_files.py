"""deploy/ stays usable: its files parse, agree with each other and with the code.

Fast and offline (no network, no Docker, no Ray cluster): YAML and JSON parse; the
cluster-launcher config passes Ray's own config validation; every shell command
passes `bash -n`; images are referenced by digest; the image's layers install the
dependencies before the checkout, on one CUDA stack; the Grafana dashboard only
queries metrics that orchestrator/metrics.py records, under the names Ray exports;
the RayJob entrypoints and the SLURM script's dmsweep command parse with the real
CLI. The KubeRay manifests are checked against KubeRay's CRD schemas in
test_kuberay_schemas.py; the SLURM launcher runs on a real SLURM cluster in
test_slurm_launcher.py.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer.main
import yaml

from orchestrator.cli import app
from orchestrator.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
RAYJOBS = [DEPLOY / "kuberay" / "rayjob-sweep.yaml", DEPLOY / "kuberay" / "rayjob-fit.yaml"]
IMAGE_CHECKOUT = "/home/ray/dmsweep"  # where deploy/Dockerfile puts the checkout
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ">", "<", ">>"}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _cli_check(argv: list[str]) -> str:
    """Parse `dmsweep ARGV` with the real CLI (subcommand, options, types); return the subcommand."""
    group = typer.main.get_command(app)
    assert argv, "empty dmsweep command"
    name, args = argv[0], argv[1:]
    assert name in group.commands, f"no dmsweep subcommand {name!r} (have {sorted(group.commands)})"
    group.commands[name].make_context(name, list(args))  # raises on unknown options, bad values, missing args
    return name


def _wait_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_wait_for_gpus", DEPLOY / "wait_for_gpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bash_syntax(command: str, where: str) -> None:
    result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
    assert result.returncode == 0, f"{where}: bash -n: {result.stderr.strip()}\n{command}"


# -- every file parses ------------------------------------------------------------------
def test_deploy_has_its_files() -> None:
    for rel in [
        "Dockerfile", "Dockerfile.dockerignore", "README.md", "ray-cluster.yaml", "wait_for_gpus.py",
        "kuberay/raycluster.yaml", "kuberay/rayjob-sweep.yaml", "kuberay/rayjob-fit.yaml", "kuberay/pvc.yaml",
        "kuberay/storageclass-efs.yaml",
        "slurm/ray-sbatch.sh", "prometheus/prometheus.yml", "grafana/dmsweep-dashboard.json", "sweeps/cifar.yaml",
    ]:
        assert (DEPLOY / rel).is_file(), f"deploy/{rel} is missing"


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = _load_all(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in docs)


def test_grafana_dashboard_is_json() -> None:
    dash = json.loads((DEPLOY / "grafana" / "dmsweep-dashboard.json").read_text())
    assert dash["panels"] and dash["uid"] == "dmsweep"


def test_example_spec_is_a_valid_cluster_spec() -> None:
    spec = load_spec(DEPLOY / "sweeps" / "cifar.yaml", check_recipe=False)  # data_dir exists only on the cluster
    assert Path(spec.store).is_absolute() and spec.store.startswith("/shared/")
    assert spec.resources.num_gpus >= 1


# -- the image ---------------------------------------------------------------------------
def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_one_cuda_stack_matching_ray_and_torch() -> None:
    steps = _dockerfile_instructions()
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    ray_version = importlib.metadata.version("ray")
    # Ray's CPU image: no CUDA toolkit beside the one torch's wheels bring.
    assert re.fullmatch(rf"rayproject/ray:{re.escape(ray_version)}-py3\d+-cpu", args["RAY_IMAGE"]), args["RAY_IMAGE"]
    assert ("FROM", "${RAY_IMAGE}") in steps
    wheel_cuda = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)(\d)", args["TORCH_INDEX_URL"])
    required = re.fullmatch(r'"cuda>=(\d+)\.(\d)"', args["CUDA_REQUIREMENT"])
    assert wheel_cuda and required, (args["TORCH_INDEX_URL"], args["CUDA_REQUIREMENT"])
    assert wheel_cuda.groups() == required.groups(), "the driver requirement must be the wheels' CUDA version"
    env = " ".join(rest for word, rest in steps if word == "ENV")
    assert 'NVIDIA_REQUIRE_CUDA="${CUDA_REQUIREMENT}"' in env and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"driver >= 580", text), "say which NVIDIA driver CUDA 13 needs"


def test_dockerfile_installs_the_dependencies_before_the_checkout() -> None:
    steps = [(word, rest) for word, rest in _dockerfile_instructions() if word in ("COPY", "RUN")]
    copies = [i for i, (word, _) in enumerate(steps) if word == "COPY"]
    torch_step = next(i for i, (word, rest) in enumerate(steps) if word == "RUN" and '"torch>=' in rest)
    checkout = next(i for i in copies if steps[i][1].split()[-2] == ".")
    assert torch_step < copies[0], "torch is installed before anything is copied"
    for i in copies:
        if i != checkout:
            assert steps[i][1].split()[-2] == "pyproject.toml", steps[i]
    requirements = next(i for i, (word, rest) in enumerate(steps) if word == "RUN" and "-r /tmp/requirements.txt" in rest)
    assert torch_step < requirements < checkout
    assert steps[checkout][1] == f"--chown=ray:users . {IMAGE_CHECKOUT}"
    final = steps[checkout + 1][1]
    assert f"pip install --no-cache-dir --no-deps {IMAGE_CHECKOUT}" in final, "the checkout's install must not touch the dependencies"
    ignored = {line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()}
    for needed in ("deploy", "pyproject.toml", "orchestrator", "workers", "regression", "storage", "analysis"):
        assert needed not in ignored, f"the image needs {needed}"


def test_dockerfile_reads_dependencies_as_pyproject_lists_them() -> None:
    """The requirements step's one-liner, run here on this checkout's pyproject.toml."""
    (step,) = [rest for word, rest in _dockerfile_instructions() if word == "RUN" and "tomllib" in rest]
    code = re.search(r'python -c "(.+?)" *>', step).group(1).replace(f"{IMAGE_CHECKOUT}/pyproject.toml", str(REPO / "pyproject.toml"))
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import tomllib

    assert listed.stdout.split() == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


DIGEST = re.compile(r"^[a-z0-9./_-]+(:[\w.-]+)?@sha256:[0-9a-f]{64}$")


LAUNCHERS = sorted(DEPLOY.glob("ray-cluster*.yaml"))  # the shared-volume one and its S3 variant
RAYCLUSTERS = sorted((DEPLOY / "kuberay").glob("raycluster*.yaml"))


def _image_references() -> dict[str, str]:
    """Every container image deploy/ runs, by where it is named."""
    refs = {}
    for path in LAUNCHERS:
        launcher = _load(path)
        refs[f"{path.name} docker.image"] = launcher["docker"]["image"]
        for i, command in enumerate(launcher.get("initialization_commands") or []):
            for word in command.split():
                if re.match(r"^[a-z0-9.-]+/[a-z0-9._-]+[:@]", word) and ("@sha256" in word or ":" in word.split("/")[-1]):
                    refs[f"{path.name} initialization_commands[{i}]"] = word
    for path in RAYCLUSTERS:
        (cluster,) = [doc for doc in _load_all(path) if doc["kind"] == "RayCluster"]
        pods = [cluster["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in cluster["spec"]["workerGroupSpecs"]]
        for pod in pods:
            for container in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
                refs[f"{path.name} {container['name']}"] = container["image"]
    return refs


def test_images_are_referenced_by_digest() -> None:
    refs = _image_references()
    assert len(refs) >= 8, refs  # the dmsweep image in every launcher and pod, Prometheus, Grafana, the AWS CLI
    for where, image in refs.items():
        assert DIGEST.match(image), f"{where}: {image} is not pinned by digest"


def test_one_image_everywhere() -> None:
    launcher = _load(DEPLOY / "ray-cluster.yaml")["docker"]["image"]
    cluster = _load(DEPLOY / "kuberay" / "raycluster.yaml")
    pods = [cluster["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in cluster["spec"]["workerGroupSpecs"]]
    images = {c["image"] for pod in pods for c in pod["spec"]["containers"]}
    assert images == {launcher}


# -- the Ray cluster launcher ------------------------------------------------------------
@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_cluster_launcher_workers_use_an_explicit_ami_and_the_token_directory(path: Path) -> None:
    config = _load(path)
    amis = {name: t["node_config"]["ImageId"] for name, t in config["available_node_types"].items()}
    # resolve:ssm needs ssm:GetParameters, which the autoscaler's default role lacks: scale-ups would fail.
    assert all(ami.startswith("ami-") for ami in amis.values()), amis
    assert len(set(amis.values())) == 1, f"one AMI for every node type (a wrong one then fails at `ray up`): {amis}"
    assert "aws ssm get-parameter" in path.read_text()  # how to find the id
    # The token's directory is mounted, not the file: a file's bind mount never sees a regenerated token.
    mounts = config["file_mounts"]
    assert mounts.get("/home/ray/.ray") == "~/.ray", mounts
    assert not any(target.endswith("auth_token") for target in mounts), mounts


def test_cluster_launcher_config_passes_ray_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(DEPLOY / "ray-cluster.yaml")
    validate_config(prepare_config(copy.deepcopy(config)))  # Ray's schema, with its AWS defaults filled in
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu_types = [t for name, t in types.items() if name != config["head_node_type"]]
    assert gpu_types and all(t["min_workers"] == 0 for t in gpu_types)  # GPU workers scale from zero
    assert any("RAY_AUTH_MODE=token" in option for option in config["docker"]["run_options"])
    assert any(option.endswith("/shared:/shared") for option in config["docker"]["run_options"])


def test_cluster_launcher_commands_are_valid_bash() -> None:
    config = _load(DEPLOY / "ray-cluster.yaml")
    lists = {key: config.get(key) or [] for key in (
        "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
        "head_start_ray_commands", "worker_start_ray_commands")}
    for name, node_type in config["available_node_types"].items():
        lists[f"{name}.initialization_commands"] = node_type.get("initialization_commands") or []
    for key, commands in lists.items():
        for i, command in enumerate(commands):
            _bash_syntax(command, f"ray-cluster.yaml {key}[{i}]")
    # /shared is mounted on the head and on every worker type
    assert any("/shared" in c for c in config["initialization_commands"])
    for name, node_type in config["available_node_types"].items():
        if "initialization_commands" in node_type:
            assert any("/shared" in c for c in node_type["initialization_commands"]), name


def test_cluster_launcher_file_mounts_exist() -> None:
    config = _load(DEPLOY / "ray-cluster.yaml")
    for target, source in config["file_mounts"].items():
        if source.startswith("~"):
            continue  # the user's token, made by `ray get-auth-token --generate`
        assert (REPO / source).exists(), f"file mount {target}: {source} is not in the repository"
    # the head's monitoring containers read the mounted files where Ray puts them on the host
    from ray.autoscaler.sdk import get_docker_host_mount_location

    prefix = get_docker_host_mount_location(config["cluster_name"])
    mounted = [c for c in config["initialization_commands"] if "dmsweep-monitoring" in c]
    assert mounted and all(f"M={prefix}/home/ray/dmsweep-monitoring;" in c for c in mounted)


# -- KubeRay -------------------------------------------------------------------------------
def test_shared_volume_has_its_read_write_many_storage_class() -> None:
    (pvc,) = _load_all(DEPLOY / "kuberay" / "pvc.yaml")
    (storage_class,) = _load_all(DEPLOY / "kuberay" / "storageclass-efs.yaml")
    assert storage_class["apiVersion"] == "storage.k8s.io/v1" and storage_class["kind"] == "StorageClass"
    assert pvc["spec"]["storageClassName"] == storage_class["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert storage_class["provisioner"] == "efs.csi.aws.com"  # a file system: ReadWriteMany
    params = storage_class["parameters"]
    assert params["provisioningMode"] == "efs-ap" and params["fileSystemId"].startswith("fs-")
    assert (params["uid"], params["gid"]) == ("1000", "100")  # the image's ray user writes /shared
    assert all(isinstance(v, str) for v in params.values()), "StorageClass parameters are strings"


def test_raycluster_gpu_workers_and_shared_volume() -> None:
    (cluster,) = _load_all(DEPLOY / "kuberay" / "raycluster.yaml")
    (pvc,) = _load_all(DEPLOY / "kuberay" / "pvc.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert cluster["spec"]["rayVersion"] == importlib.metadata.version("ray")
    assert cluster["spec"]["authOptions"]["mode"] == "token"
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    groups = cluster["spec"]["workerGroupSpecs"]
    gpu = [g for g in groups if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
    assert gpu, "no worker group asks for nvidia.com/gpu"
    assert gpu[0]["minReplicas"] == 0 and gpu[0]["maxReplicas"] >= 1
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    for pod in [cluster["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in groups]:
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
        for container in pod["spec"]["containers"]:
            shared = [m for m in container["volumeMounts"] if m["mountPath"] == "/shared"]
            assert shared and claims.get(shared[0]["name"]) == pvc["metadata"]["name"], container["name"]


@pytest.mark.parametrize("path", RAYJOBS, ids=lambda p: p.name)
def test_rayjob_entrypoint_parses_with_the_cli(path: Path) -> None:
    (job,) = _load_all(path)
    (cluster,) = _load_all(DEPLOY / "kuberay" / "raycluster.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    argv = shlex.split(job["spec"]["entrypoint"])
    # KubeRay pastes the entrypoint unquoted into the submitter's shell command:
    # a shell operator would run part of it in the submitter pod.
    assert not SHELL_OPERATORS & set(argv), f"{path.name}: shell operator in the entrypoint"
    assert argv[:2] == ["python", f"{IMAGE_CHECKOUT}/deploy/wait_for_gpus.py"]
    args = _wait_module().parse_args(argv[2:])
    gpu_group = cluster["spec"]["workerGroupSpecs"][0]
    gpus_per_pod = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert 1 <= args.gpus <= gpu_group["maxReplicas"] * gpus_per_pod
    command = args.command
    assert command[:3] == ["python", "-m", "orchestrator"], command
    assert (REPO / "orchestrator" / "__main__.py").is_file()
    name = _cli_check(command[3:])
    spec = load_spec(DEPLOY / "sweeps" / "cifar.yaml", check_recipe=False)
    if path.name == "rayjob-sweep.yaml":
        assert name == "run" and command[4] == "/shared/sweeps/cifar.yaml"
    else:
        assert name == "fit" and command[4] == spec.store  # the fit reads the sweep's store


def test_podmonitor_selects_the_cluster() -> None:
    (monitor,) = _load_all(DEPLOY / "kuberay" / "podmonitor.yaml")
    (cluster,) = _load_all(DEPLOY / "kuberay" / "raycluster.yaml")
    assert monitor["spec"]["selector"]["matchLabels"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    pods = [cluster["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in cluster["spec"]["workerGroupSpecs"]]
    for pod in pods:
        assert any(p.get("name") == port for c in pod["spec"]["containers"] for p in c.get("ports", []))


# -- SLURM ---------------------------------------------------------------------------------
def _script_commands(path: Path) -> list[list[str]]:
    """Logical lines of a shell script (continuations joined), split like the shell would."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = []
    for line in text.splitlines():
        try:
            lines.append(shlex.split(line, comments=True))
        except ValueError:  # a line of the embedded Python, not shell
            continue
    return [words for words in lines if words]


def test_slurm_script_is_valid_bash() -> None:
    script = DEPLOY / "slurm" / "ray-sbatch.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert script.read_text().startswith("#!/bin/bash\n")
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", "-S", "warning", str(script)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


def _script_defaults(path: Path) -> dict[str, str]:
    """``NAME="${VAR:-default}"`` assignments of a script: the value each name has by default."""
    return dict(re.findall(r'^(\w+)="\$\{\w+:-([^}$]*)\}"$', path.read_text(), re.M))


def test_slurm_script_dmsweep_commands_parse_with_the_cli() -> None:
    script = DEPLOY / "slurm" / "ray-sbatch.sh"
    defaults = _script_defaults(script)
    assert defaults.get("DRAIN_S") == "20"
    commands = [[defaults.get(w.lstrip("$").strip("{}"), w) for w in words if w != "&"]  # run in the background
                for words in _script_commands(script) if words and words[0] == "dmsweep"]
    names = [_cli_check(words[1:]) for words in commands]
    assert "run" in names
    run = commands[names.index("run")]
    assert "--address" in run


def test_slurm_script_starts_head_and_workers_and_stops_only_its_own_ray() -> None:
    lines = _script_commands(DEPLOY / "slurm" / "ray-sbatch.sh")
    srun_ray = [words[words.index("ray"):] for words in lines if words[:1] == ["srun"] and "ray" in words]
    starts = [w for w in srun_ray if w[1] == "start"]
    assert any("--head" in w for w in starts) and any(any(a.startswith("--address=") for a in w) for w in starts)
    assert all(any(a.startswith("--num-gpus=") for a in w) for w in starts)
    assert all(any(a.startswith("--temp-dir=") for a in w) for w in starts), "every node gets the temp dir"
    # `ray stop` kills every Ray process of the user on the node: the steps are signalled instead.
    assert not any(w[1] == "stop" for w in srun_ray)
    assert not any("stop" in words and "ray" in words for words in lines)


def test_slurm_script_requeues_and_appends_its_log() -> None:
    text = (DEPLOY / "slurm" / "ray-sbatch.sh").read_text()
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?$", text, re.M))
    assert "requeue" in sbatch and sbatch["open-mode"] == "append"
    assert re.fullmatch(r"B:USR1@\d+", sbatch["signal"]), sbatch["signal"]  # to the batch shell, before the limit
    assert re.search(r"^trap on_usr1 USR1$", text, re.M) and re.search(r"^trap on_term TERM$", text, re.M)
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "hostname -I" not in code and "NodeAddr" in code  # the head address Slurm itself routes to
    assert "--drain-timeout" in text


# -- monitoring ----------------------------------------------------------------------------
def _recorded_metrics(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """{name given to ray.util.metrics: kind} as orchestrator/metrics.py creates them."""
    import orchestrator.metrics as metrics

    made: dict[str, str] = {}

    def recorder(kind: str) -> type:
        class _Recorder:
            def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
                made[name] = kind

        return _Recorder

    for kind in ("Counter", "Gauge", "Histogram"):
        monkeypatch.setattr(metrics, kind, recorder(kind))
    metrics.SweepMetrics(store="test")
    assert made, "orchestrator/metrics.py created no metric"
    return made


def _exported(name: str, kind: str) -> set[str]:
    """The Prometheus series names Ray 2.60 exports for a metric (verified against a live scrape)."""
    base = f"ray_{name}"
    if kind == "Counter":
        return {f"{base}_total"}
    if kind == "Histogram":
        return {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return {base}


def _dashboard_queries() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "dmsweep-dashboard.json").read_text())
    queries = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if var.get("type") == "query":
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def test_dashboard_queries_only_recorded_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = _recorded_metrics(monkeypatch)
    exported = {series: name for name, kind in recorded.items() for series in _exported(name, kind)}
    used: set[str] = set()
    for query in _dashboard_queries():
        for series in re.findall(r"(?<![A-Za-z0-9_:])[A-Za-z_:][A-Za-z0-9_:]*dmsweep_[A-Za-z0-9_:]*", query):
            assert series in exported, f"dashboard queries {series!r}, which Ray does not export (have {sorted(exported)})"
            used.add(exported[series])
    assert used == set(recorded), f"metrics without a panel: {sorted(set(recorded) - used)}"


def test_dashboard_panels_are_well_formed() -> None:
    dash = json.loads((DEPLOY / "grafana" / "dmsweep-dashboard.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert 'store=~"$store"' in target["expr"], target["expr"]


def test_prometheus_reads_rays_service_discovery_file() -> None:
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    config = _load(DEPLOY / "prometheus" / "prometheus.yml")
    files = [f for job in config["scrape_configs"] for sd in job.get("file_sd_configs", []) for f in sd["files"]]
    assert f"/tmp/ray/{PROMETHEUS_SERVICE_DISCOVERY_FILE}" in files
    promtool = shutil.which("promtool")
    if promtool:
        check = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_grafana_provisioning_points_at_the_mounted_dashboard() -> None:
    provider = _load(DEPLOY / "grafana" / "provisioning" / "dashboards" / "dmsweep.yaml")
    path = provider["providers"][0]["options"]["path"]
    launcher = (DEPLOY / "ray-cluster.yaml").read_text()
    assert f"grafana/dmsweep-dashboard.json:{path}/dmsweep-dashboard.json:ro" in launcher
    datasource = _load(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    assert datasource["datasources"][0]["type"] == "prometheus"


# -- wait_for_gpus.py ----------------------------------------------------------------------
def test_wait_for_gpus_arguments() -> None:
    wait = _wait_module()
    args = wait.parse_args(["--gpus", "8", "--", "python", "-m", "orchestrator", "run", "/shared/x.yaml"])
    assert args.gpus == 8 and args.request and args.command == ["python", "-m", "orchestrator", "run", "/shared/x.yaml"]
    assert wait.parse_args(["--gpus", "0", "--no-request", "--nodes", "3"]).command == []
    for bad in (["--gpus", "-1"], ["--gpus", "1", "--nodes", "0"], [], ["--gpus", "1", "--bogus"]):
        with pytest.raises(SystemExit) as exc:
            wait.parse_args(bad)
        assert exc.value.code == 2
    nodes = [{"Alive": True, "Resources": {"GPU": 4.0}}, {"Alive": False, "Resources": {"GPU": 8.0}},
             {"Alive": True, "Resources": {"CPU": 8.0}}]
    assert wait.cluster_capacity(nodes) == (2, 4.0)


def test_wait_for_gpus_gives_up_on_an_address_no_ray_answers_at(capsys: pytest.CaptureFixture[str]) -> None:
    from chaos_support import free_port

    dead = f"127.0.0.1:{free_port()}"
    assert _wait_module().main(["--gpus", "1", "--address", dead, "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to Ray" in err and "no Ray cluster answers" in err
