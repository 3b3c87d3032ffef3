#!/usr/bin/env bash
# Prefill at the limit (docs/benchmarks.md, "Prefill against the backbone"), one command for a quiet machine:
# the default model (SmolLM2-135M-Instruct + the shipped anchor adapter), 8,160 tokens of English prose (the built-in
# KJV Genesis passage), every mode with its library prefill chunk, best of two runs in one process, with the
# one-pass full prefill (onepass) and the backbone limit (backbone@256, backbone@one-pass) measured in the same run.
#
#   bash bench/prefill_final.sh [OUT_DIR]          # OUT_DIR defaults to out/prefill_final; PYTHON=... to choose
#
# Writes OUT_DIR/prefill-8k.json (the --json line), OUT_DIR/prefill-8k.html (--plot) and OUT_DIR/prefill-8k.log
# (the table, machine figures and thread count). Torch uses its default thread count (all cores); the log says how
# many. Takes about 10 minutes on a quiet 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/prefill_final}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"${PYTHON:-python3}" -m anllm bench --model default --context 8160 --policies full,anchor,streaming,sepllm,limit \
  --repeats 2 --stat best --roofline --json --plot "$OUT/prefill-8k.html" \
  2> >(tee "$OUT/prefill-8k.log" >&2) | tail -n 1 > "$OUT/prefill-8k.json"
echo "wrote $OUT/prefill-8k.json, $OUT/prefill-8k.html and $OUT/prefill-8k.log" >&2
