#!/usr/bin/env bash
# Issue 27: screen one training checkpoint against the shipped default adapter, on held-out material only
# (docs/adapter-training.md, "Screening"). Three measures, each a command of its own:
#   1. recall: `anllm eval acceptance` on the items of the shipped adapter's acceptance run (seed 7, held-out forms,
#      KJV Genesis and the Nettle manual as filler) at 256 and 1,024 tokens, full and anchor rows, with
#      --baseline on that run: paired differences against the shipped adapter, 95 % intervals;
#   2. assistant behaviour: `anllm eval assistant` (72 held-out chat prompts, anchor and full rows);
#   3. perplexity: `anllm eval ppl` on the first 2,048 tokens of KJV Genesis and of the Nettle manual, full, anchor,
#      StreamingLLM and SepLLM-style at the anchor cache's budget.
# Usage: bash bench/screen_checkpoint.sh ADAPTER_DIR OUT_DIR
#   ADAPTER_DIR: a checkpoint's adapter/ (e.g. ~/.cache/anllm/runs/smollm2-memory-v2b/checkpoints/step-0000600/adapter)
#   env: BASELINE (the shipped adapter's screen as served, window 64: v2b step 800, float32 checkpoint weights; the
#        previous adapter's: docs/benchmarks-data/window64-screen-acceptance-2026-12-07.jsonl), N (items per family; 15), DISTANCES (256,1024),
#        MEASURES (recall,assistant,ppl: any of them); OMP_NUM_THREADS as given (1 beside a training job).
# Rerunnable: a finished measure (its output present) is skipped; a stopped recall run is resumed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: bash bench/screen_checkpoint.sh ADAPTER_DIR OUT_DIR" >&2; exit 2; }
ADAPTER=$1
OUT=$2
PY=${PYTHON:-.venv/bin/python}
BASELINE=${BASELINE:-docs/benchmarks-data/screen-v2b-step800-w64-acceptance-2026-12-07.jsonl}  # the shipped adapter
MEASURES=${MEASURES:-recall,assistant,ppl}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
mkdir -p "$OUT"
has() { [[ ",$MEASURES," == *",$1,"* ]]; }
if has recall && [ ! -f "$OUT/acceptance.json" ]; then
    RESUME=(); [ -f "$OUT/acceptance.jsonl" ] && RESUME=(--resume)
    "$PY" -m anllm eval acceptance --model default --adapter "$ADAPTER" --policies full,anchor --no-reference \
        --distances "${DISTANCES:-256,1024}" --n "${N:-15}" --max-new-tokens 16 --baseline "$BASELINE" \
        --out "$OUT/acceptance" "${RESUME[@]}"
fi
if has assistant && [ ! -f "$OUT/assistant.json" ]; then
    "$PY" -m anllm eval assistant --model default --adapter "$ADAPTER" --no-reference --out "$OUT/assistant.json"
fi
if has ppl; then
    for text in kjv_genesis nettle_manual_prose; do
        [ -f "$OUT/ppl-$text.json" ] && continue
        "$PY" -m anllm eval ppl --model default --adapter "$ADAPTER" --text-file "anllm/resources/$text.txt" \
            --policies full,anchor,streaming,sepllm --budget anchor --max-tokens 2048 --json \
            | tail -n 1 >"$OUT/ppl-$text.json.part"
        mv "$OUT/ppl-$text.json.part" "$OUT/ppl-$text.json"
    done
fi
echo "screened $ADAPTER: $OUT"
