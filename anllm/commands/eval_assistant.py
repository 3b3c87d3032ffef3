"""``anllm eval assistant``: does the anchor cache still stop and follow multi-part instructions? (issue 27)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from anllm.config import AnLLMError


def register_assistant(ev) -> None:
    """Add the ``assistant`` subcommand to ``anllm eval``."""
    from anllm.commands.common import add_model_args
    from anllm.commands.eval_acceptance import add_adapter_arg
    from anllm.evaluation.assistant import DEFAULT_MAX_NEW_TOKENS, N_PROMPTS

    q = ev.add_parser(
        "assistant",
        help="assistant behaviour: share of answers ending by EOS and addressing every part, 95%% intervals",
        description=f"{N_PROMPTS} held-out chat prompts with several instructions each (yes or no first, exactly n "
        "list items, a word to use, a sentence or word limit), answered greedily with the chat template by the base "
        "model's full cache (adapter disabled on the same model) and the default's full and anchor caches. Per row: "
        "the share of answers that end by EOS within --max-new-tokens and the share that pass every check, with 95%% "
        "bootstrap intervals. Writes OUT (JSON: config, command, rows, per-template shares, every answer).",
    )
    add_model_args(q)
    q.add_argument("--out", required=True, help="the JSON file to write")
    q.add_argument("--n", type=int, default=N_PROMPTS, help=f"the first N prompts (all {N_PROMPTS} by default)")
    q.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="the token limit per answer")
    q.add_argument(
        "--batch-size", type=int, default=1, help="prompts decoded together (1: one at a time, as the app does)"
    )
    q.add_argument("--no-reference", action="store_true", help="skip the base model's full-cache row")
    add_adapter_arg(q)
    q.set_defaults(func=run_assistant_cmd)


def run_assistant_cmd(args) -> int:
    from anllm.commands.common import emit_json
    from anllm.commands.eval_acceptance import _load, _progress
    from anllm.evaluation.assistant import AssistantConfig, run_assistant, summarise

    cfg = AssistantConfig(
        n=args.n, max_new_tokens=args.max_new_tokens, reference=not args.no_reference, batch_size=args.batch_size
    )
    if cfg.reference and args.model != "default":  # only the default loads with a switchable adapter: say so now
        raise AnLLMError(
            f"the base reference row needs the default model's unmerged adapter, and --model {args.model} has none: "
            "use --model default, or add --no-reference"
        )
    lm = _load(args)
    step, bars = _progress("assistant")
    records = run_assistant(lm, cfg, progress=step)
    for b in bars:
        b.close()
    summary = summarise(records, n_boot=cfg.n_boot)
    out = {"config": cfg.__dict__, "command": shlex.join(["anllm", *args.argv]), "model": lm.name, **summary}
    Path(args.out).write_text(json.dumps({**out, "records": records}, indent=1) + "\n", encoding="utf-8")
    print(f"{'row':<10} {'n':>4}  {'ends by EOS':<22} {'every part':<22} {'parts passed':<22}", file=sys.stderr)
    for r in summary["rows"]:
        cells = [f"{x['mean']:6.1%} [{x['lo']:.1%}, {x['hi']:.1%}]" for x in (r["eos"], r["all_pass"], r["parts"])]
        print(f"{r['row']:<10} {r['n']:>4}  " + " ".join(f"{c:<22}" for c in cells), file=sys.stderr)
    acc = summary["acceptance"]
    if acc is not None and "anchor_minus_full" in acc["eos"]:
        e, a = acc["eos"]["anchor_minus_full"], acc["all_pass"]["anchor_minus_full"]
        print(
            f"anchor - full, paired: ends by EOS {e['mean']:+.1%} [{e['lo']:+.1%}, {e['hi']:+.1%}], "
            f"every part {a['mean']:+.1%} [{a['lo']:+.1%}, {a['hi']:+.1%}]",
            file=sys.stderr,
        )
    if acc is not None:
        print(f"anchor >= {acc['target']} x full on both shares: {'holds' if acc['holds'] else 'does not hold'}",
              file=sys.stderr)  # fmt: skip
    emit_json({"rows": summary["rows"], "acceptance": acc})
    return 0
