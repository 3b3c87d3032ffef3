#!/usr/bin/env bash
# Issue 4: train the anchor adapter for `--model default` from scratch, on CPU (docs/adapter-training.md).
# Four stages over one deterministic data order (the checkpoint holds the step; the sample order is a function of it),
# then a fifth over 1,024-token blocks and a sixth at a higher LoRA rank:
#   1. steps 0-200: lr 5e-4 constant after 20 warm-up steps, KL to the base's full attention under the AnSAN mask
#      (configs/smollm2-anchor-adapter.yaml as committed);
#   2. steps 200-650: resumed with a cosine decay (over steps 20-650, floor 5 % of lr);
#   3. steps 650-800: resumed with full_kl_weight=1 (the same KL also under full attention, so normal full-cache use
#      stays close to the base) and a linear decay (over steps 20-800, floor 20 % of lr);
#   4. steps 800-1100: the served setting in the mask (1 sink + a 16-token window, anchor.json), full_kl_weight=1,
#      linear decay over steps 20-1100 (floor 20 %);
#   5. a new run (runs/smollm2-anchor-long) that starts from stage 4's final/ adapter (init_adapter) and packs the same
#      corpus into 1,024-token blocks (batch 1, so 1,024 tokens per step as before): 500 steps, constant lr 2e-4, the
#      served setting, full_kl_weight=1;
#   6. a new run (runs/smollm2-anchor-r32) that starts from stage 5's final/ with the LoRA rank raised from 16 to 32
#      (grow_lora_r: the new directions start at zero, so step 0 is stage 5's model): 600 steps as in stage 5, with
#      bf16 autocast (weights and optimizer state stay float32). The shipped adapter is this stage's final/, stored in
#      bfloat16.
# Every stage is resumable: rerun this script after a stop and it continues from the newest checkpoint.
# Needs the Debian fortunes corpus: apt-get install -y fortunes fortunes-min
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
PY=${PYTHON:-.venv/bin/python}
OUT=runs/smollm2-anchor
CFG=configs/smollm2-anchor-adapter.yaml
[ -f runs/corpus-fortunes/train.jsonl ] || "$PY" -m anllm.train.corpus --out runs/corpus-fortunes --sources fortunes
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
step() { "$PY" - "$1" <<'PY'
import sys
from anllm.train.checkpoint import latest_checkpoint
from pathlib import Path
c = latest_checkpoint(Path(sys.argv[1]))
print(0 if c is None else int(c.name.split("-")[-1]))
PY
}
S=$(step "$OUT")
RESUME=(); [ "$S" -gt 0 ] && RESUME=(--resume)
if [ "$S" -lt 200 ]; then
    "$PY" -m anllm -v train --config "$CFG" "${RESUME[@]}" --set max_steps=200 --set num_threads=2
    RESUME=(--resume)
fi
if [ "$S" -lt 650 ]; then
    "$PY" -m anllm -v train --config "$CFG" "${RESUME[@]}" --set max_steps=650 --set num_threads=2 \
        --set lr_scheduler=cosine --set min_lr_ratio=0.05
fi
if [ "$S" -lt 800 ]; then
    "$PY" -m anllm -v train --config "$CFG" --resume --set max_steps=800 --set num_threads=2 --set lr_scheduler=linear \
        --set min_lr_ratio=0.2 --set full_kl_weight=1.0 --set eval_every=25
fi
if [ "$(step "$OUT")" -lt 1100 ]; then  # every stage writes final/: ask the checkpoint
    "$PY" -m anllm -v train --config "$CFG" --resume --set max_steps=1100 --set num_threads=2 --set lr_scheduler=linear \
        --set min_lr_ratio=0.2 --set full_kl_weight=1.0 --set eval_every=25 --set n_sink=1 --set window=16
fi
LONG=runs/smollm2-anchor-long
RESUME=(); [ "$(step "$LONG")" -gt 0 ] && RESUME=(--resume)
"$PY" -m anllm -v train --config "$CFG" "${RESUME[@]}" --set init_adapter="$OUT/final" --set output_dir="$LONG" \
    --set block_size=1024 --set batch_size=1 --set max_steps=500 --set lr_scheduler=constant --set lr=2.0e-4 \
    --set warmup_steps=0 --set n_sink=1 --set window=16 --set full_kl_weight=1.0 --set eval_every=25 --set num_threads=2
R32=runs/smollm2-anchor-r32
RESUME=(); [ "$(step "$R32")" -gt 0 ] && RESUME=(--resume)
"$PY" -m anllm -v train --config "$CFG" "${RESUME[@]}" --set init_adapter="$LONG/final" --set grow_lora_r=32 \
    --set output_dir="$R32" --set block_size=1024 --set batch_size=1 --set max_steps=600 --set lr_scheduler=constant \
    --set lr=2.0e-4 --set warmup_steps=0 --set n_sink=1 --set window=16 --set full_kl_weight=1.0 --set eval_every=50 \
    --set num_threads=2 --set precision=bf16
# the adapter: runs/smollm2-anchor-r32/final. anllm ships it as anllm/adapters/smollm2-135m-anchor/ (weights,
# adapter_config.json with base_model_name_or_path = HuggingFaceTB/SmolLM2-135M-Instruct, anchor.json = how `default`
# serves anchor mode; the model card README.md stays), written by anllm.models.export_adapter:
"$PY" - <<'PY'
import torch

from anllm.config import AnchorConfig
from anllm.models import ADAPTER_DIR, SMOLLM2_HUB_ID, export_adapter

export_adapter(
    "runs/smollm2-anchor-r32/final",
    ADAPTER_DIR,
    AnchorConfig(n_sink=1, window=16),
    dtype=torch.bfloat16,
    base=SMOLLM2_HUB_ID,
)
PY
