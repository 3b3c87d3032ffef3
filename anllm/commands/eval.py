"""``anllm eval ppl|qa|bleu``: perplexity by cache decoding, multiple-choice QA, BLEU on local files."""

from __future__ import annotations

import sys

from anllm.commands.common import add_model_args, emit_json, load_from_args, read_text
from anllm.policies import split_modes


def _budget(s: str | None) -> int | str | None:
    if s is None:
        return None
    try:
        return int(s)
    except ValueError:
        return s.strip().replace(";", ",")  # a mode among --modes whose mean KV size the others match


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate: perplexity (ppl), multiple-choice QA (qa), translation BLEU (bleu)")
    ev = p.add_subparsers(dest="eval_command", required=True)

    q = ev.add_parser("ppl", help="perplexity by real chunked cache decoding, per mode")
    add_model_args(q)
    q.add_argument("--text-file", required=True, help="UTF-8 text to score")
    q.add_argument("--modes", default="full,anchor,streaming,sepllm", help="comma-separated modes or specs")
    q.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens")
    q.add_argument(
        "--budget", default=None, help="KV entries for streaming/sepllm, or a mode among --modes (e.g. anchor) to match"
    )
    q.add_argument("--json", action="store_true", help='last line: {"<mode>": {"ppl", "kv_kept_frac", "tokens"}}')
    q.set_defaults(func=run_ppl)

    q = ev.add_parser("qa", help="log-likelihood multiple choice: AnSAN-masked pass and real anchor-cache decoding")
    add_model_args(q)
    q.add_argument("--task", required=True, help="toy | path/to/file.jsonl | openbookqa, piqa, boolq, ... (Hub)")
    q.add_argument("--shots", type=int, choices=[0, 5], default=0)
    q.add_argument("--limit", type=int, default=None, help="first N items only")
    q.add_argument("--scorers", default="masked,anchor,full,nocache", help="comma-separated subset")
    q.add_argument("--ac-placement", choices=["demo", "sentence"], default="demo", help="<AC> in AC few-shot")
    q.add_argument("--seed", type=int, default=1234, help="seed for drawing demonstrations")
    q.add_argument("--harness", action="store_true", help="run through lm-evaluation-harness (needs lm_eval)")
    q.add_argument("--json", action="store_true", help="print the result as one JSON line")
    q.set_defaults(func=run_qa)

    q = ev.add_parser("bleu", help="sacrebleu BLEU on local files (score hypotheses or translate sources)")
    add_model_args(q)
    q.add_argument("--ref", required=True, help="references, one segment per line")
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--src", help="sources to translate, one per line")
    src.add_argument("--hyp", help="hypotheses to score (no model is loaded)")
    q.add_argument("--modes", default="full,anchor", help="cache modes to translate with")
    q.add_argument("--template", default=None, help="prompt template with {src}")
    q.add_argument("--max-new-tokens", type=int, default=128)
    q.add_argument("--json", action="store_true", help='last line: {"<mode>": {"bleu", ...}}')
    q.set_defaults(func=run_bleu)


def run_ppl(args) -> int:
    from anllm.evaluation.ppl import perplexity_text

    text = read_text(None, args.text_file, "text")
    modes = split_modes(args.modes)
    budget = _budget(args.budget)
    lm = load_from_args(args)
    res = perplexity_text(lm, text, modes, chunk_size=args.chunk_size, max_tokens=args.max_tokens, budget=budget)
    for r in res.values():
        print(
            f"{r.mode:<28} ppl {r.ppl:10.3f}  KV kept end {r.kv_kept_end}/{r.tokens} ({r.kv_kept_frac:.1%}), "
            f"mean {r.kv_kept_mean:.1f} ({r.kv_kept_mean_frac:.1%}), {r.seconds:.1f} s",
            file=sys.stderr,
        )
    if args.json:
        emit_json({m: r.to_dict() for m, r in res.items()})
    return 0


def run_qa(args) -> int:
    from anllm.evaluation.qa import evaluate_qa, load_task

    scorers = tuple(s.strip() for s in args.scorers.split(",") if s.strip())
    if args.harness:
        from anllm.evaluation.harness import register_with_lm_eval, run_harness

        register_with_lm_eval()  # fail fast, before loading the model
        lm = load_from_args(args)
        res = run_harness(lm, args.task, shots=args.shots, limit=args.limit, scorer=scorers[0])
        print(res, file=sys.stderr)
        if args.json:
            emit_json(res)
        return 0
    items = load_task(args.task, args.limit)
    lm = load_from_args(args)
    res = evaluate_qa(
        lm, items, task=args.task, shots=args.shots, scorers=scorers, ac_placement=args.ac_placement, seed=args.seed
    )
    d = res.to_dict()
    for s, r in res.scorers.items():
        print(f"{s:<8} acc {r.acc:.3f}  acc_norm {r.acc_norm:.3f}  {r.seconds:.2f} s", file=sys.stderr)
    if d["kv_reduction_prompt"] is not None:
        print(f"C⇓ prompt {d['kv_reduction_prompt']:.3f}, after answer {d['kv_reduction_end']:.3f}", file=sys.stderr)
    for k, v in res.speedups().items():
        print(f"T⇑ {k[len('speedup_') :]} {v:.2f}x", file=sys.stderr)
    if args.json:
        emit_json(d)
    return 0


def run_bleu(args) -> int:
    from anllm.evaluation.bleu import DEFAULT_TEMPLATE, evaluate_bleu, read_lines

    refs = read_lines(args.ref, "reference")
    if args.hyp is not None:
        res = evaluate_bleu(None, refs, hypotheses=read_lines(args.hyp, "hypothesis"))
    else:
        srcs = read_lines(args.src, "source")
        lm = load_from_args(args)
        res = evaluate_bleu(
            lm,
            refs,
            sources=srcs,
            modes=split_modes(args.modes),
            template=args.template or DEFAULT_TEMPLATE,
            max_new_tokens=args.max_new_tokens,
        )
    for m, r in res.items():
        extra = "" if r.kv_kept_frac is None else f"  KV kept {r.kv_kept_frac:.1%}  {r.tokens_per_s:.1f} tok/s"
        print(f"{m:<10} BLEU {r.bleu:6.2f} ({r.segments} segments){extra}", file=sys.stderr)
    if args.json:
        emit_json({m: r.to_dict() for m, r in res.items()})
    return 0
