#!/usr/bin/env bash
# Everything that needs a GPU, in one command (a lent accelerator is used in a single call), one JSON summary:
#   1. every gpu-marked test (the files under tests/ that carry a gpu mark);
#   2. a training step, FlexAttention (AnSAN BlockMask) vs the dense 4D mask through SDPA, bf16, 4k and 8k tokens
#      (bench/train_step.py --gpu);
#   3. the bf16 bench at 32k tokens: full vs anchor cache, prefill s, decode tok/s, KV bytes, peak CUDA memory
#      (bench/gpu_check.py bench);
#   4. the vLLM plugin's anchor attention on the GPU (bench/gpu_check.py tiles): a decode step of 32 requests at 8k
#      tokens and a prefill of 4 x 2k over the kept rows in a paged cache, against the dense one-pass result (parity)
#      and timed against full attention over every token. vLLM itself is not in the GPU image and cannot be fetched
#      there, and the plugin has no GPU runner yet (docs/serving.md "GPU plan"): this is the part of it that is torch.
# Models are SmolLM2-135M's shapes with random weights (--model smollm2-shape): the machine needs no download, and
# speed and memory depend on shapes, not weights. Each step has its own time limit; the whole fits in 9 minutes on
# one large GPU (H100/H200 class).
#
#   bash bench/gpu_check.sh [--dry-run] [--out DIR]      # DRY_RUN=1 works too; DIR defaults to out/gpu_check
#
# --dry-run: the same four steps at toy sizes on CPU (tiny-random, dense kind only: FlexAttention has no backward
# on CPU), in well under a minute; tests/test_gpu_check.py runs it. Exit status 0 when the summary says ok.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=${DRY_RUN:-0}
OUT=out/gpu_check
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    --out=*) OUT=${1#--out=} ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
mkdir -p "$OUT"
rm -f "$OUT"/steps.tsv "$OUT"/gpu_tests.xml "$OUT"/train_step.json "$OUT"/bench_long.json "$OUT"/vllm_tiles.json

if [ "$DRY" = 1 ]; then
  MODE=dry-run
  TRAIN=(--model tiny-random --device cpu --dtype float32 --seqs 64 128 --steps 1 --warmup 0 --kinds dense)
  LONG=(--model tiny-random --device cpu --dtype float32 --context 256 --new-tokens 4 --repeats 1)
  TILES=(--device cpu --dtype float32 --requests 2 --context 256 --prefill-requests 2 --prefill 128 --reps 1)
else
  MODE=gpu
  TRAIN=(--model smollm2-shape --device cuda --dtype bfloat16 --seqs 4096 8192 --steps 3 --warmup 1)
  LONG=(--model smollm2-shape --device cuda --dtype bfloat16 --context 32768 --new-tokens 32 --repeats 2)
  TILES=(--device cuda --dtype bfloat16 --requests 32 --context 8192 --prefill-requests 4 --prefill 2048 --reps 20)
fi

# step NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.log, record "NAME<TAB>rc<TAB>milliseconds"
step() {
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s%N)
  echo "== $name (limit ${limit}s): $*" >&2
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((($(date +%s%N) - t0) / 1000000))" >>"$OUT/steps.tsv"
  [ $rc -eq 0 ] || { echo "   $name exited $rc; last lines of $OUT/$name.log:" >&2; tail -n 5 "$OUT/$name.log" >&2; }
}

mapfile -t GPU_TEST_FILES < <(grep -l "mark\.gpu" tests/test_*.py)
step gpu_tests 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu --junitxml "$OUT/gpu_tests.xml" "${GPU_TEST_FILES[@]}"
step train_step 210 "$PY" bench/train_step.py --gpu "${TRAIN[@]}" --json-out "$OUT/train_step.json"
step bench_long 120 "$PY" bench/gpu_check.py bench "${LONG[@]}" --json-out "$OUT/bench_long.json"
step vllm_tiles 90 "$PY" bench/gpu_check.py tiles "${TILES[@]}" --json-out "$OUT/vllm_tiles.json"

"$PY" bench/gpu_check.py summary "$OUT" --mode "$MODE" >"$OUT/summary.json"
rc=$?
cat "$OUT/summary.json"
exit $rc
