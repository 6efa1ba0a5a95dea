"""Where a store is: a local path or ``s3://bucket/prefix``, parsed once into one object.

A :class:`StoreLocation` gives everything a store needs from where it lives:

* :meth:`~StoreLocation.zarr_store`: the Zarr store of the hierarchy itself
  (zarr's ``LocalStore``, or its ``ObjectStore`` over obstore for S3);
* :attr:`~StoreLocation.state`: the store's *state area*, an
  :class:`~storage.objects.Objects` for what is not Zarr (lease, event log, the
  ledger's journal). It lives beside the hierarchy, at ``<store>.dmsweep``, so
  that no Zarr tool meets a file it does not know (zarr warns about every one);
* :meth:`~StoreLocation.scratch_dir`: a local directory for one process's
  scratch files (the SAGA table's spill file).

Every command and library function that takes a store takes a ``str``, a
``Path`` or a location and calls :func:`store_location`.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from storage.errors import InputError
from storage.objects import LocalObjects, Objects, S3Objects

__all__ = ["StoreLocation", "LocalLocation", "S3Location", "store_location", "objects_at", "is_uri", "STATE_SUFFIX"]

#: The state area of store ``X`` is ``X`` + this suffix, beside it.
STATE_SUFFIX = ".dmsweep"

_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# S3 bucket names: 3-63 of lowercase letters, digits, dots and hyphens.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def is_uri(value: str | Path) -> bool:
    """Whether ``value`` is written as a URI (``scheme://...``), not a path."""
    return isinstance(value, str) and _URI.match(value) is not None


class _Location:
    """What both kinds share: ``str(location)`` is the path or URI as users write it."""

    uri: str

    def __str__(self) -> str:
        return self.uri


@dataclass(frozen=True)
class LocalLocation(_Location):
    """A store in a local (or mounted) directory.

    Both kinds of location offer: ``uri``, ``name`` (the last component),
    ``is_local``, ``canonical`` (one string for every spelling of a location),
    ``state`` (the state area's :class:`~storage.objects.Objects`), ``root``
    (the hierarchy's own objects by key), ``zarr_store(read_only=)``,
    ``scratch_dir()`` (a local directory for a process's scratch files) and
    ``sibling(name)``.
    """

    path: Path

    @property
    def uri(self) -> str:  # type: ignore[override]
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_local(self) -> bool:
        return True

    @property
    def canonical(self) -> str:
        return str(self.path.resolve())

    @property
    def state(self) -> Objects:
        return LocalObjects(self.path.with_name(self.path.name + STATE_SUFFIX))

    @property
    def root(self) -> Objects:
        return LocalObjects(self.path)

    def zarr_store(self, *, read_only: bool) -> Any:
        from zarr.storage import LocalStore

        return LocalStore(self.path, read_only=read_only)

    def scratch_dir(self) -> Path:
        scratch = self.path.with_name(self.path.name + STATE_SUFFIX) / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        return scratch

    def sibling(self, name: str) -> LocalLocation:
        return LocalLocation(self.path.with_name(name))


@dataclass(frozen=True)
class S3Location(_Location):
    """A store under ``s3://bucket/prefix`` (any S3-compatible endpoint; see :mod:`storage.s3`)."""

    bucket: str
    prefix: str
    requester_pays: bool = field(default=False, compare=False)

    @property
    def uri(self) -> str:  # type: ignore[override]
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def canonical(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return self.prefix.rsplit("/", 1)[-1]

    @property
    def is_local(self) -> bool:
        return False

    def _objects(self, prefix: str) -> Objects:
        from storage.s3 import explain_s3_error, s3_store

        store = s3_store(self.bucket, prefix, requester_pays=self.requester_pays)
        return S3Objects(store, uri=f"s3://{self.bucket}/{prefix}", explain=explain_s3_error)

    @property
    def state(self) -> Objects:
        return self._objects(self.prefix + STATE_SUFFIX)

    @property
    def root(self) -> Objects:
        return self._objects(self.prefix)

    def zarr_store(self, *, read_only: bool) -> Any:
        from storage.s3 import SinglePutObjectStore, s3_store

        return SinglePutObjectStore(s3_store(self.bucket, self.prefix, requester_pays=self.requester_pays),
                                    read_only=read_only)

    def scratch_dir(self) -> Path:
        # Never in the bucket: the spill file is read and written at random, per batch.
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        scratch = Path(tempfile.gettempdir()) / "dmsweep-scratch" / f"{self.name}-{digest}"
        scratch.mkdir(parents=True, exist_ok=True)
        return scratch

    def sibling(self, name: str) -> S3Location:
        parent = self.prefix.rsplit("/", 1)[0] if "/" in self.prefix else ""
        return S3Location(self.bucket, f"{parent}/{name}" if parent else name, self.requester_pays)


#: Where a store is: one of the two kinds.
StoreLocation = Union[LocalLocation, S3Location]


def _parse_s3(uri: str, *, param: str) -> S3Location:
    rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if "@" in bucket or "?" in uri or "#" in uri:
        raise InputError(f"{param} {uri!r}: give s3://bucket/prefix only; credentials and options come from "
                         "the AWS configuration, never the URI", params=(param,))
    if not _BUCKET.match(bucket):
        raise InputError(f"{param} {uri!r}: {bucket!r} is not a valid S3 bucket name", params=(param,))
    if not prefix:
        raise InputError(f"{param} {uri!r}: give a prefix inside the bucket (s3://{bucket}/NAME); "
                         "a store cannot be a whole bucket", params=(param,))
    if any(part in ("", ".", "..") for part in prefix.split("/")):
        raise InputError(f"{param} {uri!r}: the prefix has an empty, '.' or '..' component", params=(param,))
    return S3Location(bucket, prefix)


def store_location(value: str | Path | StoreLocation, *, param: str = "store") -> StoreLocation:
    """Parse a store path or URI.

    Parameters
    ----------
    value : a local path (relative ones are taken as they are), ``s3://bucket/prefix``,
        or a location already parsed.
    param : the parameter's name, for errors.

    Raises
    ------
    InputError
        A URI of another scheme, a malformed ``s3://`` URI, or an empty path.
    """
    if isinstance(value, (LocalLocation, S3Location)):
        return value
    if isinstance(value, Path):
        return LocalLocation(value.expanduser())
    text = str(value).strip()
    if not text:
        raise InputError(f"{param} is empty", params=(param,))
    match = _URI.match(text)
    if match is None:
        return LocalLocation(Path(text).expanduser())
    scheme = match.group(1).lower()
    if scheme == "s3":
        return _parse_s3(text, param=param)
    if scheme == "file":
        return LocalLocation(Path(text[len("file://"):]).expanduser())
    raise InputError(f"{param} {text!r}: unsupported scheme {scheme!r} (a path or s3://bucket/prefix)",
                     params=(param,))


def objects_at(where: str | Path) -> Objects:
    """Plain objects (files) in a folder or under an ``s3://`` prefix, by key."""
    return store_location(where, param="where").root
