"""``python -m orchestrator ARGS`` is ``dmsweep ARGS``: the entrypoint of submitted Ray jobs,
which works from a shipped working_dir where no ``dmsweep`` script is installed."""

from __future__ import annotations

from orchestrator.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
