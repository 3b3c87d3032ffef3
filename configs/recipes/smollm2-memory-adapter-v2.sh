#!/usr/bin/env bash
# Issue 27: the v2 memory adapter for `--model default` on CPU (docs/adapter-training.md, "Memory adapter v2").
# Everything is written under RUNS=${ANLLM_RUNS:-$HOME/.cache/anllm/runs} (never inside the repository).
# Data (each step skipped when its output exists):
#   1. corpus-broad/: the broad corpus (configs/recipes/corpus-broad.sh; 6.38 M training tokens, 46 % of them
#      technical: Debian documentation, man pages, git-doc, postgresql-doc), the prose blocks of every stage;
#   2. corpus-tech-v2b/: the technical sources alone (python -m anllm.train.corpus --sources tech), split by the same
#      5 % document hash, so none of its training documents is held out by corpus-broad (checked below). Never Python
#      documentation or licence texts (corpus.RESERVED_TEXT; reserved for independent checks); KJV Genesis stays out
#      of every corpus (an evaluation text);
#   3. eval-v2b/heldout-mix.txt: corpus-broad's held-out literary documents interleaved with corpus-tech-v2b's
#      held-out documents, so the in-training evaluation (eval_every, first 4,096 tokens) sees both kinds of prose;
#   4. memory-v2b/train.jsonl: 8,000 memory items (seed 21) from the v2 templates (memory.TRAIN_TEMPLATES_V2: the 41
#      v1 templates + 39 with dates, prices, codes, phrases, titles, several facts, paraphrased questions), filler
#      16-900 tokens (log-uniform) from corpus-broad or, for half the items, corpus-tech-v2b;
#   5. memory-v2b/train-long.jsonl: 6,000 more (seed 22) at 48-1,900 tokens;
#   6. chat-v2/train.jsonl: 400 training instructions (anllm.train.chat_data, seed 5; never the wording or topics of
#      `anllm eval assistant`) answered greedily by the base model's full cache, kept when the base ended its answer
#      by EOS (end of turn weighted 4): chat turns for the KL to distil, so anchor mode learns when the base stops.
# Stages (from the shipped default adapter, served setting from step 0: EP anchors, 1 sink, window 24 (64 from
# stage V3), forced anchor after 48 tokens; KL to the base model under the mask + full-attention KL + 8 x the answers' LM loss; lr 1e-4):
#   V1, steps 0-400: configs/smollm2-memory-adapter-v2.yaml as committed: prose blocks + the v2 items at the shipped
#      adapter's distances, 1,024-token rows. Why: the new answer forms and technical filler first at distances the
#      adapter already handles; prose in every stage because v1's last stage trained on items only and its anchor-mode
#      prose perplexity stayed above StreamingLLM's, and the full-attention KL keeps the full cache close to the base
#      (the issue's bar: full-cache recall not lower, full-cache perplexity not > 5 % higher than the shipped adapter).
#   V2, steps 400-800: prose + the long items + the chat turns (listed 5 times: ~18 % of the rows), 2,048-token
#      rows, window 24. Why: v1 found that recall at 1,024+ tokens needs items that long (its 48-900 set left 2,048
#      untrained); the chat turns because the anchor cache overran lists and missed EOS (anllm eval assistant:
#      0.88 x the full cache's EOS share with the shipped adapter).
#   V3, steps 800-MAX_STEPS (2,000): V2's data at the config's window, 64: the default serves a 64-token window since
#      2026-12-07 (docs/adapter-training.md says why), so the adapter now trains as served.
# Resumable: rerun this script after a stop and it continues from the newest checkpoint (save_every 50, ~10 min; the
# data order is a function of the step). MAX_STEPS=N ends stage V2 earlier. Held-out curves: $RUNS/smollm2-memory-v2b/
# metrics.jsonl (eval_ppl_full / eval_ppl_anchor every 100 steps).
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root (relative paths below and in the config are from here)
PY=${PYTHON:-.venv/bin/python}
RUNS=${ANLLM_RUNS:-$HOME/.cache/anllm/runs}
OUT=$RUNS/smollm2-memory-v2b
MEM=$RUNS/memory-v2b
CHAT=$RUNS/chat-v2
TECH=$RUNS/corpus-tech-v2b
EVAL=$RUNS/eval-v2b/heldout-mix.txt
CFG=configs/smollm2-memory-adapter-v2.yaml
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # spin-waiting threads slow a shared CPU several times
echo "== $(date -u +%FT%TZ) v2 recipe: runs in $RUNS, python $PY, $OMP_NUM_THREADS threads"
[ -f "$RUNS/corpus-broad/train.jsonl" ] || bash configs/recipes/corpus-broad.sh "$RUNS/corpus-broad"
[ -f "$TECH/train.jsonl" ] || "$PY" -m anllm.train.corpus --out "$TECH" --sources tech
"$PY" - "$RUNS/corpus-broad" "$TECH" <<'PY'
# the technical split must not train on anything the broad corpus holds out (same hash, same fraction)
import json
import sys
from pathlib import Path

from anllm.train.corpus import heldout_documents, is_reserved

broad, tech = map(Path, sys.argv[1:3])
train = {json.loads(x)["text"] for x in (tech / "train.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()}
held = set(heldout_documents(broad / "heldout.txt")) | set(heldout_documents(tech / "heldout.txt"))
assert not train & held, f"{len(train & held)} held-out documents in {tech}/train.jsonl"
assert not any(map(is_reserved, train)), "a reserved (licence / Python documentation) text in the technical corpus"
print(f"technical corpus: {len(train)} training documents, none held out or reserved")
PY
[ -f "$EVAL" ] || "$PY" -m anllm.train.corpus --out "$EVAL" \
    --mix-heldout "$RUNS/corpus-broad/heldout.txt" "$TECH/heldout.txt"
[ -f "$MEM/train.jsonl" ] || "$PY" -m anllm.train.memory_data --corpus "$RUNS/corpus-broad/train.jsonl" \
    --second-corpus "$TECH/train.jsonl" --templates v2 --out "$MEM/train.jsonl" --n 8000 --seed 21 \
    --min-distance 16 --max-distance 900
[ -f "$MEM/train-long.jsonl" ] || "$PY" -m anllm.train.memory_data --corpus "$RUNS/corpus-broad/train.jsonl" \
    --second-corpus "$TECH/train.jsonl" --templates v2 --out "$MEM/train-long.jsonl" --n 6000 --seed 22 \
    --min-distance 48 --max-distance 1900
# resumable (appends; a rerun asks only what is missing); "done" marks a finished build
[ -f "$CHAT/done" ] || { "$PY" -m anllm.train.chat_data --out "$CHAT/train.jsonl" --n 400 --seed 5 && touch "$CHAT/done"; }
step() { "$PY" - "$1" <<'PY'
import sys
from pathlib import Path

from anllm.train.checkpoint import latest_checkpoint

c = latest_checkpoint(Path(sys.argv[1]))
print(0 if c is None else int(c.name.split("-")[-1]))
PY
}
PATHS=(--set "output_dir=$OUT" --set "eval_file=$EVAL")
S=$(step "$OUT")
echo "== $(date -u +%FT%TZ) newest checkpoint: step $S"
RESUME=(); [ "$S" -gt 0 ] && RESUME=(--resume)
if [ "$S" -lt 400 ]; then
    "$PY" -m anllm -v train --config "$CFG" "${RESUME[@]}" "${PATHS[@]}" --set max_steps=400 \
        --set "train_files=[$RUNS/corpus-broad/train.jsonl, $MEM/train.jsonl]" --set window=24
    RESUME=(--resume)
fi
V2_FILES="train_files=[$RUNS/corpus-broad/train.jsonl, $MEM/train-long.jsonl$(printf ', %s' "$CHAT/train.jsonl"{,,,,})]"
if [ "$S" -lt 800 ]; then  # stage V2 trained at the window served until then
    "$PY" -m anllm -v train --config "$CFG" "${RESUME[@]}" "${PATHS[@]}" --set max_steps=800 --set "$V2_FILES" \
        --set block_size=2048 --set window=24
    RESUME=(--resume)
fi
"$PY" -m anllm -v train --config "$CFG" --resume "${PATHS[@]}" --set max_steps="${MAX_STEPS:-2000}" \
    --set "$V2_FILES" --set block_size=2048
echo "== $(date -u +%FT%TZ) v2 recipe done: $OUT/final"
