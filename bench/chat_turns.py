"""Bounded-memory chat: many turns of ~40-token user messages through one :class:`anllm.chat.ChatSession`.

User messages are consecutive ~40-token pieces of the built-in passage (KJV Genesis), each followed by a short
request; answers are greedy, at most ``--new-tokens``. Per turn: tokens seen, KV entries and bytes, time to the
first answer token (the new turn's prefill) and decode ms per token. Reports the first and the last ten turns.

    nice -n 10 python bench/chat_turns.py --model default --turns 50 --json docs/benchmarks-data/chat-turns.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import torch

from anllm.bench import builtin_passage
from anllm.chat import ChatSession
from anllm.config import GenerationConfig
from anllm.models import load_model


def messages(lm, n: int, n_tokens: int) -> list[str]:
    ids = lm.tokenizer(builtin_passage())["input_ids"]
    pieces = [lm.tokenizer.decode(ids[i * n_tokens : (i + 1) * n_tokens]).strip() for i in range(n)]
    return [f"{p} Summarise that." for p in pieces]


def summary(turns: list[dict]) -> dict:
    def med(key):
        return statistics.median(t[key] for t in turns)

    return {k: med(k) for k in ("first_token_s", "decode_ms_per_token", "seconds", "answer_tokens", "prompt_tokens")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--mode", default="anchor")
    ap.add_argument("--turns", type=int, default=50)
    ap.add_argument("--message-tokens", type=int, default=36, help="passage tokens per message (+ a short request)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    lm = load_model(args.model)
    session = ChatSession(lm, args.mode, gen=GenerationConfig(max_new_tokens=args.new_tokens))
    rows = []
    with torch.inference_mode():
        for text in messages(lm, args.turns, args.message_tokens):
            session.reply(text)
            t = dataclasses.asdict(session.turns[-1])
            t["decode_ms_per_token"] = 1e3 * (t["seconds"] - t["first_token_s"]) / max(t["answer_tokens"] - 1, 1)
            rows.append(t)
            print(json.dumps(t), flush=True)
    last = rows[-1]
    out = {
        "model": args.model,
        "mode": args.mode,
        "threads": torch.get_num_threads(),
        "turns": rows,
        "first_ten": summary(rows[:10]),
        "last_ten": summary(rows[-10:]),
        "kv_fraction_of_seen": last["kv_entries"] / last["tokens_seen"],
        "max_kv_entries": max(r["kv_entries"] for r in rows),
    }
    print(json.dumps({k: v for k, v in out.items() if k != "turns"}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
