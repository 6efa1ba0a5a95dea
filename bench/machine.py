"""What every benchmark records about where it ran: the commit and the CPU model."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

__all__ = ["git_commit", "cpu_model"]

_REPO = Path(__file__).resolve().parents[1]


def git_commit(*, short: bool = False) -> str:
    """The checked-out commit, or "" outside a git checkout."""
    args = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        return subprocess.run(args, cwd=_REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
