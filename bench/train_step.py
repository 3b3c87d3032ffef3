"""Training-step throughput: the AnSAN mask against plain causal attention.

CPU (default): SmolLM2-135M-Instruct, full fine-tuning step (forward + backward + AdamW), dense 4D anchor mask
through SDPA vs the model's own causal mask; tokens/s.

GPU (``--gpu``): FlexAttention with the AnSAN ``BlockMask`` vs the dense 4D mask through SDPA, forward + backward in
bf16 at 4k and 8k tokens (target: flex >= 1.5x faster at 8k). Not run in this repository's CI (no GPU);
``bench/gpu_check.sh`` runs it, and its dry run runs the same comparison on CPU at toy sizes.

    python bench/train_step.py --batch 4 --seq 256 --steps 3
    python bench/train_step.py --gpu --seqs 4096 8192 --json-out flex.json
    python bench/train_step.py --gpu --device cpu --model tiny-random --dtype float32 --seqs 64 128  # plumbing
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from anllm.anchors import ep_anchor_ids
from anllm.train.corpus import fortune_documents, synthetic_documents
from anllm.train.losses import anchor_attention, token_nll


def text_batch(tokenizer, batch: int, seq: int) -> torch.Tensor:
    """``(batch, seq)`` token ids of real English text (fortunes if installed, else the templated corpus)."""
    docs = fortune_documents() or synthetic_documents()
    ids: list[int] = []
    for d in docs:
        ids += tokenizer(d)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= batch * seq:
            break
    while len(ids) < batch * seq:
        ids = ids + ids
    return torch.tensor(ids[: batch * seq]).view(batch, seq)


def step_time(model, ids, kind: str, anchor_ids, steps: int, warmup: int, opt=None, backward: bool = True) -> float:
    """Median seconds of one training step (``kind``: causal | dense | flex); forward only if not ``backward``."""
    ones = torch.ones_like(ids)
    times = []
    for i in range(warmup + steps):
        if ids.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.set_grad_enabled(backward):
            if kind == "causal":
                logits = model(input_ids=ids, attention_mask=ones).logits
            else:
                mask, pos = anchor_attention(ids, ones, anchor_ids, {}, path=kind)
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            loss = token_nll(logits, ids) / ids.numel()
        if backward:
            loss.backward()
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                model.zero_grad(set_to_none=True)
        if ids.is_cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def cpu_bench(args) -> list[dict]:
    from anllm.models import load_model

    lm = load_model("smollm2-135m", attn_implementation="sdpa")
    model = lm.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = text_batch(lm.tokenizer, args.batch, args.seq)
    anchors = ep_anchor_ids(lm.tokenizer)
    rows = []
    for kind in ("causal", "dense"):
        s = step_time(model, ids, kind, anchors, args.steps, args.warmup, opt)
        rows.append({"device": "cpu", "threads": torch.get_num_threads(), "kind": kind, "batch": args.batch,
                     "seq": args.seq, "s_per_step": s, "tokens_per_s": ids.numel() / s})  # fmt: skip
    return rows


def gpu_bench(args) -> list[dict]:
    from transformers import AutoConfig, AutoModelForCausalLM

    from anllm.bench import shaped_model

    lm = shaped_model(args.model, positions=max(args.seqs))
    anchors = ep_anchor_ids(lm.tokenizer)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    rows = []
    for seq in args.seqs:
        ids = text_batch(lm.tokenizer, 1, seq).to(device)
        for kind, impl in (("dense", "sdpa"), ("flex", "flex_attention")):
            if kind not in args.kinds:
                continue
            config = AutoConfig.from_pretrained(args.gpu_model) if args.gpu_model else lm.model.config
            model = AutoModelForCausalLM.from_config(config, attn_implementation=impl, dtype=getattr(torch, args.dtype))
            model.to(device).gradient_checkpointing_enable()
            s = step_time(model.train(), ids, kind, anchors, args.steps, args.warmup, backward=not args.forward_only)
            rows.append({"device": name, "dtype": args.dtype, "kind": kind, "seq": seq, "s_per_step": s,
                         "tokens_per_s": seq / s, "backward": not args.forward_only})  # fmt: skip
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--gpu", action="store_true", help="FlexAttention vs dense SDPA on CUDA")
    p.add_argument("--seqs", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--gpu-model", default=None, help="a config (hub id/dir) for the GPU bench; default --model's")
    p.add_argument("--model", default="smollm2-135m", help="tokenizer and config for --gpu (or smollm2-shape)")
    p.add_argument("--device", default="cuda", help="device for --gpu (cpu: a plumbing check at toy sizes)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="dtype for --gpu")
    p.add_argument("--kinds", nargs="+", default=["dense", "flex"], choices=["dense", "flex"], help="for --gpu")
    p.add_argument("--forward-only", action="store_true", help="no backward (FlexAttention has none on CPU)")
    p.add_argument("--json-out", default=None, help="also write {rows, ratio_by_seq} as JSON to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = gpu_bench(args) if args.gpu else cpu_bench(args)
    for r in rows:
        print(json.dumps(r))
    ratios = {}  # flex / dense tokens/s on --gpu, dense / causal otherwise
    base = {(r.get("seq"), r["kind"]): r["tokens_per_s"] for r in rows}
    for seq in sorted({r["seq"] for r in rows}):
        ref = base.get((seq, "causal")) or base.get((seq, "dense"))
        other = base.get((seq, "dense")) if (seq, "causal") in base else base.get((seq, "flex"))
        if ref and other:
            ratios[str(seq)] = other / ref
            print(f"seq {seq}: ratio {other / ref:.3f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"rows": rows, "ratio_by_seq": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
