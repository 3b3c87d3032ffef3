"""``anllm bench``: prefill time, decode tokens/s, KV bytes and peak memory per cache mode and context length."""

from __future__ import annotations

import sys
from pathlib import Path

from anllm.commands.common import add_model_args, emit_json, int_list, load_from_args, read_text
from anllm.policies import split_modes


def _chunk(chunk_size: int | None) -> str:
    return "one pass" if chunk_size is None else f"chunk {chunk_size}"


def _of_limit(r) -> str:
    """``0.97 of limit  x 2.31 one-pass`` for rows set against the prefill references, blanks otherwise."""
    of = f"{r.prefill_of_limit:5.2f} of limit" if r.prefill_of_limit is not None else " " * 14
    vs = f"x{r.prefill_vs_onepass:5.2f} one-pass" if r.prefill_vs_onepass is not None else " " * 15
    return f"  {of}  {vs}"


def register(sub) -> None:
    p = sub.add_parser("bench", help="speed and memory of each cache mode at several context lengths")
    add_model_args(p)
    p.add_argument("--context", required=True, help="context length(s) in tokens, comma-separated: 256,1024,8192")
    p.add_argument(
        "--policies",
        "--modes",
        dest="policies",
        default="full,anchor,streaming,sepllm,limit",
        help="cache modes/specs, comma-separated; 'limit' = a full cache of the anchor cache's size (after anchor); "
        "specs use ';' between parameters, e.g. streaming:sink=4;window=64",
    )
    p.add_argument("--text-file", default=None, help="text to take contexts from (default: built-in KJV Genesis)")
    p.add_argument("--new-tokens", type=int, default=32, help="decoded tokens per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per mode; medians are reported (see --stat)")
    p.add_argument(
        "--stat", choices=("median", "best"), default="median", help="report the median or the best of the runs"
    )
    p.add_argument("--no-hf", action="store_true", help="skip the model.generate comparison row")
    p.add_argument(
        "--no-prefill-limit",
        action="store_true",
        help="skip the prefill references: the one-pass full prefill (onepass) and the backbone limit (backbone@C)",
    )
    p.add_argument("--roofline", action="store_true", help="also print the ideal speed-ups (bytes, FLOPs, machine)")
    p.add_argument("--json", action="store_true", help="last line: {context: {mode: {prefill_s, decode_tok_s, …}}}")
    p.add_argument("--plot", default=None, help="write a plotly HTML figure to this path")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from anllm.bench import BenchConfig, measure_machine, results_json, roofline, run_bench

    if args.plot:  # before minutes of measuring: a missing plotly is reported now
        from anllm.plots import bench_figure

    cfg = BenchConfig(
        contexts=int_list(args.context, "--context"),
        modes=split_modes(args.policies),
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        compare_hf=not args.no_hf,
        prefill_limit=not args.no_prefill_limit,
        stat=args.stat,
    )  # --chunk-size sets the model's chunk (load_from_args): each mode prefills as the library does
    text = read_text(None, args.text_file, "text") if args.text_file else None
    lm = load_from_args(args)
    for note in lm.notes:
        print(f"note: {note}", file=sys.stderr)
    results = run_bench(lm, cfg, text, progress=True)
    machine = measure_machine(next(lm.model.parameters()).device) if args.roofline else None
    if machine is not None:
        print(
            f"machine: copy bandwidth {machine['bytes_per_s'] / 1e9:.1f} GB/s, "
            f"fp32 matmul {machine['flops_per_s'] / 1e9:.1f} GFLOP/s, {torch.get_num_threads()} threads",
            file=sys.stderr,
        )
    for ctx, row in results.items():
        full = row.get("full")
        print(f"context {ctx}:", file=sys.stderr)
        for mode, r in row.items():
            rel = ""
            if full is not None and mode != "full" and r.decode_tok_s is not None:
                x = r.speedups_over(full)
                rel = f"  decode x{x['decode_x']:.2f}"
                if mode != "limit":  # the limit row prefills only part of the context: no prefill ratio
                    rel += f"  prefill x{x['prefill_x']:.2f}"
            decode = f"{r.decode_tok_s:7.2f}" if r.decode_tok_s is not None else f"{'-':>7}"
            print(
                f"  {mode:<22} prefill {r.prefill_s:8.3f} s {_chunk(r.chunk_size):>8}{_of_limit(r)}  "
                f"decode {decode} tok/s  KV {r.kv_entries:6d} entries {r.kv_bytes / 2**20:8.2f} MiB  "
                f"peak {(r.peak_mem_bytes or 0) / 2**20:8.1f} MiB{rel}",
                file=sys.stderr,
            )
        if machine is not None:
            kv = {m: r.kv_entries for m, r in row.items() if m != "hf_generate" and r.decode_tok_s is not None}
            for mode, d in roofline(lm.model, kv, machine).items():
                print(
                    f"  roofline {mode:<13} ideal x{d['speedup_roofline']:.2f} "
                    f"(bytes x{d['speedup_bytes']:.2f}, FLOPs x{d['speedup_flops']:.2f})",
                    file=sys.stderr,
                )
    if args.plot:
        path = Path(args.plot)  # checked when the command started: its folder exists, it is no input
        bench_figure(results).write_html(str(path), include_plotlyjs=True)  # plotly.js embedded: works offline
        print(f"plot written to {path}", file=sys.stderr)
    if args.json:
        emit_json(results_json(results))
    return 0
