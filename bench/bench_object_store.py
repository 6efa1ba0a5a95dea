"""Object-storage benchmark: block writes/s and streamed fit reads GB/s, local store vs S3, two S3 clients.

Prints one JSON object. In one run, side by side, at CIFAR-10 shapes (N_train
50,000, N_test 10,000, block 64; masks bool, test margins float16, zstd+crc32c):

* ``local``: the store on this machine's disk (zarr's LocalStore);
* ``obstore``: the store in a bucket of a local S3 server through zarr's
  ObjectStore over obstore (what dmsweep uses);
* ``s3fs``: the same through zarr's FsspecStore over s3fs (the alternative).

``writes``: ``SweepStore.write_block`` of whole blocks, one after another (the
worker's write path: one PUT per chunk). ``reads``: every completed row streamed
as the fit reads them (``regression.loader.StoreSource``, a reader thread, row
blocks of ``block`` models), GB/s of raw (decoded) masks and margins.

The S3 server is moto's standalone server started here on 127.0.0.1 (the one
the tests use): it is written in Python and keeps objects in memory, so its
figures compare the clients with each other and bound the protocol's cost; a
real S3 endpoint has other latencies.

Run: ``.venv/bin/python bench/bench_object_store.py [--blocks 16] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_model, git_commit  # bench/, next to this script

__all__ = ["main"]

CIFAR = {"n_train": 50_000, "n_test": 10_000, "n_classes": 10}
BLOCK = 64
BUCKET = "dmsweep-bench"


def _moto(port: int) -> subprocess.Popen[bytes]:
    """moto's S3 server on 127.0.0.1:``port``, answering when this returns."""
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("moto did not start")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _metadata(num_blocks: int):  # -> ImportMetadata
    from storage.layout import DatasetInfo
    from storage.metadata import ImportProvenance, import_metadata

    return import_metadata(ImportProvenance(source="benchmark"), dataset=DatasetInfo(name="cifar-shapes", **CIFAR),
                           num_models=BLOCK * num_blocks, block=BLOCK, outputs=("margins/test",))


def _blocks(num_blocks: int) -> list[dict[str, np.ndarray]]:
    from workers.masks import block_masks

    rng = np.random.default_rng(0)
    return [{"masks": block_masks(0, range(b * BLOCK, (b + 1) * BLOCK), CIFAR["n_train"], 0.5),
             "margins/test": rng.standard_normal((BLOCK, CIFAR["n_test"])).astype(np.float16)}
            for b in range(num_blocks)]


def _store(client: str, root: Path, endpoint: str, num_blocks: int):  # -> SweepStore
    """A new store for ``client``: created by dmsweep, then opened through that client's zarr store."""
    import zarr

    from storage.location import store_location
    from storage.sweep_store import SweepStore

    if client == "local":
        return SweepStore.create(root / f"{uuid.uuid4().hex[:8]}.zarr", _metadata(num_blocks))
    uri = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/store.zarr"
    store = SweepStore.create(uri, _metadata(num_blocks))
    if client == "obstore":
        return store
    import s3fs
    from zarr.storage import FsspecStore

    filesystem = s3fs.S3FileSystem(asynchronous=True, endpoint_url=endpoint)
    group = zarr.open_group(FsspecStore(filesystem, path=uri[len("s3://"):]), mode="r+")
    return SweepStore(group, store_location(uri), "r+", store.metadata)


def _write(store: Any, blocks: list[dict[str, np.ndarray]]) -> float:
    """Seconds to write every block's chunks (what a worker does); the ledger is written after, untimed."""
    seconds = 0.0
    for block_id, data in enumerate(blocks):
        t0 = time.perf_counter()
        written = store.write_block(block_id, data)
        seconds += time.perf_counter() - t0
        store.ledger.mark_complete(block_id, checksum=written.checksum, seconds=0.0, node="bench")
    return seconds


def _read(store: Any) -> tuple[float, int]:
    """Seconds to stream every completed row as a fit does, and the raw bytes read."""
    import torch

    from regression.loader import StoreSource

    rows = store.completed_rows()
    source = StoreSource(store, rows=rows, output="margins/test", targets=slice(0, CIFAR["n_test"]),
                         device=torch.device("cpu"))
    edges = list(range(0, rows.size, BLOCK)) + [rows.size]
    t0 = time.perf_counter()
    nbytes = 0
    for masks, targets in source.iterate(list(zip(edges[:-1], edges[1:]))):
        nbytes += masks.numel() + targets.numel() // 2  # as stored: bool masks, float16 margins
    return time.perf_counter() - t0, nbytes


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.mean(values), 3),
            "std": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0, "n": len(values)}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=16, help="blocks of 64 models per store")
    parser.add_argument("--repeats", type=int, default=3, help="stores written and read per client")
    args = parser.parse_args(argv)

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})
    server = _moto(port)
    root = Path(tempfile.mkdtemp(prefix="dmsweep-bench-s3-"))
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        blocks = _blocks(args.blocks)
        raw = sum(a.nbytes for b in blocks for a in b.values())
        writes: dict[str, list[float]] = {"local": [], "obstore": [], "s3fs": []}
        reads: dict[str, list[float]] = {name: [] for name in writes}
        for _ in range(args.repeats):
            for client in writes:  # interleaved, so a slow moment of the machine hits every client
                store = _store(client, root, endpoint, args.blocks)
                writes[client].append(args.blocks / _write(store, blocks))
                seconds, nbytes = _read(store)
                reads[client].append(nbytes / seconds / 1e9)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(root, ignore_errors=True)
    import obstore
    import s3fs
    import torch
    import zarr

    out = {
        "benchmark": "object_store",
        "environment": {"commit": git_commit(short=True), "cpu": cpu_model(), "cores": os.cpu_count(),
                        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                        "python": platform.python_version(), "zarr": zarr.__version__, "obstore": obstore.__version__,
                        "s3fs": s3fs.__version__, "torch": torch.__version__, "server": "moto (local, in memory)"},
        "shapes": {**CIFAR, "block": BLOCK, "blocks": args.blocks, "raw_mb_per_block": round(raw / args.blocks / 1e6, 2)},
        "block_writes_per_s": {client: _stats(values) for client, values in writes.items()},
        "fit_read_gb_per_s": {client: _stats(values) for client, values in reads.items()},
    }
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
