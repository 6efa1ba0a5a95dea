"""Run a dmsweep command whose wall clock steps by the seconds written in a file, as an NTP step would.

    python bench/jumping_clock.py OFFSET_FILE run SPEC --address ADDR ...

The file holds one number, the offset in seconds; it is re-read every 0.1 s,
so writing a new number steps the process's clock at that moment. Only the
wall clock moves (``time.time``, ``time.time_ns``: the lease's heartbeats, the
ledger's times): monotonic clocks never step, and the driver's block deadlines
use them.

Why not libfaketime: Debian 12's libfaketime 0.9.10 makes Python 3.11's
``time.sleep`` fail with EINVAL when the monotonic clock is left alone
(``FAKETIME_DONT_FAKE_MONOTONIC=1``), and faking the monotonic clock as well
would step it too, which no real clock does.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

__all__: list[str] = []


class _SteppedClock:
    """The real wall clock plus the offset the file says."""

    def __init__(self, offset_file: Path) -> None:
        self._file = offset_file
        self._offset = 0.0
        self._read_at = -1.0
        self._real_time = time.time
        self._real_time_ns = time.time_ns

    def _current_offset(self) -> float:
        now = time.monotonic()
        if now - self._read_at >= 0.1:
            self._read_at = now
            try:
                self._offset = float(self._file.read_text().strip() or 0.0)
            except (OSError, ValueError):
                pass  # mid-write or absent: keep the last offset
        return self._offset

    def time(self) -> float:
        return self._real_time() + self._current_offset()

    def time_ns(self) -> int:
        return self._real_time_ns() + int(self._current_offset() * 1e9)


def main() -> None:
    clock = _SteppedClock(Path(sys.argv[1]))
    # Before dmsweep is imported: the lease's default clock is bound at import.
    time.time = clock.time
    time.time_ns = clock.time_ns
    sys.argv = ["dmsweep", *sys.argv[2:]]
    from orchestrator.cli import main as dmsweep

    dmsweep()


if __name__ == "__main__":
    main()
