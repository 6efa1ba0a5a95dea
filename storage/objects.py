"""The store's non-Zarr objects (lease, event log, ledger journal) behind one tiny object API.

Object storage has no rename, no append and no locks; what it has is whole-object
PUTs and *conditional* PUTs (``If-None-Match: *`` to create, ``If-Match: ETAG``
to replace exactly the version one read). :class:`Objects` is that API, and the
lease, the event log and the ledger are written against it alone, so one design
serves a local disk and S3:

* :class:`LocalObjects`: files in a directory. A create is a hard link of a
  fully written temporary file (``link`` fails if the name exists), a
  conditional replace holds an ``flock`` on the directory while it compares the
  current content's digest and renames, so both are atomic on one host and on
  NFS (which forwards both).
* :class:`S3Objects`: objects under a key prefix, through obstore (see
  :mod:`storage.s3`); a server that ignores conditional headers is refused by
  :meth:`Objects.check_conditional_writes`.

An ETag here is opaque: compare it, hand it back, never parse it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from storage.errors import StoreError

__all__ = ["Blob", "Objects", "LocalObjects", "S3Objects", "ConditionalWritesError"]


class ConditionalWritesError(StoreError):
    """The object store does not honour conditional writes, which the lease and ledger need."""

    exit_code = 2


@dataclass(frozen=True)
class Blob:
    """An object's bytes and the version (ETag) they are."""

    data: bytes
    etag: str


class Objects(Protocol):
    """What the store's non-Zarr parts need from wherever the store lives. Keys use ``/``."""

    @property
    def where(self) -> str:
        """The area's path or URI, for messages."""
        ...

    def get(self, key: str) -> Blob | None:
        """The object, or None if there is none."""
        ...

    def put(self, key: str, data: bytes) -> str:
        """Write (or replace) the object in one atomic step; returns its ETag."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> str | None:
        """Create the object; its ETag, or None (nothing written) if it already exists."""
        ...

    def put_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """Replace the object if it is still version ``etag``; its new ETag, or None (nothing written)."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (recursively), sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object (absent is fine)."""
        ...

    def delete_all(self) -> None:
        """Remove every object of the area."""
        ...

    def check_conditional_writes(self) -> None:
        """Raise :class:`ConditionalWritesError` unless creates and replaces are really conditional."""
        ...


def _digest(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _probe_conditional_writes(objects: Objects) -> None:
    """Create an object twice and replace it on a stale version: both second tries must be refused."""
    key = f"conditional-write-probe-{uuid.uuid4().hex}"
    try:
        first = objects.put_if_absent(key, b"1")
        again = objects.put_if_absent(key, b"2")
        replaced = objects.put_if_match(key, b"3", first) if first is not None else None
        stale = objects.put_if_match(key, b"4", first) if first is not None else None
    finally:
        objects.delete(key)
    if first is None or again is not None or replaced is None or stale is not None:
        raise ConditionalWritesError(
            f"the object store at {objects.where} does not honour conditional writes (If-None-Match / If-Match); "
            "dmsweep's lease and ledger need them: use AWS S3 or a server that supports them (MinIO, Ceph RGW, R2)"
        )


class LocalObjects:
    """Objects as files under ``root`` (created on the first write)."""

    def __init__(self, root: str | Path) -> None:
        self._root = Path(root)

    @property
    def where(self) -> str:
        return str(self._root)

    def _path(self, key: str) -> Path:
        return self._root / key

    def get(self, key: str) -> Blob | None:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Blob(data, _digest(data))

    def _staged(self, path: Path, data: bytes) -> Path:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
        for _ in range(3):  # a directory emptied and removed by delete() meanwhile is made again
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                tmp.write_bytes(data)
                return tmp
            except FileNotFoundError:
                continue
        tmp.write_bytes(data)
        return tmp

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        os.replace(self._staged(path, data), path)
        return _digest(data)

    def put_if_absent(self, key: str, data: bytes) -> str | None:
        path = self._path(key)
        tmp = self._staged(path, data)
        try:
            os.link(tmp, path)  # atomic, and refused when the name exists
        except FileExistsError:
            return None
        finally:
            tmp.unlink(missing_ok=True)
        return _digest(data)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def put_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        path = self._path(key)
        with self._locked():
            current = self.get(key)
            if current is None or current.etag != etag:
                return None
            os.replace(self._staged(path, data), path)
        return _digest(data)

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self._root
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.endswith(".partial"):
                keys.append(path.relative_to(self._root).as_posix())
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Directories left empty go too (the area itself included), as keys on S3 leave no folders.
        for parent in path.parents:
            if parent != self._root and self._root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def delete_all(self) -> None:
        import shutil

        shutil.rmtree(self._root, ignore_errors=True)

    def check_conditional_writes(self) -> None:
        return None  # link and flock are what the methods above use: always conditional


class S3Objects:
    """The objects of an obstore ``S3Store`` scoped to the area's prefix (errors turned into ours by ``explain``).

    Parameters
    ----------
    store : obstore.store.S3Store
        The bucket and the area's prefix, already configured (:func:`storage.s3.s3_store`).
    uri : str
        ``s3://bucket/prefix``, for messages.
    explain : callable
        Turns an obstore exception into a dmsweep error (it raises).
    """

    def __init__(self, store: Any, *, uri: str, explain: Callable[[Exception, str], Exception]) -> None:
        self._store = store
        self._uri = uri
        self._explain = explain
        self._conditional_checked = False

    @property
    def where(self) -> str:
        return self._uri

    def get(self, key: str) -> Blob | None:
        import obstore

        try:
            result = obstore.get(self._store, key)
            data = bytes(result.bytes())
        except FileNotFoundError as exc:
            if "NoSuchBucket" in str(exc):
                raise self._explain(exc, self._uri) from None
            return None
        except Exception as exc:
            raise self._explain(exc, self._uri) from None
        return Blob(data, str(result.meta["e_tag"]))

    def _put(self, key: str, data: bytes, mode: Any) -> str | None:
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            result = obstore.put(self._store, key, data, mode=mode, use_multipart=False)
        except (AlreadyExistsError, PreconditionError):
            return None
        except Exception as exc:
            if mode != "overwrite" and _not_implemented(exc):
                raise ConditionalWritesError(
                    f"the object store at {self._uri} refused a conditional write ({_first_line(exc)}); "
                    "dmsweep's lease and ledger need If-None-Match / If-Match"
                ) from None
            raise self._explain(exc, self._uri) from None
        return str(result["e_tag"])

    def put(self, key: str, data: bytes) -> str:
        etag = self._put(key, data, "overwrite")
        if etag is None:  # an overwrite has no precondition that could fail
            raise StoreError(f"writing {key!r} in {self._uri} was refused")
        return etag

    def put_if_absent(self, key: str, data: bytes) -> str | None:
        return self._put(key, data, "create")

    def put_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        return self._put(key, data, {"e_tag": etag})

    def list(self, prefix: str = "") -> list[str]:
        import obstore

        try:
            pages = obstore.list(self._store, prefix or None)
            return sorted(meta["path"] for page in pages for meta in page)
        except Exception as exc:
            raise self._explain(exc, self._uri) from None

    def delete(self, key: str) -> None:
        import obstore

        try:
            obstore.delete(self._store, key)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise self._explain(exc, self._uri) from None

    def delete_all(self) -> None:
        import obstore

        keys = self.list()
        try:
            for start in range(0, len(keys), 1000):
                obstore.delete(self._store, keys[start : start + 1000])
        except Exception as exc:
            raise self._explain(exc, self._uri) from None

    def check_conditional_writes(self) -> None:
        if not self._conditional_checked:
            _probe_conditional_writes(self)
            self._conditional_checked = True


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _not_implemented(exc: Exception) -> bool:
    text = str(exc)
    return "501" in text or "NotImplemented" in text or isinstance(exc, NotImplementedError) or (
        isinstance(exc, OSError) and exc.errno == errno.ENOSYS
    )
