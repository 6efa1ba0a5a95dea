#!/usr/bin/env bash
# Build the wheel folder that bench/gpu_check.sh installs on a bare GPU machine.
#
# A GPU check machine has Python 3.12 with torch, numpy, scipy, scikit-learn,
# typer, rich, pyyaml, pillow, pytest..., but not what dmsweep adds on top
# (zarr and its codecs, pydantic, mnist1d), and it cannot reach a registry.
# This script downloads those wheels here, at the versions this checkout's venv
# runs, for CPython 3.12 on manylinux x86-64, each without its dependencies
# (every one is named; torch is never among them). Pure-Python packages that
# publish no wheel are built into one locally.
#
# Usage (from the repository root):
#     bash bench/gpu_wheels.sh [DEST] [EXTRA_PACKAGE ...]
# DEST defaults to .whl (keep it out of git: echo /.whl/ >> .git/info/exclude);
# EXTRA_PACKAGE adds names (e.g. a dependency a later change brings in).
# PYTHON (default .venv/bin/python) is the venv whose versions are copied.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST="${1:-.whl}"
shift || true
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
# The GPU image's Python (KINDS.md: 3.12); another value builds a folder for another machine.
PY_VERSION="${PY_VERSION:-3.12}"

# What dmsweep imports beyond the GPU image's packages, and their own needs.
PACKAGES=(zarr numcodecs donfig google-crc32c crc32c pydantic pydantic-core annotated-types
          typing-inspection typing-extensions packaging mnist1d "$@")

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux1_x86_64 manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64; do
    PLATFORMS+=(--platform "$tag")
done

for name in "${PACKAGES[@]}"; do
    version="$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")"
    spec="$name==$version"
    if ! "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
            --implementation cp "${PLATFORMS[@]}" -d "$DEST" "$spec" 2>/dev/null; then
        # No wheel for that platform: a pure-Python sdist builds into a py3-none-any wheel.
        "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$DEST" "$spec"
    fi
    echo "gpu_wheels: $spec"
done
ls -1 "$DEST"/*.whl | sed 's/^/gpu_wheels: /'
du -sh "$DEST" | sed 's/^/gpu_wheels: total /'
