"""kvpress presses on anllm's exact inputs: recall items and prose perplexity at the anchor cache's budget.

Runs in the kvpress venv (``bash bench/peers/setup.sh``), never imports anllm (kvpress needs transformers < 5.3, anllm
>= 5.17). Reads the ``inputs.jsonl`` that ``bench/peers/export_inputs.py`` wrote and writes one JSON of
schema ``anllm-peers-results/1`` that ``bench/peers/report.py`` merges with anllm's rows.

How a press is applied — the way a kvpress user runs it (kvpress's pipeline does the same):

* **recall**: the item's *context* ids (everything before the question) are prefilled in one pass inside
  ``with press(model)``; kvpress compresses each layer's cache right after that pass. The question ids (question,
  end of turn, assistant header) are then fed *uncompressed* against the compressed cache with their true positions,
  the answer's mean log-probability is scored by teacher forcing through a copy of the cache, and the model decodes
  greedily through the cache itself with anllm's stopping rules (EOS, a newline in the stripped text, at most
  ``max_new_tokens``). Exact match is scored by anllm when it merges the outputs.
* **budget**: per item, the press keeps ``anchor_kv - len(question)`` context entries (at least 1), so after the
  prompt its cache holds the anchor cache's entries for that item — the same compression ratio over the prompt
  (``compression_ratio`` is set so that kvpress's ``max(1, int(C * (1 - ratio)))`` is exactly that count).
* **perplexity**: kvpress only compresses during a prefill, so each ``chunk_size`` chunk after the first is scored
  with a fresh cache: the text before the chunk (but its last token) is prefilled and compressed to the anchor
  cache's entries before that chunk minus one, then the chunk (preceded by that last token) is fed and scored.
  The first chunk is scored with a plain causal pass.

    runs/peers-venv/bin/python bench/peers/run_kvpress.py runs/peers/inputs.jsonl --out runs/peers/kvpress.json
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import inspect
import json
import platform
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch

SCHEMA = "anllm-peers-results/1"
INPUTS_SCHEMA = "anllm-peers-inputs/1"
# press name -> (kvpress class, keyword arguments); defaults are kvpress's own
PRESSES = {
    "none": None,
    "StreamingLLMPress": ("StreamingLLMPress", {}),
    "SnapKVPress": ("SnapKVPress", {}),
    # SnapKV always keeps its 64-token observation window; below that budget it picks among the window's ties
    "SnapKVPress(window_size=8)": ("SnapKVPress", {"window_size": 8}),
    "KnormPress": ("KnormPress", {}),
    "TOVAPress": ("TOVAPress", {}),
    "ExpectedAttentionPress": ("ExpectedAttentionPress", {}),
}


def log(msg: str) -> None:
    print(f"[kvpress {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- inputs and budgets -----------------------------------------------------------------------------------------------
def read_inputs(path: str | Path) -> tuple[dict, list[dict], list[dict], str]:
    """``(meta, recall lines, ppl lines, sha256 of the file)``; raises ``ValueError`` on another schema."""
    data = Path(path).read_bytes()
    lines = [json.loads(x) for x in data.decode("utf-8").splitlines() if x.strip()]
    if not lines or lines[0].get("kind") != "meta" or lines[0].get("schema") != INPUTS_SCHEMA:
        raise ValueError(f"{path}: not an anllm peers inputs file (first line must be meta with {INPUTS_SCHEMA})")
    recall = [x for x in lines if x.get("kind") == "recall"]
    ppl = [x for x in lines if x.get("kind") == "ppl"]
    return lines[0], recall, ppl, hashlib.sha256(data).hexdigest()


def context_keep(context_len: int, question_len: int, budget: int) -> int:
    """Context entries a press keeps so that context + question = ``budget`` entries (1 to ``context_len``)."""
    return max(1, min(context_len, budget - question_len))


def ratio_for(n_tokens: int, n_keep: int) -> float:
    """The ``compression_ratio`` under which kvpress keeps exactly ``n_keep`` of ``n_tokens`` entries.

    kvpress keeps ``max(1, int(n_tokens * (1 - ratio)))``; aiming at ``n_keep + 0.5`` leaves half an entry of
    margin either side against rounding.
    """
    if not 1 <= n_keep <= n_tokens:
        raise ValueError(f"n_keep must be in [1, {n_tokens}], got {n_keep}")
    return 0.0 if n_keep == n_tokens else 1.0 - (n_keep + 0.5) / n_tokens


def make_press(name: str, ratio: float):
    """A kvpress press instance (None for ``none`` or a ratio of 0: no compression)."""
    spec = PRESSES[name]
    if spec is None or ratio == 0.0:
        return None
    import kvpress

    cls, kwargs = spec
    return getattr(kvpress, cls)(compression_ratio=ratio, **kwargs)


# -- the model --------------------------------------------------------------------------------------------------------
def _cache_kwarg(model) -> str:
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


def cache_len(cache) -> int:
    return int(cache.get_seq_length())


def forward(model, cache, ids: list[int], start: int, *, last_only: bool = False) -> torch.Tensor:
    """Feed ``ids`` at true positions ``start..`` against ``cache``; returns logits ``(Q, V)`` (or ``(1, V)``)."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)  # (1, Q)
    pos = torch.arange(start, start + len(ids), device=device)[None]  # (1, Q)
    out = model(input_ids=x, position_ids=pos, logits_to_keep=1 if last_only else 0, **{_cache_kwarg(model): cache})
    return out.logits[0].float()  # (Q, V)


def prefill(model, cache, ids: list[int], press) -> None:
    """Prefill ``ids`` (positions from 0) inside ``press`` (kvpress compresses after this pass); no lm head."""
    device = next(model.parameters()).device
    backbone = model.model
    with press(model) if press is not None else nullcontext():
        backbone(input_ids=torch.tensor([ids], device=device), **{_cache_kwarg(backbone): cache})  # (1, C)


@torch.inference_mode()
def score_recall(model, tokenizer, item: dict, press_name: str, *, eos_ids, max_new_tokens: int) -> dict:
    """One recall item under one press (module doc): kv entries, compression ratio, answer log-prob, output."""
    ctx, q, ans = item["context_ids"], item["question_ids"], item["answer_ids"]
    n_keep = context_keep(len(ctx), len(q), item["anchor_kv"]) if press_name != "none" else len(ctx)
    ratio = ratio_for(len(ctx), n_keep)
    t0 = time.perf_counter()
    cache = new_cache(model)
    prefill(model, cache, ctx, make_press(press_name, ratio))
    kept = cache_len(cache)
    logits = forward(model, cache, q, len(ctx), last_only=True)[-1:]  # (1, V)
    prompt_len = len(ctx) + len(q)
    scores = logits
    if len(ans) > 1:
        rest = forward(model, copy.deepcopy(cache), ans[:-1], prompt_len)  # (N-1, V)
        scores = torch.cat([logits, rest], 0)  # (N, V)
    target = torch.tensor(ans, device=scores.device)[:, None]  # (N, 1)
    logprob = float(torch.log_softmax(scores.double(), -1).gather(1, target).mean())
    out: list[int] = []
    pos = prompt_len
    for _ in range(max_new_tokens):
        token = int(logits[-1].argmax())
        if token in eos_ids:
            break
        out.append(token)
        if "\n" in tokenizer.decode(out, skip_special_tokens=True).strip():
            break
        logits = forward(model, cache, [token], pos, last_only=True)
        pos += 1
    return {
        "id": item["id"],
        "press": press_name,
        "compression_ratio": ratio,
        "context_tokens": len(ctx),
        "context_kept": kept,
        "question_tokens": len(q),
        "kv_entries": kept + len(q),
        "anchor_kv": item["anchor_kv"],
        "logprob": logprob,
        "output": tokenizer.decode(out, skip_special_tokens=True),
        "output_ids": out,
        "seconds": time.perf_counter() - t0,
    }


@torch.inference_mode()
def score_ppl(model, line: dict, press_name: str) -> dict:
    """Perplexity of ``line['ids']`` under one press, chunk by chunk at the anchor cache's budgets (module doc)."""
    ids, step, budgets = line["ids"], line["chunk_size"], line["budgets"]
    t0 = time.perf_counter()
    nll, held, ratios = 0.0, [], []
    for c, s in enumerate(range(0, len(ids), step)):
        e = min(len(ids), s + step)
        cache = new_cache(model)
        if s == 0:
            logits, targets = forward(model, cache, ids[: e - 1], 0), ids[1:e]
        else:
            prefix = ids[: s - 1]
            n_keep = len(prefix) if press_name == "none" else max(1, min(len(prefix), budgets[c] - 1))
            ratio = ratio_for(len(prefix), n_keep)
            prefill(model, cache, prefix, make_press(press_name, ratio))
            held.append(cache_len(cache) + 1)  # + the chunk's preceding token, fed with the chunk
            ratios.append(ratio)
            logits, targets = forward(model, cache, ids[s - 1 : e - 1], s - 1), ids[s:e]
        t = torch.tensor(targets, device=logits.device)[:, None]  # (Q, 1)
        nll -= float(torch.log_softmax(logits.double(), -1).gather(1, t).sum())
    n_pred = len(ids) - 1
    return {
        "press": press_name,
        "text_file": line.get("text_file", ""),
        "ppl": float(torch.exp(torch.tensor(nll / n_pred, dtype=torch.float64))),
        "nll": nll / n_pred,
        "tokens": len(ids),
        "chunk_size": step,
        "kv_mean": sum(held) / len(held) if held else 0.0,  # entries held before each chunk after the first
        "anchor_kv_mean": sum(budgets[1:]) / max(1, len(budgets) - 1),
        "compression_ratios": ratios,
        "seconds": time.perf_counter() - t0,
    }


# -- the run ----------------------------------------------------------------------------------------------------------
def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "kvpress"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def run(inputs: str | Path, out: str | Path, *, presses: list[str], model_dir: str | None = None, model=None,
        tokenizer=None, limit: int | None = None) -> dict:  # fmt: skip
    """Score every press on every input and write the results JSON after each press (a crash keeps the rest)."""
    meta, recall, ppl, sha = read_inputs(inputs)
    if model is None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        path = model_dir or meta.get("model_dir")
        if not path:
            raise ValueError("the inputs name no model folder: pass --model-dir")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    recall = recall[:limit] if limit else recall
    result = {
        "schema": SCHEMA,
        "tool": "kvpress",
        "model_label": f"base ({Path(model_dir or meta.get('model_dir') or 'model').name})",
        "versions": versions(),
        "inputs_sha256": sha,
        "threads": torch.get_num_threads(),
        "recall": [],
        "ppl": [],
        "errors": [],
    }
    eos = set(meta["eos_ids"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in presses:
        for where, lines in (("recall", recall), ("ppl", ppl)):
            for line in lines:
                try:
                    if where == "recall":
                        rec = score_recall(
                            model, tokenizer, line, name, eos_ids=eos, max_new_tokens=meta["max_new_tokens"]
                        )
                        log(f"{name} {line['id']}: kv {rec['kv_entries']}/{line['anchor_kv']} {rec['output']!r}")
                    else:
                        rec = score_ppl(model, line, name)
                        log(f"{name} ppl {rec['ppl']:.3f} (kv mean {rec['kv_mean']:.1f}, {rec['seconds']:.0f} s)")
                    result[where].append(rec)
                except Exception as e:  # noqa: BLE001 - a failing press is reported with its exact error, not hidden
                    err = f"{type(e).__name__}: {e}".strip()
                    log(f"{name} {where} FAILED: {err}")
                    result["errors"].append(
                        {"press": name, "where": f"{where} {line.get('id', '')}".strip(), "error": err,
                         "traceback": traceback.format_exc()[-2000:]}
                    )  # fmt: skip
                    break  # the same press fails the same way on the other lines
        out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("inputs", help="inputs.jsonl written by bench/peers/export_inputs.py")
    p.add_argument("--out", default="runs/peers/kvpress.json")
    p.add_argument("--presses", default=",".join(PRESSES), help=f"comma-separated, from {', '.join(PRESSES)}")
    p.add_argument("--model-dir", default=None, help="the base model folder (default: the one the inputs name)")
    p.add_argument("--limit", type=int, default=None, help="first N recall items only (a smoke run)")
    args = p.parse_args(argv)
    presses = [x.strip() for x in args.presses.split(",") if x.strip()]
    unknown = [x for x in presses if x not in PRESSES]
    if unknown:
        print(f"error: unknown press(es) {', '.join(unknown)}; choose from {', '.join(PRESSES)}", file=sys.stderr)
        return 2
    log(f"versions {versions()}, {torch.get_num_threads()} thread(s)")
    run(args.inputs, args.out, presses=presses, model_dir=args.model_dir, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
