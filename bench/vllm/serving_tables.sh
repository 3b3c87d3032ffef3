#!/usr/bin/env bash
# The serving benchmark's runs (docs/serving.md "Benchmark"), one engine at a time, appended to OUT (JSON lines):
#   bash bench/vllm/serving_tables.sh MODEL_DIR OUT [throughput|capacity|all] [REQUESTS PROMPT_TOKENS]
# throughput: tables (b) and (c), REQUESTS x PROMPT_TOKENS (default 8 x 2048), 64 greedy new tokens, on vLLM full,
#   vLLM + anchors, anllm's anchor loop and anllm's full loop;
# capacity: table (a), a KV pool that holds exactly two full-cache requests of PROMPT_TOKENS + 200 tokens; vLLM full
#   gets 4 requests, vLLM + anchors 24 (each makes 200 tokens, so early ones are still running when late ones are
#   admitted); the most requests vLLM ran at once, and what the pool holds by the scheduler's own rule (--capacity).
# Run with the vLLM venv's python as PY (default .venv-vllm/bin/python); MODEL_DIR is an `anllm export` folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=$1; OUT=$2; WHAT=${3:-all}; N=${4:-8}; P=${5:-2048}
PY=${PY:-.venv-vllm/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
run() { "$PY" bench/vllm/serving.py --model-dir "$DIR" --out "$OUT" "$@" 2>&1 | grep -E "^\{|Error" | tail -3; }
if [ "$WHAT" = throughput ] || [ "$WHAT" = all ]; then
  for e in vllm-full vllm-anchor anllm-anchor anllm-full; do
    run --engine "$e" --requests "$N" --prompt-tokens "$P" --new-tokens 64 --max-num-seqs "$N"
  done
fi
if [ "$WHAT" = capacity ] || [ "$WHAT" = all ]; then
  BLOCKS=$(( 2 * ( (P + 200 + 31) / 32 ) + 1 ))  # two full requests of P + 200 tokens, plus vLLM's null block
  run --engine vllm-full --requests 4 --prompt-tokens "$P" --new-tokens 200 --kv-blocks "$BLOCKS" --max-num-batched-tokens 256
  run --engine vllm-anchor --requests 24 --prompt-tokens "$P" --new-tokens 200 --kv-blocks "$BLOCKS" \
      --max-num-batched-tokens 256 --capacity
fi
