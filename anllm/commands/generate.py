"""``anllm generate``: stream a completion to stdout (or JSON lines with --json)."""

from __future__ import annotations

import sys

from anllm.commands.common import add_model_args, emit_json, load_from_args, read_text
from anllm.config import GenerationConfig
from anllm.stats import RunStats


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text with a full or anchor KV cache")
    add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", help="read the prompt from a UTF-8 file")
    p.add_argument(
        "--policy", "--mode", dest="policy", default=None,
        help="cache policy: full | anchor | streaming | sepllm | spec (default: anchor if the model was trained for "
        "it; --mode: former name)",
    )  # fmt: skip
    p.add_argument("--cache", default=None, help="continue a file written by anllm compress (the prompt is a question)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--raw", action="store_true", help="no chat template: continue the text as is")
    p.add_argument("--json", action="store_true", help="one JSON object per token, then a summary line")
    p.set_defaults(func=run)


def run(args) -> int:
    from anllm.generation import stream_generate

    gen = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop_strings=tuple(args.stop),
        chat=not args.raw,
    )
    prompt = read_text(args.prompt, args.prompt_file)
    lm = load_from_args(args)
    for note in lm.notes:
        print(f"note: {note}", file=sys.stderr)
    responses = _from_cache(lm, args, gen, prompt) if args.cache else None
    if args.policy is None:
        args.policy = lm.default_mode
        if args.policy == "full":
            print(
                "note: this model was not trained for anchors, so --policy defaults to full "
                "(pass --policy anchor to see training-free anchor decoding)",
                file=sys.stderr,
            )
    text, last, n_anchor = [], None, 0
    for r in responses or stream_generate(lm, prompt, args.policy, gen):
        text.append(r.text)
        n_anchor += r.is_anchor
        last = r
        if args.json:
            emit_json(r.to_dict())
        else:
            sys.stdout.write(r.text)
            sys.stdout.flush()
    s = last.stats if last else RunStats(kv_entries=0, kv_full_entries=0)
    summary = {
        "summary": True,
        "model": args.model,
        "policy": args.policy,
        "text": "".join(text),
        "generated_tokens": s.new_tokens,
        "prompt_tokens": s.prompt_tokens,
        "finish_reason": last.finish_reason if last else "length",
        "generated_anchors": n_anchor,
        "kv_entries": s.kv_entries,
        "kv_full_entries": s.kv_full_entries,
        "kv_bytes": s.kv_bytes,
        "n_evicted": s.n_evicted,
        "prefill_s": s.prefill_s,
        "elapsed_s": s.elapsed_s,
        "tokens_per_s": s.tokens_per_s if last else 0.0,
    }
    if args.json:
        emit_json(summary)
    else:
        sys.stdout.write("\n")
        print(
            f"[{args.policy}] {s.new_tokens} tokens, {summary['tokens_per_s']:.1f} tok/s, "
            f"KV kept {s.kv_entries}/{s.kv_full_entries} ({s.kv_kept_frac:.1%})",
            file=sys.stderr,
        )
    return 0


def _from_cache(lm, args, gen, prompt):
    """The answer stream for ``prompt`` asked of the document saved in ``args.cache`` (a fresh copy of it)."""
    from anllm.chat import ChatSession

    session = ChatSession.load(lm, args.cache, args.policy, gen=gen)
    args.policy = type(session.cache.policy).name
    return session.ask(prompt)
