#!/usr/bin/env bash
# Issue 27's budget sweep (docs/evaluation.md, "Budget sweep"), one command: recall exact match (held-out forms) and
# held-out perplexity (KJV Genesis, the Nettle manual) at KV budgets of 4 / 8 / 16 % of the context for the anchor
# cache (the sink/window/forced-anchor variant closest to each budget), StreamingLLM and SepLLM-style, on the
# default's weights and the base's (adapter disabled on the same model). KV entries counted through the real caches.
# Writes OUT/budget-sweep-DATE.{jsonl,json,html} (the HTML is the Pareto figure). The run passes --resume, so rerunning
# this script continues a stopped run (points already in the JSONL are not run again; on another day give DAY=its date).
# Usage: bash bench/budget_sweep.sh [OUT_DIR]   env: N (recall items per family, 0 = perplexity only; 4),
# DISTANCES (1024,2048), PPL_TOKENS (2048), BUDGETS (0.04,0.08,0.16), EXTRA (more flags).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-docs/benchmarks-data}
DAY=${DAY:-$(date -u +%F)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
mkdir -p "$OUT"
# shellcheck disable=SC2086
"$PY" -m anllm eval sweep --model default --out "$OUT/budget-sweep-$DAY" --budgets "${BUDGETS:-0.04,0.08,0.16}" \
    --distances "${DISTANCES:-1024,2048}" --n "${N:-4}" --ppl-tokens "${PPL_TOKENS:-2048}" --resume ${EXTRA:-}
