"""The sweep spec as a typed model: what a sweep store records about how it was made.

The model lives here, at the bottom layer, because a store's metadata is typed:
opening a store validates its spec into :class:`SweepSpec`, and every part reads
fields (``spec.seed``, ``spec.recipe.name``), never dict keys. Reading a spec
file (YAML) and checking the recipe's parameters is the orchestrator's job
(:mod:`orchestrator.spec`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import Field, field_validator, model_validator

from storage.errors import InputError
from storage.location import store_location
from storage.validation import UserModel

__all__ = [
    "RecipeSpec",
    "OutputsSpec",
    "ResourcesSpec",
    "SweepSpec",
    "IDENTITY_EXCLUDED",
    "spec_hash",
    "spec_differences",
]

#: Fields that may differ between the stored spec and the one a run is given:
#: ``num_models`` grows through ``dmsweep extend``; the store's path is where
#: the store is; resources, retries and timeout change how blocks run, never
#: what they write (docs/decisions.md).
IDENTITY_EXCLUDED = frozenset({"store", "num_models", "resources", "retries", "timeout_s"})


class RecipeSpec(UserModel):
    """Which recipe trains the models, and its parameters."""

    name: str = Field(description="Built-in recipe name (mnist1d-cnn, digits-mlp, cifar10-resnet9, legacy, noop, faulty) or 'package.module:Class'.")
    params: dict[str, Any] = Field(default_factory=dict, description="The recipe's own parameters, validated by the recipe.")


class OutputsSpec(UserModel):
    """Which per-model outputs are recorded. Test margins always are."""

    train_margins: bool = Field(False, description="Also record the margin on every training example.")
    test_logits: bool = Field(False, description="Also record the full test logits [N_test, C].")

    def names(self) -> tuple[str, ...]:
        names = ["margins/test"]
        if self.train_margins:
            names.append("margins/train")
        if self.test_logits:
            names.append("logits/test")
        return tuple(names)


class ResourcesSpec(UserModel):
    """Resources of one worker actor (it trains one block at a time)."""

    num_cpus: float = Field(1.0, gt=0, description="CPUs per worker actor.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per worker actor; fractions let small models share a GPU.")


class SweepSpec(UserModel):
    """A whole sweep: where it is stored, what trains, on how many subsets."""

    store: str = Field(description="Where the Zarr store is: a path (on a cluster, one every node mounts) or "
                                   "s3://bucket/prefix (any S3-compatible endpoint, configured the AWS way).")
    recipe: RecipeSpec
    alpha: float | None = Field(None, gt=0, lt=1, description="Subset fraction: each model trains on exactly round(alpha*N) examples. Required unless masks_file is given.")
    masks_file: str | None = Field(None, description="Optional .npy of bool [num_models, N_train]: explicit subsets instead of random ones (e.g. retraining without chosen examples). Must be on a filesystem every worker sees.")
    num_models: int = Field(gt=0, description="Number of models (rows); a multiple of block.")
    block: int = Field(64, gt=0, le=65536, description="Models per task = rows per chunk.")
    seed: int = Field(0, ge=0, description="Base seed; masks and training seeds derive from (seed, model index).")
    replicates: int = Field(1, ge=1, description="Models per mask, each with its own seed and row: model i trains on mask i // replicates (an eval sweep's LDS is then also measured against the mean over replicates). Must divide block.")
    outputs: OutputsSpec = Field(default_factory=OutputsSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    retries: int = Field(2, ge=0, description="Attempts after the first before a block is recorded as failed.")
    timeout_s: float = Field(3600.0, gt=0, description="Driver-side limit on one block's wall time.")

    @field_validator("store")
    @classmethod
    def _store_is_a_path_or_s3_uri(cls, value: str) -> str:
        try:
            store_location(value)  # parses only: nothing is contacted
        except InputError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _num_models_is_whole_blocks(self) -> SweepSpec:
        if self.num_models % self.block:
            raise ValueError(f"num_models ({self.num_models}) must be a multiple of block ({self.block})")
        if self.alpha is None and self.masks_file is None:
            raise ValueError("alpha: Field required (or give masks_file)")
        if self.block % self.replicates:
            raise ValueError(f"replicates ({self.replicates}) must divide block ({self.block}): a block holds "
                             "whole replicate groups")
        if self.replicates > 1 and self.masks_file is not None:
            raise ValueError("replicates needs random masks (alpha); with masks_file, repeat the rows in the file")
        return self

    def identity(self) -> dict[str, Any]:
        """The fields that define what the store holds (see :data:`IDENTITY_EXCLUDED`).

        ``replicates`` came after stores were made: at its default (1) it is left
        out, so their spec hash still matches.
        """
        fields = {k: v for k, v in self.model_dump(mode="json").items() if k not in IDENTITY_EXCLUDED}
        if fields.get("replicates") == 1:
            fields.pop("replicates")
        return fields


def spec_hash(spec: SweepSpec) -> str:
    """sha256 of the canonical JSON of the spec's identity fields."""
    canonical = json.dumps(spec.identity(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def spec_differences(stored: SweepSpec, given: SweepSpec) -> list[str]:
    """Identity fields that differ, as 'field: stored -> given' lines."""
    old, new = _flatten(stored.identity()), _flatten(given.identity())
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
