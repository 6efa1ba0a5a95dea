"""bench/gpu_check.sh's logic that needs no GPU: syntax, the wheel-folder checks and the dry run's plan."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"
REQUIRED = ("zarr-3.1.6-py3-none-any.whl", "numcodecs-0.16.6-cp312-cp312-manylinux2014_x86_64.whl",
            "pydantic-2.14.4-py3-none-any.whl", "pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.whl",
            "mnist1d-0.0.2.post1-py3-none-any.whl")


def dry_run(tmp_path: Path, wheels: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"), "WHEELS": str(wheels)}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)


def test_scripts_parse() -> None:
    for script in ("gpu_check.sh", "gpu_wheels.sh"):
        subprocess.run(["bash", "-n", str(REPO / "bench" / script)], check=True)


def test_dry_run_checks_the_wheel_folder_and_prints_the_plan(tmp_path: Path) -> None:
    wheels = tmp_path / "whl"
    wheels.mkdir()
    empty = dry_run(tmp_path, wheels)
    assert empty.returncode == 2 and "no wheels in" in empty.stdout and "gpu_wheels.sh" in empty.stdout
    for name in REQUIRED:
        (wheels / name).touch()
    ok = dry_run(tmp_path, wheels)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "pytest -m 'cuda and not slow' tests/workers/test_cuda.py" in ok.stdout
    assert "bench/bench_training.py --gpu" in ok.stdout and "bench/bench_regression.py --mode gpu" in ok.stdout
    assert (tmp_path / "out" / "summary.json").is_file()
    (wheels / REQUIRED[2]).unlink()
    missing = dry_run(tmp_path, wheels)
    assert missing.returncode == 2 and "missing a pydantic wheel" in missing.stdout
