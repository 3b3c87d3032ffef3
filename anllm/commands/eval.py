"""``anllm eval ppl|qa|recall|bleu``: perplexity by cache decoding, multiple-choice QA, long-range recall, BLEU on
local files."""

from __future__ import annotations

import sys

from anllm.commands.common import add_model_args, emit_json, int_list, load_from_args, read_text
from anllm.commands.eval_acceptance import _load, add_adapter_arg
from anllm.config import AnLLMError
from anllm.policies import split_modes


def _budget(s: str | None) -> int | str | None:
    if s is None:
        return None
    try:
        return int(s)
    except ValueError:
        return s.strip().replace(";", ",")  # a policy among --policies whose mean KV size the others match


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate: perplexity (ppl), multiple-choice QA (qa), long-range recall (recall), translation BLEU (bleu),"
        " instruction following (assistant)",
    )
    ev = p.add_subparsers(dest="eval_command", required=True)

    q = ev.add_parser("ppl", help="perplexity by real chunked cache decoding, per policy")
    add_model_args(q)
    q.add_argument("--text-file", required=True, help="UTF-8 text to score")
    q.add_argument(
        "--policies", "--modes", dest="policies", default="full,anchor,streaming,sepllm",
        help="comma-separated cache policies or specs (--modes: former name)",
    )  # fmt: skip
    q.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens")
    q.add_argument(
        "--budget", default=None, help="KV entries for streaming/sepllm, or a policy among --policies (e.g. anchor)"
    )
    q.add_argument("--json", action="store_true", help='last line: {"<mode>": {"ppl", "kv_kept_frac", "tokens"}}')
    add_adapter_arg(q)
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

    q = ev.add_parser(
        "recall",
        help="long-range recall: a fact, filler, a question; exact match through each real cache at matched budgets",
        description="Generated memory items (seeded, no downloads) or your JSONL of {context, question, answer}, "
        "prefilled and greedily decoded through each mode's cache. Reports exact match and mean answer "
        "log-probability per mode, family and distance, and the KV entries kept (docs/evaluation.md).",
    )
    add_model_args(q)
    q.add_argument(
        "--policies", "--modes", dest="policies", default="full,anchor,streaming,sepllm",
        help="comma-separated cache policies or specs (--modes: former name)",
    )  # fmt: skip
    q.add_argument("--budget", default="anchor", help="the policy whose cache size the streaming/sepllm rows match")
    q.add_argument("--distances", default="64,256,1024,2048,4096", help="filler tokens between fact and question")
    q.add_argument("--n", type=int, default=5, help="items per family and distance")
    q.add_argument("--families", default="single,multi,chat,fewshot", help="single, multi, chat, fewshot")
    q.add_argument(
        "--filler-file", default=None, help="UTF-8 prose put between fact and question (default: KJV Genesis)"
    )
    q.add_argument(
        "--items", default=None, help='JSONL of {"context", "question", "answer"} instead of generated items'
    )
    q.add_argument("--seed", type=int, default=0, help="seed of the generated items")
    q.add_argument("--max-new-tokens", type=int, default=24, help="greedy tokens decoded per answer")
    q.add_argument("--no-chat", action="store_true", help="plain 'Question: ... Answer:' prompts, no chat template")
    q.add_argument("--plot", default=None, help="write accuracy vs distance (one line per mode) to this HTML file")
    q.add_argument("--json", action="store_true", help="last line: {rows, summary, seconds}")
    q.set_defaults(func=run_recall)

    q = ev.add_parser("bleu", help="sacrebleu BLEU on local files (score hypotheses or translate sources)")
    add_model_args(q)
    q.add_argument("--ref", required=True, help="references, one segment per line")
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--src", help="sources to translate, one per line")
    src.add_argument("--hyp", help="hypotheses to score (no model is loaded)")
    q.add_argument(
        "--policies", "--modes", dest="policies", default="full,anchor",
        help="cache policies to translate with (--modes: former name)",
    )  # fmt: skip
    q.add_argument("--template", default=None, help="prompt template with {src}")
    q.add_argument("--max-new-tokens", type=int, default=128)
    q.add_argument("--json", action="store_true", help='last line: {"<mode>": {"bleu", ...}}')
    q.set_defaults(func=run_bleu)

    from anllm.commands.eval_acceptance import register_acceptance  # the recall acceptance harness, budget sweep

    register_acceptance(ev)

    from anllm.commands.eval_assistant import register_assistant  # assistant behaviour: stops, follows instructions

    register_assistant(ev)


def run_ppl(args) -> int:
    from anllm.evaluation.ppl import perplexity_text

    text = read_text(None, args.text_file, "text")
    modes = split_modes(args.policies)
    budget = _budget(args.budget)
    lm = _load(args) if args.adapter else load_from_args(args)  # a checkpoint: unmerged on the default's base
    res = perplexity_text(
        lm, text, modes, chunk_size=args.chunk_size, max_tokens=args.max_tokens, budget=budget, progress=True
    )
    for r in res.values():
        print(
            f"{r.mode:<28} ppl {r.ppl:10.3f}  KV kept end {r.kv_kept_end}/{r.tokens} ({r.kv_kept_frac:.1%}), "
            f"mean {r.kv_kept_mean:.1f} ({r.kv_kept_mean_frac:.1%}), {r.seconds:.1f} s",
            file=sys.stderr,
        )
    if args.json:
        emit_json({m: r.to_dict() for m, r in res.items()})
    return 0


def run_recall(args) -> int:
    from tqdm.auto import tqdm

    from anllm.evaluation.recall import builtin_items, evaluate_recall, load_user_items

    if args.n < 1:
        raise AnLLMError(f"--n must be >= 1, got {args.n}")
    if args.max_new_tokens < 1:
        raise AnLLMError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    modes = split_modes(args.policies)
    budget = args.budget.strip().replace(";", ",") if args.budget and args.budget.lower() != "none" else None
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    distances = int_list(args.distances, "--distances")
    user = load_user_items(args.items) if args.items else None
    filler = read_text(None, args.filler_file, "filler") if args.filler_file else None
    if args.plot:
        _check_writable(args.plot)
    lm = load_from_args(args)
    items = user or builtin_items(lm, seed=args.seed, distances=distances, n=args.n, families=families, filler=filler)
    bars = []  # created at the first finished run: a setting refused up front prints only its error line

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="recall", unit="run", file=sys.stderr))
        bars[0].update(done - bars[0].n)

    res = evaluate_recall(
        lm,
        items,
        modes,
        budget=budget,
        chat=not args.no_chat,
        chunk_size=args.chunk_size,
        max_new_tokens=args.max_new_tokens,
        progress=progress,
    )
    for bar in bars:
        bar.close()
    print(f"{'mode':<10} {'family':<8} {'distance':>8} {'n':>3} {'EM':>6} {'logp':>7} {'KV':>8}", file=sys.stderr)
    for r in res.rows:
        print(
            f"{r.mode:<10} {r.family:<8} {r.distance:>8} {r.n:>3} {r.em:>6.1%} {r.logprob:>7.2f} {r.kv_entries:>8.1f}",
            file=sys.stderr,
        )
    if args.plot:
        from anllm.plots import recall_figure

        recall_figure(res.table(), title=f"Recall vs distance ({lm.name})").write_html(
            args.plot, include_plotlyjs="cdn"
        )
        print(f"plot written to {args.plot}", file=sys.stderr)
    if args.json:
        emit_json(res.to_dict())
    return 0


def _check_writable(path: str) -> None:
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        raise AnLLMError(f"--plot {p} is a directory; give a file name such as recall.html")
    if not p.parent.exists():
        raise AnLLMError(f"--plot {p}: the folder {p.parent} does not exist")


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
        lm,
        items,
        task=args.task,
        shots=args.shots,
        scorers=scorers,
        ac_placement=args.ac_placement,
        seed=args.seed,
        progress=True,
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
            modes=split_modes(args.policies),
            template=args.template or DEFAULT_TEMPLATE,
            max_new_tokens=args.max_new_tokens,
            progress=True,
        )
    for m, r in res.items():
        extra = "" if r.kv_kept_frac is None else f"  KV kept {r.kv_kept_frac:.1%}  {r.tokens_per_s:.1f} tok/s"
        print(f"{m:<10} BLEU {r.bleu:6.2f} ({r.segments} segments){extra}", file=sys.stderr)
    if args.json:
        emit_json({m: r.to_dict() for m, r in res.items()})
    return 0
