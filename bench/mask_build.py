"""Time to build the anchor metadata (is_anchor + segment ids) and the dense AnSAN mask at 4k and 32k tokens.

Input: the first N SmolLM2 tokens of the built-in passage (KJV Genesis), EP anchors. Compared with a loop in the
official code's style (one causal mask, then slice writes per anchor), written here from arXiv 2402.07616 §3.2, Eq. 4.

    python bench/mask_build.py --lengths 4096 32768
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from anllm.anchors import ep_anchor_ids, is_anchor
from anllm.bench import builtin_passage
from anllm.masks import ansan_mask, segment_ids, to_additive


def loop_mask(ids: list[int], anchor_ids: set[int]) -> torch.Tensor:
    """Bool (T, T) AnSAN mask built like the official code: causal, then per anchor block slices (one row)."""
    T = len(ids)
    m = torch.ones(T, T, dtype=torch.bool).tril_()
    anchors = [i for i, t in enumerate(ids) if t in anchor_ids]
    prev = -1
    for k, a in enumerate(anchors):
        m[a + 1 :, prev + 1 : a] = False  # later rows lose the non-anchor members of this sentence
        if k:
            m[a, anchors[:k]] = False  # the anchor loses earlier anchors
        prev = a
    return m


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 32768])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loop-max", type=int, default=8192, help="skip the official-style loop above this length")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from anllm.models import smollm2_path

    tok = AutoTokenizer.from_pretrained(smollm2_path())
    anchors = ep_anchor_ids(tok)
    all_ids = tok(builtin_passage())["input_ids"]
    rows = {}
    for n in args.lengths:
        ids = torch.tensor([all_ids[:n]])  # (1, n)
        r = {"tokens": ids.shape[1]}
        r["metadata_s"] = best_of(lambda: segment_ids(is_anchor(ids, anchors)), args.repeats)  # noqa: B023
        r["bool_mask_s"] = best_of(lambda: ansan_mask(is_anchor(ids, anchors)), args.repeats)  # noqa: B023
        r["bool_mask_bytes"] = n * n
        if n * n * 4 <= 8 * 2**30:  # the float32 additive mask needs 4 n^2 bytes
            mask = ansan_mask(is_anchor(ids, anchors))
            r["additive_f32_s"] = best_of(lambda: to_additive(mask, torch.float32), args.repeats)  # noqa: B023
            del mask
        if n <= args.loop_max:
            s = set(anchors)
            lst = ids[0].tolist()
            r["official_loop_s"] = best_of(lambda: loop_mask(lst, s), 1)  # noqa: B023
            assert torch.equal(loop_mask(lst, s), ansan_mask(is_anchor(ids, anchors))[0, 0])
        rows[str(n)] = r
        print(f"{n:>6} tokens: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items() if k != "tokens"), flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    print(json.dumps({"machine": machine, "results": rows}))


if __name__ == "__main__":
    main()
