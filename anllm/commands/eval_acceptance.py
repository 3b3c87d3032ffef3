"""``anllm eval acceptance`` (the recall acceptance harness) and ``anllm eval sweep`` (the budget sweep)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from anllm.commands.common import int_list


def _words(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def register_acceptance(ev) -> None:
    """Add the ``acceptance`` and ``sweep`` subcommands to ``anllm eval``."""
    from anllm.commands.common import add_model_args

    q = ev.add_parser(
        "acceptance",
        help="recall acceptance: held-out forms and fillers, base reference row, 95%% bootstrap intervals",
        description="Held-out items (FORM_TEMPLATES; single, multi, chat, fewshot-recall) on two held-out fillers "
        "(KJV Genesis, the Nettle manual), through the base model's full cache (adapter disabled on the same model) "
        "and the default's full / anchor / StreamingLLM / SepLLM caches, budgets matched per item. Records are "
        "appended to OUT.jsonl as they finish; OUT.json (cells with intervals) and OUT.html (plot) at the end.",
    )
    add_model_args(q)
    q.add_argument("--out", required=True, help="output stem: writes OUT.jsonl, OUT.json and OUT.html")
    q.add_argument("--distances", default="256,1024,2048,4096", help="filler tokens between fact and question")
    q.add_argument("--n", type=int, default=15, help="items per family, distance and filler (4 families)")
    q.add_argument("--families", default="single,multi,chat,fewshot-recall")
    q.add_argument("--fillers", default="literary,technical", help="literary (KJV Genesis), technical (Nettle)")
    q.add_argument(
        "--policies",
        "--modes",  # the former name, kept as an alias
        dest="policies",
        default="full,anchor,streaming,sepllm",
        help="cache policies run on the adapted weights (must include anchor)",
    )
    q.add_argument("--no-reference", action="store_true", help="skip the base model's full-cache row")
    q.add_argument(
        "--baseline",
        default=None,
        help="another run's OUT.jsonl on the same items (e.g. the shipped adapter's): adds this run's exact match "
        "minus the baseline's per row and distance, paired over shared items with 95%% intervals",
    )
    _add_run_options(q, seed=7)
    q.set_defaults(func=run_acceptance_cmd)

    q = ev.add_parser(
        "sweep",
        help="budget sweep: recall EM and held-out perplexity vs KV budget, anchor / StreamingLLM / SepLLM",
        description="For KV budgets given as fractions of the context: recall exact match (held-out items) and "
        "perplexity (held-out texts) of the anchor cache (the sink/window/forced-anchor variant closest to the "
        "budget), StreamingLLM and SepLLM-style, on the default's weights and on the base's (adapter disabled). "
        "KV entries are counted through the real caches. Writes OUT.jsonl, OUT.json and OUT.html (Pareto plot).",
    )
    add_model_args(q)
    q.add_argument("--out", required=True, help="output stem: writes OUT.jsonl, OUT.json and OUT.html")
    q.add_argument("--budgets", default="0.04,0.08,0.16", help="KV budgets as fractions of the context")
    q.add_argument("--distances", default="1024", help="recall distances")
    q.add_argument("--n", type=int, default=2, help="recall items per family and distance (0: perplexity only)")
    q.add_argument("--filler", default="literary", choices=("literary", "technical"), help="recall filler")
    q.add_argument("--ppl-fillers", default="literary,technical", help="held-out texts scored for perplexity")
    q.add_argument("--ppl-tokens", type=int, default=2048, help="tokens of each text scored (0: recall only)")
    q.add_argument("--weights", default="default,base", help="default and/or base (adapter disabled)")
    _add_run_options(q, seed=11)
    q.set_defaults(func=run_sweep_cmd)


def add_adapter_arg(q) -> None:
    """``--adapter DIR``: with ``--model default``, another adapter than the shipped one (a training checkpoint)."""
    q.add_argument(
        "--adapter",
        default=None,
        help="with --model default: this peft adapter instead of the shipped one (e.g. a training checkpoint's "
        "adapter/); served with its anchor.json, or the shipped adapter's setting when it has none",
    )


def _add_run_options(q, *, seed: int) -> None:
    """The options both runs share: seed, answer length, adapter, and what to do with an existing OUT.jsonl."""
    add_adapter_arg(q)
    q.add_argument("--seed", type=int, default=seed)
    q.add_argument("--max-new-tokens", type=int, default=24)
    q.add_argument("--summarise", action="store_true", help="only summarise an existing OUT.jsonl (partial runs)")
    q.add_argument(
        "--resume",
        action="store_true",
        help="continue an existing OUT.jsonl (same settings): finished records are kept, the rest run and appended",
    )


def _load(args):
    from anllm.commands.common import load_from_args

    if args.model == "default":
        from anllm.evaluation.acceptance import load_adapted

        return load_adapted(args.adapter, device=args.device or "cpu")
    return load_from_args(args)


def _progress(total_label: str):
    from tqdm.auto import tqdm

    bars = []

    def step(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc=total_label, unit="item", file=sys.stderr))
        bars[0].update(done - bars[0].n)

    return step, bars


def run_acceptance_cmd(args) -> int:
    from anllm.commands.common import emit_json
    from anllm.evaluation.acceptance import (
        AcceptanceConfig,
        paired_differences,
        read_baseline,
        read_records,
        run_acceptance,
        summarise,
    )
    from anllm.plots import acceptance_figure

    stem = Path(args.out)
    jsonl = stem.with_suffix(".jsonl")  # --out was checked with --summarise/--resume (checks.check_out_stem)
    cfg = AcceptanceConfig(
        distances=int_list(args.distances, "--distances"),
        n=args.n,
        families=_words(args.families),
        fillers=_words(args.fillers),
        policies=_words(args.policies),
        reference=not args.no_reference,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        chunk_size=args.chunk_size,
    )
    baseline = read_baseline(args.baseline) if args.baseline else None  # checked before the model loads
    if not args.summarise:
        lm = _load(args)
        step, bars = _progress("acceptance")
        run_acceptance(lm, cfg, jsonl, progress=step, resume=args.resume)
        for b in bars:
            b.close()
    summary = {
        "config": {**cfg.__dict__},
        "command": shlex.join(["anllm", *args.argv]),
        **summarise(read_records(jsonl)),
    }
    if baseline is not None:
        summary["versus_baseline"] = {
            "baseline": args.baseline,
            "cells": paired_differences(baseline, read_records(jsonl)),
        }
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    acceptance_figure(summary["cells"]).write_html(stem.with_suffix(".html"), include_plotlyjs="cdn")
    print(f"{'filler':<10} {'dist':>5} {'row':<10} {'n':>4} {'EM':>6}  95% interval   KV", file=sys.stderr)
    for c in summary["cells"]:
        print(
            f"{c['filler']:<10} {c['distance']:>5} {c['row']:<10} {c['n']:>4} {c['em']:>6.1%}  "
            f"[{c['lo']:.1%}, {c['hi']:.1%}]  {c['kv_entries']:.0f}",
            file=sys.stderr,
        )
    if baseline is not None:
        print(f"\nminus {args.baseline}, paired over the items both finished:", file=sys.stderr)
        for c in summary["versus_baseline"]["cells"]:
            print(
                f"{c['filler']:<10} {c['distance']:>5} {c['row']:<10} {c['n']:>4} {c['baseline_em']:>6.1%} -> "
                f"{c['em']:>6.1%}  {c['diff']:+.1%} [{c['lo']:+.1%}, {c['hi']:+.1%}]",
                file=sys.stderr,
            )
    emit_json({k: summary[k] for k in ("cells", "items_complete", "versus_baseline") if k in summary})
    return 0


def run_sweep_cmd(args) -> int:
    from anllm.commands.common import emit_json
    from anllm.evaluation.acceptance import read_records
    from anllm.evaluation.sweep import SweepConfig, run_sweep, summarise_sweep
    from anllm.plots import sweep_figure

    stem = Path(args.out)
    jsonl = stem.with_suffix(".jsonl")  # --out was checked with --summarise/--resume (checks.check_out_stem)
    budgets = tuple(float(x) for x in _words(args.budgets))  # checked: checks.check_fractions
    cfg = SweepConfig(
        budgets=budgets,
        distances=int_list(args.distances, "--distances"),
        n=args.n,
        filler=args.filler,
        ppl_fillers=_words(args.ppl_fillers),
        ppl_tokens=args.ppl_tokens,
        weights=_words(args.weights),
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
    )
    if not args.summarise:
        lm = _load(args)
        run_sweep(lm, cfg, jsonl, progress=lambda s: print(s, file=sys.stderr, flush=True), resume=args.resume)
    summary = {
        "config": {**cfg.__dict__},
        "command": shlex.join(["anllm", *args.argv]),
        **summarise_sweep(read_records(jsonl)),
    }
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    sweep_figure(summary).write_html(stem.with_suffix(".html"), include_plotlyjs="cdn")
    for p in summary["recall"]:
        print(
            f"recall {p['weights']:<8} {p['method']:<10} b={p['budget']:.2f} KV {p['kv_frac']:.1%} "
            f"EM {p['em']:.1%} [{p['lo']:.1%}, {p['hi']:.1%}] n={p['n']}",
            file=sys.stderr,
        )
    for p in summary["ppl"]:
        print(
            f"ppl {p['weights']:<8} {p['filler']:<10} {p['method']:<10} b={p['budget']:.2f} KV {p['kv_frac']:.1%} "
            f"ppl {p['ppl']:.2f}",
            file=sys.stderr,
        )
    emit_json({"recall": summary["recall"], "ppl": summary["ppl"]})
    return 0
