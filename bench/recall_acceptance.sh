#!/usr/bin/env bash
# Issue 27's recall acceptance on the shipped default (docs/evaluation.md, "Recall acceptance"), one command:
# held-out item forms (memory.FORM_TEMPLATES: single, multi, chat, fewshot-recall) on two held-out fillers (KJV Genesis,
# the Nettle manual), rows base:full (adapter disabled on the same model), full, anchor, StreamingLLM and SepLLM-style
# (budgets matched per item to the anchor cache), 95 % bootstrap intervals per cell.
# Writes OUT/recall-acceptance-DATE.{jsonl,json,html}; the JSONL grows item by item and the run passes --resume, so
# rerunning this script continues a stopped run (the items already there are not run again; on another day give
# DAY=the stopped run's date); EXTRA=--summarise only summarises what finished.
# Usage: bash bench/recall_acceptance.sh [OUT_DIR]   env: N (items per family, distance and filler; 15 = 60 per
# distance and filler), DISTANCES (256,1024,2048,4096), MAX_NEW (24), EXTRA (more flags, e.g. --summarise).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-docs/benchmarks-data}
DAY=${DAY:-$(date -u +%F)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
mkdir -p "$OUT"
# shellcheck disable=SC2086
"$PY" -m anllm eval acceptance --model default --out "$OUT/recall-acceptance-$DAY" \
    --distances "${DISTANCES:-256,1024,2048,4096}" --n "${N:-15}" --max-new-tokens "${MAX_NEW:-24}" --resume ${EXTRA:-}
