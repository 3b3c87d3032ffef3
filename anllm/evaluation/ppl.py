"""Perplexity computed by real cache decoding, chunk by chunk, for any policy (full, anchor, streaming, …).

Each chunk goes through :func:`anllm.generation.forward_chunk`, so the cache evicts exactly as in generation;
the logits of a chunk's last token score the first token of the next chunk. For an exact policy this equals
one forward pass with the policy's rule as the attention mask (tested in float64).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor

from anllm.anchors import insert_ac
from anllm.config import AnLLMError
from anllm.evaluation.metrics import perplexity_from_nll
from anllm.generation import check_fits, forward_chunk, make_cache
from anllm.models import LoadedModel
from anllm.policies import BUDGETED, EvictionPolicy, budget_spec
from anllm.progress import progress_bar
from anllm.renames import renamed_kwargs


@dataclass
class PPLResult:
    """Perplexity of one mode plus what its cache held."""

    mode: str
    ppl: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    tokens: int  # tokens in the text (predictions = tokens - 1)
    kv_kept_end: int  # entries stored after the last chunk
    kv_kept_mean: float  # mean entries stored after each chunk
    kv_kept_frac: float  # kv_kept_end / tokens
    kv_kept_mean_frac: float  # mean over chunks of stored / tokens seen
    kv_peak: int  # most entries held during a forward pass (stored + the chunk)
    chunk_size: int
    seconds: float

    @property
    def kv_reduction(self) -> float:
        """C⇓ at the end of the text."""
        return 1.0 - self.kv_kept_frac

    def to_dict(self) -> dict:
        return {**asdict(self), "kv_reduction": self.kv_reduction}


def encode_text(lm: LoadedModel, text: str, max_tokens: int | None = None) -> list[int]:
    """Token ids of a text for scoring (``<AC>`` inserted in AC mode); checks length against the model."""
    if not isinstance(text, str) or not text.strip():
        raise AnLLMError("the text is empty: give a UTF-8 file with some prose")
    if lm.anchor.kind == "ac":
        text = insert_ac(text)
    ids = list(lm.tokenizer(text)["input_ids"])
    if max_tokens is not None:
        if max_tokens < 2:
            raise AnLLMError(f"max_tokens must be >= 2, got {max_tokens}")
        ids = ids[:max_tokens]
    check_fits(lm, len(ids), "the text has", "pass --max-tokens {limit} (or less) to score a prefix")
    if len(ids) < 2:
        raise AnLLMError("the text has fewer than 2 tokens: nothing to predict")
    return ids


@renamed_kwargs(mode="policy")
def perplexity(
    lm: LoadedModel,
    ids: list[int] | Tensor,
    policy: str | EvictionPolicy = "anchor",
    *,
    chunk_size: int | None = None,
    progress: bool = False,
) -> PPLResult:
    """Perplexity of token ids ``(T,)`` decoded through a ``policy`` cache in chunks of ``chunk_size`` tokens.

    Args:
        ids: one sequence of token ids, list or long tensor ``(T,)``.
        policy: a cache policy name / spec (``"full"``, ``"anchor"``, ``"streaming:budget=256"``) or object.
        chunk_size: tokens per forward pass (default: the model's anchor chunk size).
        progress: show a bar on stderr (tokens scored).
    """
    model = lm.model
    device = next(model.parameters()).device
    ids = torch.as_tensor(ids, dtype=torch.long, device=device).reshape(1, -1)  # (1, T)
    T = ids.shape[1]
    if T < 2:
        raise AnLLMError("perplexity needs at least 2 tokens")
    step = chunk_size or lm.anchor.chunk_size
    if step < 1:
        raise AnLLMError(f"chunk_size must be >= 1, got {step}")
    cache = make_cache(lm, policy)
    nll_sum, kept, fracs, peak = 0.0, [], [], 0
    prev = None  # (1, V) logits of the previous chunk's last token
    name = policy if isinstance(policy, str) else type(policy).name
    bar = progress_bar(desc=f"ppl {name}", total=T, unit="tok", enabled=progress)
    t0 = time.perf_counter()
    with torch.inference_mode(), bar:
        for s in range(0, T, step):
            chunk = ids[:, s : s + step]  # (1, Q)
            peak = max(peak, int(cache.n_kept()[0]) + chunk.shape[1] if cache.meta is not None else chunk.shape[1])
            logits = forward_chunk(model, cache, chunk)[0]  # (Q, V)
            if prev is None:
                scores, targets = logits[:-1], chunk[0, 1:]  # (Q-1, V), (Q-1,)
            else:
                scores, targets = torch.cat([prev, logits[:-1]], 0), chunk[0]  # (Q, V), (Q,)
            logp = torch.log_softmax(scores.double(), -1)  # (Q', V)
            nll_sum -= float(logp.gather(1, targets[:, None]).sum())
            prev = logits[-1:]
            n_kept = int(cache.n_kept()[0])
            kept.append(n_kept)
            fracs.append(n_kept / int(cache.n_seen[0]))
            bar.update(chunk.shape[1])
    seconds = time.perf_counter() - t0
    n_pred = T - 1
    return PPLResult(
        mode=name,
        ppl=perplexity_from_nll(nll_sum, n_pred),
        nll=nll_sum / n_pred,
        tokens=T,
        kv_kept_end=kept[-1],
        kv_kept_mean=sum(kept) / len(kept),
        kv_kept_frac=kept[-1] / T,
        kv_kept_mean_frac=sum(fracs) / len(fracs),
        kv_peak=peak,
        chunk_size=step,
        seconds=seconds,
    )


def perplexity_text(
    lm: LoadedModel,
    text: str,
    modes: list[str] | tuple[str, ...] = ("full", "anchor"),
    *,
    chunk_size: int | None = None,
    max_tokens: int | None = None,
    budget: int | str | None = None,
    progress: bool = False,
) -> dict[str, PPLResult]:
    """Perplexity of ``text`` under each mode; keys are the mode strings as given.

    Args:
        budget: KV entries for the bare ``streaming`` / ``sepllm`` modes (sinks + window; SepLLM keeps its
            separators on top), or one of ``modes`` (e.g. ``"anchor"`` or ``"anchor:sink=1,window=16"``): that
            mode's mean cache size in this run. None: their defaults.
        progress: a bar per mode on stderr.
    """
    if not modes:
        raise AnLLMError("no modes given: use e.g. full,anchor,streaming,sepllm")
    if isinstance(budget, int) and budget < 1:
        raise AnLLMError(f"budget must be >= 1 KV entry (a budget of zero keeps nothing), got {budget}")
    if isinstance(budget, str) and budget not in modes:
        raise AnLLMError(
            f"budget={budget!r} matches that mode's mean cache size, so it must be among the modes {list(modes)}"
        )
    ids = encode_text(lm, text, max_tokens)
    for m in modes:
        lm.policy(m)  # validate every spec before the slow part
    order = sorted(modes, key=lambda m: m != budget)  # the budget's mode first: it sizes the others
    out: dict[str, PPLResult] = {}
    for m in order:
        spec = m
        if budget is not None and m in BUDGETED:
            n = max(2, round(out[budget].kv_kept_mean)) if isinstance(budget, str) else int(budget)
            spec = budget_spec(m, n)
        out[m] = replace(perplexity(lm, ids, lm.policy(spec), chunk_size=chunk_size, progress=progress), mode=spec)
    return {m: out[m] for m in modes}
