"""Our full-cache decode loop against ``model.generate`` on the same model and prompt (target: >= 0.95x).

Both greedy, no EOS stop, the same prompt (the first N tokens of the built-in passage), the same clock: tokens
after the first / time from the first to the last generated token. Ours: the library's ``stream_generate`` in
``full`` mode; theirs: ``model.generate`` timed per step by a streamer. Medians over repetitions, alternating the
two so drift hits both. Both run under the same RSS-sampling thread (measured: such a thread alone changes CPU
decode speed by ~5 %), after the same ``release_memory()``.

    python bench/generate_vs_hf.py --prompt-tokens 256 1024 --new-tokens 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from anllm.bench import PeakMemory, bench_tokens, builtin_passage, release_memory, run_hf_generate
from anllm.config import GenerationConfig
from anllm.generation import stream_generate
from anllm.models import load_model


def ours(lm, ids: list[int], new: int) -> float:
    """Decode tokens/s of the library's loop: (new - 1) tokens over the time from the first to the last token."""
    gen = GenerationConfig(max_new_tokens=new, stop_on_eos=False, chat=False)
    release_memory()
    with PeakMemory(next(lm.model.parameters()).device):  # the same conditions as run_hf_generate (its RSS sampler)
        times = [r.elapsed_s for r in stream_generate(lm, ids, "full", gen)]
    return (len(times) - 1) / (times[-1] - times[0])


def hf(lm, ids: list[int], new: int) -> float:
    """The same for ``model.generate`` (timed per step by a streamer)."""
    return run_hf_generate(lm, torch.tensor([ids]), new - 1)["decode_tok_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompt-tokens", type=int, nargs="+", default=[256, 1024, 4096])
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
