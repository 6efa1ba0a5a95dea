"""deploy/kuberay/ against the CRD schemas of a pinned KubeRay release, so that a misplaced field fails.

The schemas are the ``openAPIV3Schema`` of KubeRay v1.6.2's RayCluster and
RayJob CRDs, kept as test data (tests/deploy/data/kuberay-v1.6.2/README.md).
Kubernetes prunes or, with ``kubectl apply --validate=strict`` (the default
since 1.27), refuses fields a schema does not declare; JSON Schema allows them
unless told otherwise, so every object schema that declares its properties
gets ``additionalProperties: false`` here (unless it keeps unknown fields on
purpose, ``x-kubernetes-preserve-unknown-fields``). The rest of the schema
(types, enums, required fields, the whole embedded pod template) is
Kubernetes's own, validated with the ``jsonschema`` package.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

KUBERAY_VERSION = "v1.6.2"
CRDS = Path(__file__).resolve().parent / "data" / f"kuberay-{KUBERAY_VERSION}"
KUBERAY = Path(__file__).resolve().parents[2] / "deploy" / "kuberay"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are megabytes of YAML


def _strict(node: Any) -> Any:
    """The schema with undeclared fields refused, as the API server refuses them."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=None)
def _validator(kind: str) -> jsonschema.protocols.Validator:
    for path in CRDS.glob("ray.io_*.yaml"):
        crd = yaml.load(path.read_text(), Loader=_LOADER)
        if crd["spec"]["names"]["kind"] != kind:
            continue
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = _strict(version["schema"]["openAPIV3Schema"])
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
        return cls(schema)
    raise AssertionError(f"no CRD of kind {kind} in {CRDS}")


def problems(doc: dict[str, Any]) -> list[str]:
    """Every schema violation of a ray.io/v1 manifest, as 'path: message'."""
    assert doc["apiVersion"] == "ray.io/v1", doc["apiVersion"]
    errors = sorted(_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


RAY_MANIFESTS = [(name, doc) for name, doc in _documents() if doc["apiVersion"] == "ray.io/v1"]


def test_the_crds_are_the_pinned_release() -> None:
    names = sorted(p.name for p in CRDS.glob("*.yaml"))
    assert names == ["ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml"]
    assert KUBERAY_VERSION in (CRDS / "README.md").read_text()
    assert {doc["kind"] for _, doc in RAY_MANIFESTS} == {"RayCluster", "RayJob"}


@pytest.mark.parametrize(("name", "doc"), RAY_MANIFESTS, ids=[f"{n}:{d['metadata']['name']}" for n, d in RAY_MANIFESTS])
def test_manifest_is_valid_for_its_kuberay_crd(name: str, doc: dict[str, Any]) -> None:
    assert problems(doc) == [], name


def _raycluster() -> dict[str, Any]:
    (doc,) = [d for n, d in RAY_MANIFESTS if n == "raycluster.yaml"]
    return copy.deepcopy(doc)


def _misplace_ray_start_params(doc: dict[str, Any]) -> str:
    head = doc["spec"]["headGroupSpec"]
    head["template"]["spec"]["rayStartParams"] = head.pop("rayStartParams")
    return "rayStartParams"


def _image_on_the_pod(doc: dict[str, Any]) -> str:
    pod = doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    pod["image"] = pod["containers"][0].pop("image")
    return "image"


def _misspelt_replicas(doc: dict[str, Any]) -> str:
    group = doc["spec"]["workerGroupSpecs"][0]
    group["minReplica"] = group.pop("minReplicas")
    return "minReplica"


def _token_mode_typo(doc: dict[str, Any]) -> str:
    doc["spec"]["authOptions"]["mode"] = "tokens"
    return "tokens"


def _gpu_limit_as_a_list(doc: dict[str, Any]) -> str:
    doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"] = ["nvidia.com/gpu"]
    return "limits"


@pytest.mark.parametrize("mutate", [_misplace_ray_start_params, _image_on_the_pod, _misspelt_replicas, _token_mode_typo,
                                    _gpu_limit_as_a_list], ids=lambda f: f.__name__.strip("_"))
def test_a_misplaced_or_wrong_field_fails(mutate) -> None:
    doc = _raycluster()
    field = mutate(doc)
    found = problems(doc)
    assert found and any(field in p for p in found), found
