"""What a store is, as a validated model: a sweep (with its spec) or an import (with its provenance).

A store's root attributes hold one :data:`StoreMetadata` under ``attrs["dmsweep"]``.
Opening a store validates them (:func:`parse_metadata`): a missing or foreign
layout version, a malformed field, or a recorded spec hash that no longer matches
the spec (metadata edited or damaged) is refused with one line. Code then reads
typed fields (``meta.spec.seed``), never dict keys.

Two kinds of store share one layout:

* ``sweep``: made by ``dmsweep init``/``run`` from a :class:`~storage.spec.SweepSpec`;
  its masks are regenerated from ``(seed, model index)`` and more models can be
  trained into it (``extend``).
* ``import``: made from data dmsweep did not train (the published ``.npy`` files,
  or arrays a test or benchmark builds); its :class:`ImportProvenance` says where
  the data came from. Every reading command works on it; nothing can be trained
  into it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from storage.errors import InputError, StoreMismatchError
from storage.layout import FORMAT_VERSION, OUTPUT_NAMES, DatasetInfo, OutputName
from storage.spec import SweepSpec, spec_hash
from storage.validation import format_validation_error

__all__ = [
    "ATTRS_KEY",
    "ImportProvenance",
    "SweepMetadata",
    "ImportMetadata",
    "StoreMetadata",
    "sweep_metadata",
    "import_metadata",
    "metadata_hash",
    "parse_metadata",
    "dump_metadata",
]

#: The root attribute that holds a store's metadata.
ATTRS_KEY = "dmsweep"


class ImportProvenance(BaseModel):
    """Where an imported store's data came from.

    Attributes
    ----------
    source : str
        What produced the data: ``npy`` for ``dmsweep import-npy``, or a short name
        given by the code that built the store (``planted``, ``benchmark``...).
    files : dict of str to str
        The files read, by role (``masks``, ``margins/test``...), as given.
    description : str
        Free text for people.
    alpha : float or None
        Mean fraction of the training set in a subset, measured on the masks.
    eval_rows : (int, int) or None
        Rows ``[start, stop)`` that hold models kept for evaluation (the published
        data's extra models): ``fit`` leaves them out, ``eval`` uses them by default.
    replicates : int
        Models per mask: rows ``[i·R, (i+1)·R)`` share one mask (trained with
        different seeds); ``eval`` reports LDS against their mean too.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(min_length=1)
    files: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    alpha: float | None = Field(None, gt=0, lt=1)
    eval_rows: tuple[int, int] | None = None
    replicates: int = Field(1, ge=1)


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[3] = FORMAT_VERSION
    dataset: DatasetInfo
    num_models: int = Field(ge=1)
    block: int = Field(ge=1)
    outputs: tuple[OutputName, ...]
    created_at: float
    #: sha256 of the spec's identity (sweep) or of the provenance (import).
    spec_hash: str

    @property
    def num_blocks(self) -> int:
        return -(-self.num_models // self.block)


class SweepMetadata(_Common):
    """A store that a dmsweep sweep trains into."""

    kind: Literal["sweep"] = "sweep"
    spec: SweepSpec


class ImportMetadata(_Common):
    """A store holding data dmsweep did not train."""

    kind: Literal["import"] = "import"
    provenance: ImportProvenance


StoreMetadata = Annotated[Union[SweepMetadata, ImportMetadata], Field(discriminator="kind")]
_ADAPTER: TypeAdapter[SweepMetadata | ImportMetadata] = TypeAdapter(StoreMetadata)


def _check_outputs(outputs: Sequence[str]) -> tuple[OutputName, ...]:
    unknown = [name for name in outputs if name not in OUTPUT_NAMES]
    if unknown or "margins/test" not in outputs:
        raise InputError(
            f"outputs must include 'margins/test' and only names from {OUTPUT_NAMES}; got {list(outputs)}",
            params=("outputs",),
        )
    return tuple(outputs)  # type: ignore[return-value]


#: Provenance fields added after stores were made: left out of the hash at their
#: defaults, so the stores made before them keep their hash.
_LATER_FIELDS = {"eval_rows": None, "replicates": 1}


def _provenance_hash(provenance: ImportProvenance) -> str:
    fields = provenance.model_dump(mode="json")
    for name, default in _LATER_FIELDS.items():
        if fields.get(name) == default:
            fields.pop(name)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def metadata_hash(meta: SweepMetadata | ImportMetadata) -> str:
    """The hash ``meta.spec_hash`` must equal: of the spec's identity, or of the provenance."""
    return spec_hash(meta.spec) if isinstance(meta, SweepMetadata) else _provenance_hash(meta.provenance)


def sweep_metadata(spec: SweepSpec, *, dataset: DatasetInfo, outputs: Sequence[str] | None = None) -> SweepMetadata:
    """The metadata of a new sweep store for ``spec``."""
    return SweepMetadata(
        spec=spec, dataset=dataset, num_models=spec.num_models, block=spec.block,
        outputs=_check_outputs(outputs if outputs is not None else spec.outputs.names()),
        created_at=time.time(), spec_hash=spec_hash(spec),
    )


def import_metadata(
    provenance: ImportProvenance, *, dataset: DatasetInfo, num_models: int, block: int, outputs: Sequence[str]
) -> ImportMetadata:
    """The metadata of a new imported store."""
    if num_models < 1 or block < 1:
        raise InputError(f"num_models ({num_models}) and block ({block}) must be positive", params=("num_models", "block"))
    return ImportMetadata(
        provenance=provenance, dataset=dataset, num_models=int(num_models), block=int(block),
        outputs=_check_outputs(outputs), created_at=time.time(), spec_hash=_provenance_hash(provenance),
    )


def parse_metadata(attrs: Mapping[str, Any], *, where: str) -> SweepMetadata | ImportMetadata:
    """Validate a store's root attributes into its metadata.

    Parameters
    ----------
    attrs : mapping
        The root group's attributes.
    where : str
        The store's path, for messages.

    Raises
    ------
    StoreMismatchError
        No dmsweep metadata, another layout version, a malformed field, or a
        spec hash that does not match the spec.
    """
    raw = attrs.get(ATTRS_KEY)
    if not isinstance(raw, Mapping):
        raise StoreMismatchError(f"{where!r} is a Zarr group but not a dmsweep store (no {ATTRS_KEY!r} attributes)")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreMismatchError(
            f"{where!r} has store format {version}; this dmsweep reads format {FORMAT_VERSION} "
            "(re-create the store, or use the dmsweep release that made it)"
        )
    try:
        meta = _ADAPTER.validate_python(dict(raw))
    except ValidationError as exc:
        raise StoreMismatchError(f"{where!r}: its dmsweep metadata is invalid: {format_validation_error(exc)}") from None
    expected = metadata_hash(meta)
    if meta.spec_hash != expected:
        what = "spec" if isinstance(meta, SweepMetadata) else "provenance"
        raise StoreMismatchError(
            f"{where!r}: the recorded spec hash does not match its {what} (metadata edited or damaged); "
            "refusing to use it"
        )
    return meta


def dump_metadata(meta: SweepMetadata | ImportMetadata) -> dict[str, Any]:
    """The JSON-able attributes that :func:`parse_metadata` reads back."""
    return meta.model_dump(mode="json")
