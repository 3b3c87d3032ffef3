"""Long-range recall through the real caches: does a fact survive compression? (docs/evaluation.md, "Recall").

Every item is run the way users run the model: the prompt is prefilled through the policy's cache in chunks, then
(1) the answer is scored by teacher forcing through a copy of that cache (mean log-probability per answer token) and
(2) the model decodes greedily through the cache itself; exact match = the normalised answer appears as a word
sequence in the first line of the output. Budgets are matched per item: the ``budget`` mode runs first and its
entries after the prompt size the StreamingLLM / SepLLM caches of the same item.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from anllm.anchors import insert_ac
from anllm.config import AnLLMError, GenerationConfig
from anllm.generation import decode_step, eos_ids, forward_chunk, make_cache, prefill, sample_next
from anllm.memory import FAMILIES, MemoryItem, make_items
from anllm.models import LoadedModel
from anllm.policies import BUDGETED, budget_spec
from anllm.resources import KJV_GENESIS, resource_path
from anllm.textio import read_jsonl

DEFAULT_DISTANCES = (64, 256, 1024, 2048, 4096)
DEFAULT_FILLER = resource_path(KJV_GENESIS)  # public domain, never trained on
_GREEDY = GenerationConfig(max_new_tokens=1, chat=False)
_WORD = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed."""
    return " ".join(_WORD.sub(" ", text.lower()).split())


def exact_match(answer: str, output: str) -> bool:
    """The normalised answer appears as whole words in the output's first non-empty line."""
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    first = normalise(lines[0]) if lines else ""
    want = normalise(answer)
    return bool(want) and f" {want} " in f" {first} "


# -- items -> tokens --------------------------------------------------------------------------------------------------
def render(lm: LoadedModel, item: MemoryItem, *, chat: bool = True) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the reference answer as the model's continuation.

    With ``chat`` (and a chat template) the context and question are one user turn (the chat family keeps its turns);
    otherwise ``context``, a blank line, ``Question: ...`` and ``Answer:``.
    """
    tok = lm.tokenizer
    if lm.anchor.kind == "ac":  # <AC> after every sentence, as encode_prompt does for users' prompts
        item = replace(
            item,
            context=insert_ac(item.context) if item.context.strip() else item.context,
            question=insert_ac(item.question),
            turns=tuple((r, insert_ac(x)) for r, x in item.turns),
        )
    if chat and getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template(item.messages(), add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        answer = tok(item.answer, add_special_tokens=False)["input_ids"]
        return list(ids), list(answer)
    ids = tok(item.plain_prompt())["input_ids"]
    return list(ids), list(tok(" " + item.answer, add_special_tokens=False)["input_ids"])


# -- one item through one cache -------------------------------------------------------------------------------------
@dataclass
class ItemScore:
    """What one policy did on one item."""

    em: bool
    logprob: float  # mean log-probability per answer token (teacher forcing through the cache)
    kv_entries: int  # entries stored after the prompt
    prompt_tokens: int
    output: str


@torch.inference_mode()
def answer_logprob(lm: LoadedModel, cache, last_logits: torch.Tensor, answer: list[int]) -> float:
    """Mean log p(answer) continuing ``cache`` (left untouched: a copy is fed); ``last_logits`` ``(1, V)``."""
    if not answer:
        raise AnLLMError("the answer encodes to no tokens")
    device = last_logits.device
    ans = torch.tensor([answer], device=device)  # (1, N)
    scores = last_logits
    if len(answer) > 1:
        rest = forward_chunk(lm.model, copy.deepcopy(cache), ans[:, :-1])[0]  # (N-1, V)
        scores = torch.cat([last_logits, rest], 0)  # (N, V)
    logp = torch.log_softmax(scores.double(), -1).gather(1, ans[0][:, None])  # (N, 1)
    return float(logp.mean())


@torch.inference_mode()
def score_item(
    lm: LoadedModel,
    prompt: list[int],
    answer: str,
    answer_ids: list[int],
    mode,
    *,
    chunk_size: int | None = None,
    max_new_tokens: int = 24,
) -> ItemScore:
    """Prefill ``prompt`` through a ``mode`` cache, score ``answer_ids`` and decode greedily (see module doc)."""
    model = lm.model
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)  # (1, T)
    cache = make_cache(lm, mode)
    chunk = None if cache.policy.uses_model_causal_mask else (chunk_size or lm.anchor.chunk_size)
    logits = prefill(model, cache, ids, chunk_size=chunk)  # (1, V)
    kv = int(cache.n_kept()[0])
    logprob = answer_logprob(lm, cache, logits, answer_ids)
    stops, out = eos_ids(lm), []
    for _ in range(max_new_tokens):
        token = sample_next(logits, _GREEDY, None)  # (1,)
        if int(token[0]) in stops:
            break
        out.append(int(token[0]))
        text = lm.tokenizer.decode(out, skip_special_tokens=True)
        if "\n" in text.strip():
            break
        logits = decode_step(model, cache, token)
    text = lm.tokenizer.decode(out, skip_special_tokens=True)
    return ItemScore(exact_match(answer, text), logprob, kv, len(prompt), text)


def recall_record(item, prompt: list[int], mode: str, spec: str, score: ItemScore) -> dict:
    """One item scored under one policy, as every recall record is written (``items`` of :class:`RecallResult`,
    the ``recall`` rows of ``bench/peers`` exports).

    Args:
        item: the recall item (``id``, ``family``, ``distance``, ``answer``).
        prompt: its rendered prompt ids (a user item's distance is its prompt length).
        mode: the row's label (a policy name, or e.g. ``"full-base"``); spec: the policy spec that ran.
    """
    return {
        "id": item.id,
        "family": item.family,
        "distance": item.distance if item.distance >= 0 else len(prompt),
        "mode": mode,
        "spec": spec,
        "em": score.em,
        "logprob": score.logprob,
        "kv_entries": score.kv_entries,
        "prompt_tokens": score.prompt_tokens,
        "answer": item.answer,
        "output": score.output,
    }


# -- the benchmark ----------------------------------------------------------------------------------------------------
@dataclass
class RecallRow:
    """One policy at one (family, distance): means over its items."""

    mode: str
    family: str
    distance: int
    n: int
    em: float
    logprob: float
    kv_entries: float
    prompt_tokens: float


@dataclass
class RecallResult:
    rows: list[RecallRow]
    items: list[dict] = field(default_factory=list)  # per item and mode: id, mode, em, logprob, kv, output
    seconds: float = 0.0

    def table(self) -> list[dict]:
        return [asdict(r) for r in self.rows]

    def summary(self) -> dict[str, dict[int, float]]:
        """``{mode: {distance: exact match over all families}}``."""
        out: dict[str, dict[int, list]] = {}
        for it in self.items:
            out.setdefault(it["mode"], {}).setdefault(it["distance"], []).append(it["em"])
        return {m: {d: sum(v) / len(v) for d, v in sorted(ds.items())} for m, ds in out.items()}

    def to_dict(self) -> dict:
        return {"rows": self.table(), "summary": self.summary(), "seconds": self.seconds}


def load_user_items(path: str | Path) -> list[MemoryItem]:
    """``{"context", "question", "answer"}`` per JSONL line; a bad line is named by its number."""
    path = Path(path)
    items = []
    for n, obj in read_jsonl(path, "recall items"):
        if not isinstance(obj, dict):
            raise AnLLMError(f"{path}:{n}: expected a JSON object with context, question and answer")
        for key in ("context", "question", "answer"):
            if not isinstance(obj.get(key), str) or (key != "context" and not obj[key].strip()):
                got = type(obj.get(key)).__name__ if key in obj else "missing"
                raise AnLLMError(f"{path}:{n}: '{key}' must be a non-empty string (got {got})")
        items.append(
            MemoryItem(str(obj.get("id", f"user-{n}")), "user", -1, obj["context"], obj["question"], obj["answer"])
        )
    if not items:
        raise AnLLMError(f"recall items file {path} has no items")
    return items


def builtin_items(
    lm: LoadedModel,
    *,
    seed: int = 0,
    distances: tuple[int, ...] = DEFAULT_DISTANCES,
    n: int = 5,
    families: tuple[str, ...] = FAMILIES,
    filler: str | None = None,
) -> list[MemoryItem]:
    """The benchmark's generated items for ``lm``'s tokenizer (distances in its tokens)."""
    config = getattr(getattr(lm, "model", None), "config", None)  # a tokenizer-only stand-in has no model
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and distances and max(distances) >= limit:  # before building megabytes of filler
        d = max(distances)
        raise AnLLMError(
            f"distance {d} needs more than {d} positions but the model supports {limit}; use shorter --distances"
        )
    filler = filler if filler is not None else DEFAULT_FILLER.read_text(encoding="utf-8")
    fewshot = None
    if "fewshot" in families:
        from anllm.evaluation.tasks import load_task

        fewshot = load_task("toy")
    tok = lm.tokenizer
    return make_items(
        seed=seed,
        distances=tuple(distances),
        n_per_distance=n,
        filler=filler,
        count_tokens=lambda s: len(tok(s, add_special_tokens=False)["input_ids"]),
        families=tuple(families),
        fewshot_items=fewshot,
    )


def evaluate_recall(
    lm: LoadedModel,
    items: list[MemoryItem],
    modes: Iterable[str] = ("full", "anchor", "streaming", "sepllm"),
    *,
    budget: str | None = "anchor",
    chat: bool = True,
    chunk_size: int | None = None,
    max_new_tokens: int = 24,
    progress: Callable[[int, int], None] | None = None,
) -> RecallResult:
    """Run every item through every mode (budgets matched per item to ``budget``'s entries after the prompt).

    Raises:
        AnLLMError: an item longer than the model's positions (named with its distance), or a bad mode/budget.
    """
    modes = tuple(modes)
    if not modes:
        raise AnLLMError("no modes given: use e.g. full,anchor,streaming,sepllm")
    if budget is not None and budget not in modes:
        raise AnLLMError(f"budget={budget!r} must be one of the modes {list(modes)} (its cache size is matched)")
    for m in modes:
        lm.policy(m)  # validate every spec before the slow part
    rendered = [render(lm, it, chat=chat) for it in items]
    limit = getattr(lm.model.config, "max_position_embeddings", None)
    for it, (prompt, ans) in zip(items, rendered):
        if limit is not None and len(prompt) + max(len(ans), max_new_tokens) > limit:
            what = f"distance {it.distance}" if it.distance >= 0 else f"item {it.id}"
            raise AnLLMError(
                f"{what} needs {len(prompt) + max_new_tokens} positions but the model supports {limit}; "
                "use shorter distances (--distances) or contexts"
            )
    order = sorted(modes, key=lambda m: m != budget)
    t0 = time.perf_counter()
    records, done, total = [], 0, len(items) * len(order)
    for it, (prompt, ans) in zip(items, rendered):
        matched = None
        for m in order:
            spec = m
            if budget is not None and m in BUDGETED and matched is not None:
                spec = budget_spec(m, matched)
            s = score_item(
                lm, prompt, it.answer, ans, lm.policy(spec), chunk_size=chunk_size, max_new_tokens=max_new_tokens
            )
            if m == budget:
                matched = max(2, s.kv_entries)
            records.append(recall_record(it, prompt, m, spec, s))
            done += 1
            if progress is not None:
                progress(done, total)
    return RecallResult(_rows(records, modes), records, time.perf_counter() - t0)


def _rows(records: list[dict], modes: tuple[str, ...]) -> list[RecallRow]:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["mode"], r["family"], r["distance"]), []).append(r)
    rows = []
    for (m, fam, d), rs in groups.items():
        k = len(rs)
        mean = {key: sum(r[key] for r in rs) / k for key in ("em", "logprob", "kv_entries", "prompt_tokens")}
        rows.append(RecallRow(m, fam, d, k, **mean))
    rank = {m: i for i, m in enumerate(modes)}
    return sorted(rows, key=lambda r: (r.family, r.distance, rank[r.mode]))
