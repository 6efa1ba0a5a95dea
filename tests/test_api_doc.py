"""docs/api.md's examples, run in order as they are written: the library as a notebook sees it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.slow
def test_every_example_in_the_api_doc_runs(ray_session, tmp_path: Path, capsys) -> None:
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 8, "docs/api.md lost its examples"
    (tmp_path / "runs").mkdir()
    namespace: dict[str, object] = {"__name__": "api_doc"}
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        for number, block in enumerate(blocks, 1):
            exec(compile(block, f"docs/api.md block {number}", "exec"), namespace)
    finally:
        os.chdir(here)
    printed = capsys.readouterr().out
    assert "12/12 blocks" in printed and "LDS " in printed and "predicted flips confirmed" in printed
    assert (tmp_path / "runs" / "api-dm.pt").is_file() and (tmp_path / "runs" / "imported.zarr").is_dir()
