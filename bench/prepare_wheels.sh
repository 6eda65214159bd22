#!/usr/bin/env bash
# Put the wheels that bench/gpu_check.sh installs offline into the git-ignored .whl/ folder.
# Run once on a machine with network access (any OS: both packages are pure-Python wheels):
#     bash bench/prepare_wheels.sh          (or: make wheels)
# Pins: pyproject.toml's bench extra (kronfluence==1.0.1, einconv==0.1.0).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
mkdir -p "$ROOT/.whl"
"$PY" -m pip download --no-deps --only-binary=:all: --dest "$ROOT/.whl" kronfluence==1.0.1 einconv==0.1.0
ls -l "$ROOT/.whl"
