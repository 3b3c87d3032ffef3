#!/usr/bin/env bash
# Build the kvpress venv (default runs/peers-venv, gitignored) from bench/peers/requirements.txt, plain pip, CPU torch.
# Usage: bash bench/peers/setup.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-runs/peers-venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r bench/peers/requirements.txt 2>&1 \
  | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md

import torch

assert torch.version.cuda is None, f"a CUDA build of torch was installed ({torch.__version__}); use the CPU pin"
print(" ".join(f"{p} {md.version(p)}" for p in ("torch", "transformers", "kvpress", "accelerate", "peft")))
PY
