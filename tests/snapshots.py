"""What a directory holds, to prove a refused command wrote nothing."""

from __future__ import annotations

from pathlib import Path


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and mtime, to prove nothing was written."""
    snapshot: dict[str, tuple[int, int]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            snapshot[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
        else:
            snapshot[str(path.relative_to(root)) + "/"] = (0, 0)
    return snapshot
