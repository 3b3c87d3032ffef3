"""Serving benchmark: vLLM full vs vLLM + anchors vs anllm's own loops (issue 24, docs/serving.md "Benchmark").

One engine per invocation (vLLM's full-cache run loads no plugin), one JSON line appended to ``--out``:

    .venv-vllm/bin/python bench/vllm/serving.py --model-dir DIR --engine vllm-anchor --requests 8 \
        --prompt-tokens 2048 --new-tokens 64 --out runs/serving.jsonl

``--engine``: ``vllm-full`` (vLLM as shipped, ``VLLM_PLUGINS=''``), ``vllm-anchor`` (the plugin), ``anllm-anchor`` /
``anllm-full`` (``anllm.generation.generate_batch``, one batch, the default model). Prompts are windows of the
bundled KJV Genesis passage (``anllm/resources/kjv_genesis.txt``), a different window per request; greedy, EOS
ignored, so every request makes ``--new-tokens`` tokens. All requests are submitted at once.

Reported: wall time from submission to the last token, aggregate output tokens/s, time to first token per request
(vLLM: when its first token comes out of ``step()``; anllm's batch loop: the wall time of the same batch with one new
token), the most requests vLLM ran at once (its ``num_requests_running`` gauge after every step), preemptions, the
KV pool (blocks x block size, vLLM's own accounting, fixed with ``--kv-blocks``) and the peak RSS of the whole
process tree (engine processes included, sampled after every step). ``--capacity`` adds, without running, what the
anchor scheduler would admit in the same pool: the peak rows of each request over its prefill (the scheduler's own
``KeptRows.peak``) against vLLM's ``ceil((prompt + new) / block_size)`` blocks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEXT = ROOT / "anllm" / "resources" / "kjv_genesis.txt"
ENGINES = ("vllm-full", "vllm-anchor", "anllm-anchor", "anllm-full")


def make_prompts(tokenizer, n: int, prompt_tokens: int) -> list[list[int]]:
    """``n`` windows of ``prompt_tokens`` tokens of the passage, each starting elsewhere (the text wraps)."""
    ids = tokenizer(TEXT.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    while len(ids) < 2 * prompt_tokens:
        ids = ids + ids
    stride = max(1, (len(ids) - prompt_tokens) // max(n, 1))
    return [ids[i * stride % (len(ids) - prompt_tokens) :][:prompt_tokens] for i in range(n)]


class PeakRSS:
    """The largest resident memory of this process and its descendants, sampled every 0.2 s in a thread."""

    def __init__(self) -> None:
        import psutil

        self._me = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        total = 0
        for p in [self._me, *self._me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 - a child that just exited
                pass
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def run_vllm(args, prompts) -> dict:
    from vllm import LLM, SamplingParams

    engine = dict(
        model=args.model_dir, dtype="float32", max_model_len=args.prompt_tokens + args.new_tokens + 16,
        gpu_memory_utilization=args.gpu_memory_utilization, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, seed=0, disable_log_stats=False, enforce_eager=True,
        enable_prefix_caching=False, block_size=args.block_size,
    )  # fmt: skip
    if args.kv_blocks:
        engine["num_gpu_blocks_override"] = args.kv_blocks
    if args.engine == "vllm-anchor":
        from anllm.serving.vllm import ENGINE_ARGS

        engine.update(ENGINE_ARGS)
    llm = LLM(**engine)
    eng = llm.llm_engine
    cache = eng.vllm_config.cache_config
    params = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)

    def gauge(name: str) -> float:
        return sum(float(getattr(m, "value", 0)) for m in llm.get_metrics() if m.name == name)

    first, done, running = {}, {}, 0
    t0 = time.perf_counter()
    for i, ids in enumerate(prompts):
        eng.add_request(str(i), {"prompt_token_ids": ids}, params)
    while eng.has_unfinished_requests():
        for out in eng.step():
            now = time.perf_counter() - t0
            if out.outputs and out.outputs[0].token_ids and out.request_id not in first:
                first[out.request_id] = now
            if out.finished:
                done[out.request_id] = now
        running = max(running, int(gauge("vllm:num_requests_running")))
    wall = time.perf_counter() - t0
    preemptions = int(sum(float(getattr(m, "value", 0)) for m in llm.get_metrics() if "num_preemptions" in m.name))
    return {
        "wall_s": wall, "ttft_s": [first[str(i)] for i in range(len(prompts))], "max_running": running,
        "preemptions": preemptions, "kv_blocks": int(cache.num_gpu_blocks), "block_size": int(cache.block_size),
    }  # fmt: skip


def run_anllm(args, prompts) -> dict:
    import torch

    from anllm.generation import GenerationConfig, generate_ids
    from anllm.models import load_model

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores this process may use (taskset)
    lm = load_model(args.anllm_model)
    policy = "anchor" if args.engine == "anllm-anchor" else "full"
    ids = torch.tensor(prompts)  # (B, T): every window has the same length, no padding
    t0 = time.perf_counter()
    out = generate_ids(lm, ids, None, policy, GenerationConfig(max_new_tokens=args.new_tokens, stop_on_eos=False))
    wall = time.perf_counter() - t0
    assert all(len(o) == args.new_tokens for o in out)
    t1 = time.perf_counter()
    generate_ids(lm, ids, None, policy, GenerationConfig(max_new_tokens=1, stop_on_eos=False))
    ttft = time.perf_counter() - t1
    return {"wall_s": wall, "ttft_s": [ttft] * len(prompts), "max_running": len(prompts), "preemptions": 0}


def capacity(args, prompts, tokenizer) -> dict:
    """Requests of this shape that fit a pool of ``--kv-blocks`` blocks: vLLM full vs the anchor scheduler's rule."""
    from types import SimpleNamespace

    from anllm.serving.export import read_served_anchor
    from anllm.serving.vllm.rows import KeptRows, blocks_for

    rows = KeptRows(read_served_anchor(args.model_dir))
    peaks, kept = [], []
    for i, ids in enumerate(prompts):
        request = SimpleNamespace(request_id=str(i), all_token_ids=ids, num_tokens=len(ids))
        peaks.append(blocks_for(rows.peak(request, 0, args.max_num_batched_tokens), args.block_size))
        kept.append(blocks_for(rows.kept(request, len(ids)) + args.new_tokens, args.block_size))
    full = math.ceil((args.prompt_tokens + args.new_tokens) / args.block_size)
    pool = args.kv_blocks - 1  # vLLM keeps one null block
    return {
        "pool_blocks": pool, "full_blocks_per_request": full, "full_requests": pool // full,
        "anchor_peak_blocks_per_request": max(peaks), "anchor_requests_admitted": pool // max(peaks),
        "anchor_decode_blocks_per_request": max(kept), "anchor_requests_decoding": pool // max(kept),
    }  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True, help="an `anllm export` folder (vLLM engines; prompts' tokenizer)")
    p.add_argument("--engine", choices=ENGINES, required=True)
    p.add_argument("--anllm-model", default="default", help="anllm engines: the model to load (default: default)")
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=2048)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--kv-blocks", type=int, default=0, help="fix vLLM's KV pool (blocks); 0 = vLLM's default")
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    p.add_argument("--capacity", action="store_true", help="also compute what fits in --kv-blocks (no run)")
    p.add_argument("--out", required=True, help="append the result here (JSON lines)")
    args = p.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if args.engine == "vllm-full":
        os.environ["VLLM_PLUGINS"] = ""  # vLLM as shipped: the anllm plugin is not loaded
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    prompts = make_prompts(tokenizer, args.requests, args.prompt_tokens)
    with PeakRSS() as rss:
        result = run_vllm(args, prompts) if args.engine.startswith("vllm") else run_anllm(args, prompts)
    n_out = args.requests * args.new_tokens
    cores = len(os.sched_getaffinity(0))
    ttft = sorted(result.pop("ttft_s"))
    record = {
        "engine": args.engine, "requests": args.requests, "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens, "wall_s": round(result["wall_s"], 1),
        "output_tokens_per_s": round(n_out / result.pop("wall_s"), 2),
        "ttft_mean_s": round(sum(ttft) / len(ttft), 1), "ttft_max_s": round(ttft[-1], 1),
        "peak_rss_gib": round(rss.peak / 2**30, 2), **result,
        "machine": f"{platform.machine()}, {cores} of {os.cpu_count()} CPUs, {platform.platform()}",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }  # fmt: skip
    if args.capacity:
        if not args.kv_blocks:
            p.error("--capacity needs --kv-blocks (the pool to fill)")
        record["capacity"] = capacity(args, prompts, tokenizer)
    with open(args.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
