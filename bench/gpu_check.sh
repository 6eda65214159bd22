#!/usr/bin/env bash
# GPU check (at most 4 minutes on one H100/H200): tokens/s and peak memory of each EK-FAC pass,
# infra_lib and kronfluence side by side, then a projection to 100k x 4k-token examples on 1 and 8 GPUs.
#
#     bash bench/gpu_check.sh                   # on the GPU machine; writes runs/bench/gpu_check.json
#     bash bench/gpu_check.sh --cpu --tiny      # the same code end to end on a CPU, in seconds
#
# Needs a Python with torch, transformers, accelerate, einops, opt-einsum, safetensors, scipy and
# scikit-learn (no network). The project goes on PYTHONPATH (no install step); kronfluence and
# einconv are installed from the wheels in .whl/ (bash bench/prepare_wheels.sh, on a machine with
# network) into a temporary folder with pip --no-deps --no-index --target.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
DEPS="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_deps.XXXXXX")"
trap 'rm -rf "$DEPS"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
shopt -s nullglob
wheels=("$ROOT"/.whl/kronfluence-*.whl "$ROOT"/.whl/einconv-*.whl)
if [ "${#wheels[@]}" -eq 2 ]; then  # the pinned wheels win over any installed copy
    "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-index --target "$DEPS" "${wheels[@]}"
    export PYTHONPATH="$DEPS:$PYTHONPATH"
elif ! "$PY" -c "import kronfluence" 2>/dev/null; then
    echo "gpu_check: no kronfluence/einconv wheels in $ROOT/.whl (bash bench/prepare_wheels.sh): ours only" >&2
fi
"$PY" -c "import os, sys
try:
    import kronfluence; print('gpu_check: kronfluence from', os.path.dirname(kronfluence.__file__))
except ImportError:
    pass"
"$PY" -c "import torch, transformers; print(f'gpu_check: python {__import__(\"platform\").python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, cuda {torch.cuda.is_available()}')"
# 225 s for the Python part leaves room for the wheel install and interpreter start within 4 minutes
exec timeout 230 "$PY" "$ROOT/bench/gpu_check.py" --budget-s 215 "$@"
