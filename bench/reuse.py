"""Compress once, ask many: time to first token from a saved anchor cache vs re-prefilling document + question.

The first ``--tokens`` tokens of the built-in KJV Genesis passage (cut at a sentence end) are read once in anchor
mode and saved (``anllm compress``), and once in full mode for the file-size comparison. Then for each of ten
questions about the text:

* ``file``: load the anchor file, append the question, first token (the clock includes loading the file);
* ``full``: one-pass full-cache prefill of the same document + question tokens, first token (no file);
* the greedy answers (``--new-tokens``) of both, and of the in-memory anchor cache (must equal the file's).

    nice -n 10 python bench/reuse.py --model default --tokens 8000 --json docs/benchmarks-data/reuse.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from anllm.bench import builtin_passage
from anllm.chat import ChatSession, compress
from anllm.config import GenerationConfig
from anllm.generation import stream_generate
from anllm.models import load_model

QUESTIONS = [
    "What did God create in the beginning?",
    "What did God make on the fourth day?",
    "Which two trees were in the midst of the garden?",
    "What was the name of the first woman?",
    "Who killed Abel?",
    "Who was the father of Methuselah?",
    "How old was Methuselah when he died?",
    "What did God tell Noah to build?",
    "What were the names of Noah's sons?",
    "Which animal deceived the woman in the garden?",
]


def document(lm, n_tokens: int) -> str:
    """The longest prefix of the passage with at most ``n_tokens`` tokens that ends at a sentence end."""
    text = builtin_passage()
    ids = lm.tokenizer(text)["input_ids"][:n_tokens]
    cut = lm.tokenizer.decode(ids)
    return cut[: cut.rfind(".") + 1]


def first_and_answer(stream) -> tuple[float, str, float]:
    """(seconds to the first token, answer text, seconds in all) of a response stream started just now."""
    t0, first, parts = time.perf_counter(), None, []
    for r in stream:
        first = first if first is not None else time.perf_counter() - t0
        parts.append(r.text)
    return first, "".join(parts).strip(), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, default=8000, help="document length in tokens (at most)")
    ap.add_argument("--new-tokens", type=int, default=24, help="greedy answer length")
    ap.add_argument("--questions", type=int, default=len(QUESTIONS))
    ap.add_argument("--json", default=None, help="write all numbers to this file")
    args = ap.parse_args()
    lm = load_model(args.model)
    gen = GenerationConfig(max_new_tokens=args.new_tokens)
    doc = document(lm, args.tokens)
    out: dict = {"model": args.model, "threads": torch.get_num_threads(), "machine": platform.processor()}
    with tempfile.TemporaryDirectory() as d, torch.inference_mode():
        files = {}
        for mode in ("anchor", "full"):
            t0 = time.perf_counter()
            session = compress(lm, doc, mode)
            path = session.save(Path(d) / f"{mode}.kv")
            files[mode] = {
                "compress_s": time.perf_counter() - t0,
                "bytes": path.stat().st_size,
                **{k: session.stats()[k] for k in ("tokens_seen", "kv_entries", "kv_bytes")},
            }
            if mode == "anchor":
                in_memory = session
            print(f"{mode}: {files[mode]}", flush=True)
        out["files"] = files
        rows = []
        for q in QUESTIONS[: args.questions]:
            t0 = time.perf_counter()
            s = ChatSession.load(lm, Path(d) / "anchor.kv", gen=gen)
            load_s = time.perf_counter() - t0
            ttft, ans_file, _ = first_and_answer(s.ask(q))
            ttft += load_s
            prompt_ids = s.ids[: s.answer_spans[0][0]]  # document + question tokens, exactly as the file run saw
            mem = ChatSession(lm, gen=gen, cache=in_memory.cache, state=in_memory.state())
            _, ans_mem, _ = first_and_answer(mem.ask(q))
            ttft_full, ans_full, _ = first_and_answer(stream_generate(lm, prompt_ids, "full", gen))
            row = {
                "question": q, "prompt_tokens": len(prompt_ids), "load_s": load_s, "ttft_file_s": ttft,
                "ttft_full_s": ttft_full, "speedup": ttft_full / ttft, "answer_file": ans_file, "answer_full": ans_full,
                "file_equals_memory": ans_file == ans_mem, "file_equals_full": ans_file == ans_full,
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
        out["questions"] = rows
    out["summary"] = {
        "anchor_file_fraction_of_full": files["anchor"]["bytes"] / files["full"]["bytes"],
        "median_ttft_file_s": statistics.median(r["ttft_file_s"] for r in rows),
        "median_ttft_full_s": statistics.median(r["ttft_full_s"] for r in rows),
        "median_speedup": statistics.median(r["speedup"] for r in rows),
        "file_equals_memory": sum(r["file_equals_memory"] for r in rows),
        "file_equals_full": sum(r["file_equals_full"] for r in rows),
    }
    print(json.dumps(out["summary"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
