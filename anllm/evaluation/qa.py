"""Log-likelihood multiple choice, scored the paper's way (arXiv 2402.07616 §4.3; docs/evaluation.md) and by real
cache decoding.

Each item has a context (the query, after few-shot demonstrations) and choices; a choice's score is the summed
log-probability of its tokens after the context; the prediction is the best-scoring choice (``acc``) or the best
score per character (``acc_norm``). Scorers:

* ``masked``: one AnSAN-masked pass over context + choice: what the paper's harness did (arXiv 2402.07616 §4.3);
* ``anchor``: the context prefilled through the anchor cache (chunked, evicting), then the choice decoded
  against the compressed cache: real anchor inference;
* ``full``: the same with a full cache; ``nocache``: one plain causal pass per choice (no cache at all).

Timings give T⇑ of anchor decoding against no-cache (the paper's 3.5× baseline) and against a full cache (its
≈1.03×); kept entries give C⇓ at the end of the prompt and after the scored choice. Tasks and the local JSONL
schema live in :mod:`anllm.evaluation.tasks`.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import Tensor

from anllm.anchors import mark_anchors
from anllm.config import AC_TOKEN, AnLLMError
from anllm.evaluation.metrics import accuracy, kv_reduction, speedup
from anllm.evaluation.tasks import HUB_TASKS, LOCAL_TASKS, MCItem, load_jsonl, load_task, parse_item  # noqa: F401
from anllm.generation import check_fits, forward_chunk, make_cache, prefill, prefill_chunk_size
from anllm.models import LoadedModel
from anllm.progress import progress_bar
from anllm.verify import masked_forward

SCORERS = ("masked", "anchor", "full", "nocache")
AcPlacement = Literal["demo", "sentence"]


# -- prompts -----------------------------------------------------------------------------------------------------
@dataclass
class MCRequest:
    """Texts to score for one item: a context per choice and the continuations (choices with a leading space)."""

    contexts: list[str]
    continuations: list[str]
    label: int
    choice_chars: list[int]  # characters of each choice, for acc_norm


def _continuation(choice: str) -> str:
    return choice if choice[:1].isspace() else " " + choice


def build_requests(
    items: list[MCItem], shots: int = 0, *, ac: bool = False, ac_placement: AcPlacement = "demo", seed: int = 1234
) -> list[MCRequest]:
    """Few-shot contexts: ``shots`` other items (with their right answer) before each query, blank-line separated.

    In AC mode ``<AC>`` closes every demonstration (``ac_placement="demo"``, the paper's 5-shot setting,
    arXiv 2402.07616 §4.3) or every sentence of it (``"sentence"``); the final query is left unmarked so its tokens stay
    in the cache while the choices are scored.
    """
    if shots < 0:
        raise AnLLMError(f"--shots must be >= 0, got {shots}")
    if shots and len(items) <= shots:
        raise AnLLMError(f"{shots}-shot needs more than {shots} items to draw demonstrations from, got {len(items)}")
    if ac_placement not in ("demo", "sentence"):
        raise AnLLMError(f"ac_placement must be 'demo' or 'sentence', got {ac_placement!r}")
    from anllm.anchors import insert_ac

    out = []
    for i, item in enumerate(items):
        others = [j for j in range(len(items)) if j != i]
        demos = []
        for j in random.Random(seed + i).sample(others, shots) if shots else []:
            d = items[j]
            text = d.contexts[d.label] + _continuation(d.choices[d.label])
            if ac:
                text = insert_ac(text) if ac_placement == "sentence" else f"{text} {AC_TOKEN}"
            demos.append(text)
        prefix = "".join(t + "\n\n" for t in demos)
        out.append(
            MCRequest(
                contexts=[prefix + c for c in item.contexts],
                continuations=[_continuation(c) for c in item.choices],
                label=item.label,
                choice_chars=[len(c) for c in item.choices],
            )
        )
    return out


# -- scoring -----------------------------------------------------------------------------------------------------
def _loglik(logits: Tensor, targets: Tensor) -> tuple[float, bool]:
    """Sum of log p(targets) from logits ``(n, V)`` predicting targets ``(n,)``, and whether all are the argmax."""
    logp = torch.log_softmax(logits.double(), -1)  # (n, V)
    return float(logp.gather(1, targets[:, None]).sum()), bool((logp.argmax(-1) == targets).all())


@torch.inference_mode()
def score_one_pass(lm: LoadedModel, ctx: list[int], cont: list[int], *, masked: bool, greedy: bool = False):
    """Log-likelihood of ``cont`` after ``ctx`` from one forward pass: AnSAN-masked or plain causal (no cache).

    Returns the float, or ``(float, is_greedy)`` when ``greedy``.
    """
    device = next(lm.model.parameters()).device
    ids = torch.tensor([ctx + cont], device=device)  # (1, C + N)
    if masked:
        pol = lm.policy("anchor")
        rule = dict(anchors_see_anchors=pol.anchors_see_anchors, n_sink=pol.n_sink, window=pol.window)
        anchor, _ = mark_anchors(ids, lm.anchor_ids, max_segment=lm.anchor.max_segment)
        logits = masked_forward(lm.model, ids, anchor, **rule)[0]  # (C + N, V)
    else:
        logits = lm.model(input_ids=ids).logits[0]  # (C + N, V)
    ll, is_greedy = _loglik(logits[len(ctx) - 1 : -1], ids[0, len(ctx) :])
    return (ll, is_greedy) if greedy else ll


@dataclass
class CachedScores:
    logliks: list[float]
    ctx_tokens: int
    kept_after_ctx: int  # entries stored after the context
    kept_end: list[int]  # entries stored after each choice
    seen_end: list[int]  # tokens seen after each choice
    greedy: list[bool]  # each continuation is the greedy output


@torch.inference_mode()
def score_cached(lm: LoadedModel, ctx: list[int], conts: list[list[int]], policy: str) -> CachedScores:
    """Prefill ``ctx`` once through a ``policy`` cache, then score each continuation against that cache."""
    device = next(lm.model.parameters()).device
    cache = make_cache(lm, policy)
    chunk = prefill_chunk_size(lm, cache.policy)
    last = prefill(lm.model, cache, torch.tensor([ctx], device=device), chunk_size=chunk)  # (1, V)
    snap = cache.snapshot()
    kept_ctx = int(cache.n_kept()[0])
    logliks, kept, seen, greedy = [], [], [], []
    for cont in conts:
        ids = torch.tensor([cont], device=device)  # (1, N)
        logits = forward_chunk(lm.model, cache, ids)[0]  # (N, V)
        ll, is_greedy = _loglik(torch.cat([last, logits[:-1]], 0), ids[0])
        logliks.append(ll)
        greedy.append(is_greedy)
        kept.append(int(cache.n_kept()[0]))
        seen.append(int(cache.n_seen[0]))
        cache.restore(snap)
    return CachedScores(logliks, len(ctx), kept_ctx, kept, seen, greedy)


def _encode(lm: LoadedModel, text: str) -> list[int]:
    return list(lm.tokenizer(text, add_special_tokens=True)["input_ids"])


def _encode_cont(lm: LoadedModel, text: str) -> list[int]:
    return list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class ScorerResult:
    acc: float
    acc_norm: float
    seconds: float
    predictions: list[int] = field(default_factory=list)


@dataclass
class QAResult:
    """Accuracy per scorer, C⇓ of the anchor cache and T⇑ of anchor decoding."""

    task: str
    shots: int
    items: int
    scorers: dict[str, ScorerResult]
    ctx_tokens: int  # summed over items (one context per item and choice-context)
    kept_after_ctx: int  # anchor-cache entries after the contexts, summed
    kept_end: int  # anchor-cache entries after each scored choice, summed over choices
    seen_end: int  # tokens seen after each scored choice, summed over choices

    @property
    def kv_reduction_prompt(self) -> float | None:
        """C⇓ at the end of the prompt: 1 - kept / context tokens (anchor cache; None without the anchor scorer)."""
        return kv_reduction(self.kept_after_ctx, self.ctx_tokens) if self.ctx_tokens else None

    @property
    def kv_reduction_end(self) -> float | None:
        """C⇓ after the scored choice: 1 - kept / tokens seen (anchor cache; None without the anchor scorer)."""
        return kv_reduction(self.kept_end, self.seen_end) if self.seen_end else None

    def speedups(self) -> dict[str, float]:
        """T⇑ of anchor-cache scoring against no-cache and full-cache scoring (present scorers only)."""
        out = {}
        a = self.scorers.get("anchor")
        if a is not None:
            for base in ("nocache", "full"):
                if base in self.scorers:
                    out[f"speedup_vs_{base}"] = speedup(self.scorers[base].seconds, a.seconds)
        return out

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "shots": self.shots,
            "items": self.items,
            **{f"acc_{k}": v.acc for k, v in self.scorers.items()},
            **{f"acc_norm_{k}": v.acc_norm for k, v in self.scorers.items()},
            **{f"seconds_{k}": v.seconds for k, v in self.scorers.items()},
            "kv_reduction_prompt": self.kv_reduction_prompt,
            "kv_reduction_end": self.kv_reduction_end,
            **self.speedups(),
            "scorers": {k: asdict(v) for k, v in self.scorers.items()},
        }


def _best(scores: list[float]) -> int:
    return max(range(len(scores)), key=scores.__getitem__)


def evaluate_qa(
    lm: LoadedModel,
    items: list[MCItem],
    *,
    task: str = "local",
    shots: int = 0,
    scorers: tuple[str, ...] = SCORERS,
    ac_placement: AcPlacement = "demo",
    seed: int = 1234,
    progress: bool = False,
) -> QAResult:
    """Score every item with every scorer in ``scorers`` (``masked``, ``anchor``, ``full``, ``nocache``).

    ``progress`` shows a bar on stderr, one step per item.
    """
    bad = [s for s in scorers if s not in SCORERS]
    if bad or not scorers:
        raise AnLLMError(f"unknown scorer(s) {bad}; choose from {', '.join(SCORERS)}")
    reqs = build_requests(items, shots, ac=lm.anchor.kind == "ac", ac_placement=ac_placement, seed=seed)
    logliks = {s: [] for s in scorers}
    seconds = dict.fromkeys(scorers, 0.0)
    ctx_tokens = kept_ctx = kept_end = seen_end = 0
    with torch.inference_mode():
        for r in progress_bar(reqs, desc=f"qa {task}", unit="item", enabled=progress):
            ctxs = [_encode(lm, c) for c in r.contexts]
            conts = [_encode_cont(lm, c) for c in r.continuations]
            longest = max(len(c) + len(k) for c, k in zip(ctxs, conts))
            check_fits(lm, longest, "an item has", "use fewer shots")
            groups = {}  # identical contexts share one cached prefill
            for i, c in enumerate(ctxs):
                groups.setdefault(tuple(c), []).append(i)
            for s in scorers:
                scores = [0.0] * len(conts)
                t0 = time.perf_counter()
                if s in ("masked", "nocache"):
                    for i, (c, k) in enumerate(zip(ctxs, conts)):
                        scores[i] = score_one_pass(lm, c, k, masked=s == "masked")
                else:
                    for c, idx in groups.items():
                        res = score_cached(lm, list(c), [conts[i] for i in idx], s)
                        for i, ll in zip(idx, res.logliks):
                            scores[i] = ll
                        if s == "anchor":
                            ctx_tokens += res.ctx_tokens
                            kept_ctx += res.kept_after_ctx
                            kept_end += sum(res.kept_end)
                            seen_end += sum(res.seen_end)
                seconds[s] += time.perf_counter() - t0
                logliks[s].append(scores)
    gold = [r.label for r in reqs]
    results = {}
    for s in scorers:
        pred = [_best(sc) for sc in logliks[s]]
        pred_norm = [_best([x / max(n, 1) for x, n in zip(sc, r.choice_chars)]) for sc, r in zip(logliks[s], reqs)]
        results[s] = ScorerResult(accuracy(pred, gold), accuracy(pred_norm, gold), seconds[s], pred)
    return QAResult(task, shots, len(items), results, ctx_tokens, kept_ctx, kept_end, seen_end)
