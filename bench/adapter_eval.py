"""Evaluate an anchor adapter for SmolLM2-135M-Instruct against the training-free base (issue 4's table).

Perplexity by real cache decoding (``anllm.evaluation.ppl``) on held-out English text, for the base and for the
base with the peft adapter merged: full cache, anchor cache (plus any ``anchor:sink=N`` ablation), and
StreamingLLM / SepLLM at the mean KV budget of ``--budget`` (a mode among ``--modes``; default the anchor cache).
``--chat`` adds greedy answers of the adapted model to ten chat prompts (``--chat-mode``, repeatable, default
anchor), with the KV cache kept; ``--json-out`` writes everything to one JSON file (the model card's numbers),
``--markdown`` prints the tables. Inside ``--modes`` and ``--budget``, ``;`` separates a spec's parameters:

    python bench/adapter_eval.py --adapter anllm/adapters/smollm2-135m-anchor --text anllm/resources/heldout_prose.txt \
        --modes "full,anchor,anchor:sink=1;window=16,streaming,sepllm" --budget "anchor:sink=1;window=16"

    python bench/adapter_eval.py --adapter runs/smollm2-anchor/checkpoints/step-0000200/adapter \
        --text runs/corpus-fortunes/heldout.txt --text anllm/resources/kjv_genesis.txt --max-tokens 1024
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import replace
from pathlib import Path

import torch

from anllm.ablations import Variant, run_variants
from anllm.config import GenerationConfig
from anllm.evaluation.ppl import perplexity_text
from anllm.generation import generate
from anllm.models import load_model
from anllm.policies import split_modes

MODES = ("full", "anchor", "anchor:sink=1", "streaming", "sepllm")
CHAT_PROMPTS = (
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "Explain what a black hole is in two sentences.",
    "Write a short poem about the sea.",
    "What is the difference between weather and climate?",
    "How do I make a cup of tea?",
    "Why is the sky blue?",
    "Name three animals that live in the Arctic.",
    "What does a computer's CPU do?",
    "Summarise the story of Cinderella in a few sentences.",
)


def with_adapter(lm, adapter: str):
    """A copy of the LoadedModel with the peft adapter merged into a copy of its weights (``lm`` is untouched)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(lm.model), adapter).merge_and_unload().eval()
    path = Path(adapter)
    label = path.parent.name if path.name == "adapter" else path.name  # checkpoints/step-N/adapter -> step-N
    return replace(lm, model=model, name=f"{lm.name}+{label}", anchor_trained=True)


def evaluate(
    lm, texts: dict[str, str], modes: tuple[str, ...], max_tokens: int, chunk_size: int, budget: str = "anchor"
) -> list[dict]:
    """Perplexity of every text (name -> text) under every mode; streaming/sepllm get ``budget``'s mean size."""
    rows = []
    for name, text in texts.items():
        res = perplexity_text(lm, text, modes, chunk_size=chunk_size, max_tokens=max_tokens, budget=budget)
        for r in res.values():
            rows.append({"model": lm.name, "text": name, "mode": r.mode, "ppl": r.ppl,
                         "kv_kept_mean_frac": r.kv_kept_mean_frac, "kv_kept_end": r.kv_kept_end,
                         "kv_kept_frac": r.kv_kept_frac, "tokens": r.tokens})  # fmt: skip
    return rows


ABLATION = (
    Variant("anchors (paper rule)"),
    Variant("anchors + 1 sink", anchor={"n_sink": 1}),
    Variant("anchors + 4 sinks", anchor={"n_sink": 4}),
    Variant("anchors + window 16", anchor={"window": 16}),
    Variant("anchors + 1 sink + window 8", anchor={"n_sink": 1, "window": 8}),
    Variant("anchors + 1 sink + window 16", anchor={"n_sink": 1, "window": 16}),
    Variant("anchors + 4 sinks + window 16", anchor={"n_sink": 4, "window": 16}),
    Variant("anchors + 1 sink + window 24", anchor={"n_sink": 1, "window": 24}),
    Variant("anchors + 1 sink + window 32", anchor={"n_sink": 1, "window": 32}),
    Variant("anchors see anchors", anchor={"anchors_see_anchors": True}),
    Variant("compact positions", anchor={"position_policy": "compact"}),
)


def ablation(lm, texts: dict[str, str], max_tokens: int, chunk_size: int) -> list[dict]:
    """The EP anchor-cache variants (sinks, window, visibility, positions) by real cache decoding."""
    rows = []
    for name, text in texts.items():
        for r in run_variants(lm, text, ABLATION, max_tokens=max_tokens, chunk_size=chunk_size, progress=True):
            rows.append({"model": lm.name, "text": name, "variant": r.name, "ppl": r.ppl,
                         "kv_kept_mean_frac": r.kv_kept_mean_frac, "kv_kept_end_frac": r.kv_kept_end_frac,
                         "tokens": r.tokens})  # fmt: skip
    return rows


def chat(lm, max_new_tokens: int, mode: str = "anchor") -> list[dict]:
    """Greedy answers in ``mode``, with the cache kept at the end against a full cache's size."""
    out = []
    for prompt in CHAT_PROMPTS:
        r = generate(lm, prompt, mode, GenerationConfig(max_new_tokens=max_new_tokens))
        out.append({"prompt": prompt, "mode": mode, "answer": r.text.strip(), "finish": r.finish_reason,
                    "kv_kept": r.kv_entries, "kv_full": r.kv_full_entries})  # fmt: skip
    return out


def markdown(rows: list[dict]) -> str:
    """One table per text: a row per model, a column per mode (perplexity), plus the anchor cache's KV kept."""
    lines = []
    for text in dict.fromkeys(r["text"] for r in rows):
        sel = [r for r in rows if r["text"] == text]
        modes = list(dict.fromkeys(r["mode"] for r in sel))
        lines += [f"**{text}** ({sel[0]['tokens']} tokens)", "", "| model | " + " | ".join(modes) + " |",
                  "|---" * (len(modes) + 1) + "|"]  # fmt: skip
        for model in dict.fromkeys(r["model"] for r in sel):
            ppl = {r["mode"]: r["ppl"] for r in sel if r["model"] == model}
            lines.append(f"| {model} | " + " | ".join(f"{ppl[m]:.2f}" for m in modes) + " |")
        kv = {r["mode"]: r for r in sel if r["model"] == sel[0]["model"]}
        lines += ["", "KV kept (mean over chunks / at the end): " + "; ".join(
            f"{m} {kv[m]['kv_kept_mean_frac']:.1%} / {kv[m]['kv_kept_frac']:.1%}" for m in modes), ""]  # fmt: skip
    return "\n".join(lines)


def curve(metrics: Path) -> str:
    """The run's learning curve as Markdown: held-out perplexities and the mean training loss between evaluations."""
    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    evals = [r for r in recs if "eval_ppl_anchor" in r]
    steps = [r for r in recs if "loss" in r]
    base = evals[0]["eval_ppl_anchor"]
    lines = ["| step | tokens seen | lr | mean KL loss (since previous row) | held-out full ppl | held-out anchor ppl "
             "| anchor / step-0 anchor |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    prev = 0
    for e in evals:
        window = [r for r in steps if prev < r["step"] <= e["step"]]
        loss = f"{sum(r['loss'] for r in window) / len(window):.3f}" if window else "–"
        lr = f"{window[-1]['lr']:.2e}" if window else "–"
        lines.append(f"| {e['step']} | {e['tokens_seen']:,} | {lr} | {loss} | {e['eval_ppl_full']:.2f} "
                     f"| {e['eval_ppl_anchor']:.2f} | {e['eval_ppl_anchor'] / base:.3f} |")  # fmt: skip
        prev = e["step"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapter", help="a peft adapter directory (adapter_config.json)")
    p.add_argument("--text", action="append", default=[], help="held-out UTF-8 text (repeatable)")
    p.add_argument("--curve", type=Path, metavar="METRICS", help="print a training run's learning curve and exit")
    p.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated modes, ';' inside a spec (default {','.join(MODES)})"
    )
    p.add_argument(
        "--budget", default="anchor", help="the mode whose mean cache size streaming/sepllm get (';' inside)"
    )
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-base", action="store_true", help="evaluate only the adapted model (base rows known)")
    p.add_argument("--chat", type=int, default=0, metavar="N", help="also answer the ten chat prompts, N new tokens")
    p.add_argument(
        "--chat-mode",
        action="append",
        help="cache policy for --chat, repeatable (default anchor; e.g. anchor:sink=1,window=16)",
    )
    p.add_argument("--ablation", action="store_true", help="also run the anchor-cache variants (sinks, window, ...)")
    p.add_argument("--json-out", type=Path, help="write rows (and chat answers) to this JSON file")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = p.parse_args()
    if args.curve:
        print(curve(args.curve))
        return
    if not args.adapter or not (args.text or args.chat):
        p.error("--adapter and at least one --text or --chat are needed (or --curve)")
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = split_modes(args.modes)
    budget = args.budget.replace(";", ",")
    texts = {Path(t).name: Path(t).read_text(encoding="utf-8") for t in args.text}  # read once, used by every run
    base = load_model("smollm2-135m")
    rows = [] if args.no_base else evaluate(base, texts, modes, args.max_tokens, args.chunk_size, budget)
    adapted = with_adapter(base, args.adapter)
    rows += evaluate(adapted, texts, modes, args.max_tokens, args.chunk_size, budget)
    for r in rows:
        print(json.dumps(r), flush=True)
    ablations = []
    if args.ablation:
        for lm in ([] if args.no_base else [base]) + [adapted]:
            ablations += ablation(lm, texts, args.max_tokens, args.chunk_size)
    for r in ablations:
        print(json.dumps(r), flush=True)
    answers = (
        [a for mode in (args.chat_mode or ["anchor"]) for a in chat(adapted, args.chat, mode)] if args.chat else []
    )
    for a in answers:
        print(json.dumps(a), flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps({"adapter": args.adapter, "max_tokens": args.max_tokens,
                                             "chunk_size": args.chunk_size, "rows": rows, "ablation": ablations,
                                             "chat": answers},
                                            indent=1) + "\n")  # fmt: skip
    if args.markdown:
        print(markdown(rows))
    if args.no_base or not args.text:
        return
    for text in dict.fromkeys(r["text"] for r in rows):
        by = {(r["model"], r["mode"]): r["ppl"] for r in rows if r["text"] == text}
        b_full, b_anc = by[(base.name, "full")], by[(base.name, "anchor")]
        a_full = by[(adapted.name, "full")]
        print(f"{text}: base full {b_full:.2f} anchor {b_anc:.2f} | adapted full {a_full:.2f} "
              f"(ratio {a_full / b_full:.3f}, <= 1.10?)")  # fmt: skip
        for m in (m for m in modes if m.startswith("anchor")):  # every anchor setting against the paper-rule base
            a = by[(adapted.name, m)]
            print(f"  adapted {m} {a:.2f}: / base anchor {a / b_anc:.3f} (<= 0.5?), / base full {a / b_full:.3f} "
                  f"(<= 1.15?), / base {m} {a / by[(base.name, m)]:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
