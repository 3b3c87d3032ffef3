"""Our full-cache decode loop against ``model.generate`` on the same model and prompt (target: >= 0.95x).

Both greedy, no EOS stop, the same prompt (the first N tokens of the built-in passage). Ours: the library's
``stream_generate`` in ``full`` mode (its reported decode tokens/s: tokens after the first / time after prefill).
Theirs: ``model.generate``, decode time = time(N new tokens) - time(1 new token). Medians over repetitions,
alternating the two so drift hits both.

    python bench/generate_vs_hf.py --prompt-tokens 256 1024 --new-tokens 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from anllm.bench import bench_tokens, builtin_passage
from anllm.config import GenerationConfig
from anllm.generation import stream_generate
from anllm.models import load_model


def ours(lm, ids: list[int], new: int) -> float:
    gen = GenerationConfig(max_new_tokens=new, stop_on_eos=False, chat=False)
    last = None
    for r in stream_generate(lm, ids, "full", gen):
        last = r
    return last.tokens_per_s


def hf(lm, ids: list[int], new: int) -> float:
    x = torch.tensor([ids])
    kw = dict(attention_mask=torch.ones_like(x), do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    with torch.inference_mode():
        t0 = time.perf_counter()
        lm.model.generate(x, max_new_tokens=1, min_new_tokens=1, **kw)
        t1 = time.perf_counter()
        lm.model.generate(x, max_new_tokens=new, min_new_tokens=new, **kw)
        t2 = time.perf_counter()
    return (new - 1) / ((t2 - t1) - (t1 - t0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompt-tokens", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    lm = load_model(args.model)
    text = builtin_passage()
    ours(lm, bench_tokens(lm, text, 32), 8)  # warm-up
    hf(lm, bench_tokens(lm, text, 32), 8)
    rows = {}
    for n in args.prompt_tokens:
        ids = bench_tokens(lm, text, n)
        a, b = [], []
        for _ in range(args.repeats):
            a.append(ours(lm, ids, args.new_tokens))
            b.append(hf(lm, ids, args.new_tokens))
        r = {"ours_tok_s": statistics.median(a), "hf_tok_s": statistics.median(b), "ours_runs": a, "hf_runs": b}
        r["ratio"] = r["ours_tok_s"] / r["hf_tok_s"]
        rows[str(n)] = r
        print(
            f"prompt {n}: ours {r['ours_tok_s']:.2f} tok/s, model.generate {r['hf_tok_s']:.2f} tok/s, "
            f"ratio {r['ratio']:.3f}",
            flush=True,
        )
    print(json.dumps({"threads": torch.get_num_threads(), "new_tokens": args.new_tokens, "results": rows}))


if __name__ == "__main__":
    main()
