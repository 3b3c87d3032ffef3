"""The decode loop, for any cache policy: ``prefill`` -> ``decode_step`` -> ``generate_step`` (tokens), under
``stream_generate`` / ``generate`` (one prompt, text) and ``generate_batch`` (several prompts, ids).

Every step reports what the cache holds, so the CLI, the app and benchmarks show exactly what the library does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from anllm.anchors import insert_ac
from anllm.cache import PolicyCache
from anllm.compat import cache_kwarg
from anllm.config import AC_TOKEN, AnLLMError, GenerationConfig
from anllm.models import LoadedModel
from anllm.policies import EvictionPolicy
from anllm.renames import renamed_kwargs
from anllm.stats import RunStats, decode_rate


# -- low level: one forward pass through a policy cache ---------------------------------------------------------
@renamed_kwargs(mode="policy")
def make_cache(lm: LoadedModel, policy: str | EvictionPolicy = "anchor") -> PolicyCache:
    """An empty :class:`PolicyCache` for ``lm`` under ``policy`` (``"full"``, ``"anchor"``, a spec or an object)."""
    return PolicyCache(
        lm.model.config, lm.policy(policy), lm.anchor_ids, lm.anchor.position_policy, lm.anchor.max_segment
    )


def forward_chunk(
    model, cache: PolicyCache, input_ids: Tensor, attention_mask: Tensor | None = None, logits_to_keep=0
) -> Tensor:
    """Run one chunk through ``model`` with ``cache``, then apply the cache's eviction rule.

    Args:
        input_ids: long ``(B, Q)``.
        attention_mask: ``(B, Q)`` 1 = real token, 0 = padding; None = all real.
        logits_to_keep: 0 for all positions, an int ``n`` for the last ``n``, or a long index tensor.
    Returns:
        float logits ``(B, Q', V)``.
    """
    mask, position_ids = cache.prepare(input_ids, attention_mask, dtype=model.dtype)
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=logits_to_keep,
        **{cache_kwarg(model): cache},
    )
    cache.evict()
    return out.logits


def prefill_chunk_size(lm: LoadedModel, policy: EvictionPolicy) -> int | None:
    """The prefill chunk the library uses for ``policy`` (docs/benchmarks.md, "Prefill against the backbone").

    Measured per policy: the full cache prefills in one pass (None): it never evicts, so chunks would only add masked
    attention over a growing cache. Every evicting policy (anchor, streaming, sepllm) runs fastest at the same chunk,
    the model's ``lm.anchor.chunk_size`` (256 unless ``--chunk-size`` says otherwise), and drops entries after each
    chunk, so neither a full KV cache nor a ``T x T`` mask is ever built.
    """
    return None if policy.uses_model_causal_mask else lm.anchor.chunk_size


def prefill(
    model, cache: PolicyCache, input_ids: Tensor, attention_mask: Tensor | None = None, chunk_size: int | None = None
) -> Tensor:
    """Feed a (padded) prompt, in chunks of ``chunk_size`` tokens (None = one pass).

    Only the logits prefill returns are computed: a chunk in which no row ends skips the LM head entirely.

    Returns:
        float ``(B, V)``: the logits at each row's last real token (left or right padding both work).
    """
    B, T = input_ids.shape
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if not bool(valid.any(-1).all()):
        raise AnLLMError("a prompt in the batch has no tokens; give every row at least one token")
    last = (valid.long() * torch.arange(T, device=input_ids.device)).argmax(-1)  # (B,) index of last real token
    step = chunk_size or T
    no_logits = torch.empty(0, dtype=torch.long, device=input_ids.device)  # keep no position: skip the LM head
    out = None
    for s in range(0, T, step):
        e = min(s + step, T)
        rows = (last >= s) & (last < e)
        if bool(rows.any()):
            keep = torch.unique(last[rows] - s)  # chunk-relative positions whose logits we need
            logits = forward_chunk(model, cache, input_ids[:, s:e], valid[:, s:e].long(), logits_to_keep=keep)
            if out is None:
                out = logits.new_zeros(B, logits.shape[-1])
            where = torch.searchsorted(keep, (last - s).clamp(0, e - s - 1))  # (B,)
            out[rows] = logits[rows, where[rows]]
        else:
            forward_chunk(model, cache, input_ids[:, s:e], valid[:, s:e].long(), logits_to_keep=no_logits)
    return out


def decode_step(model, cache: PolicyCache, tokens: Tensor, valid: Tensor | None = None) -> Tensor:
    """Feed one token per row (long ``(B,)``); return the next-token logits ``(B, V)``."""
    mask = None if valid is None else valid[:, None].long()
    return forward_chunk(model, cache, tokens[:, None], mask, logits_to_keep=1)[:, -1]


# -- sampling ----------------------------------------------------------------------------------------------------
def sample_next(logits: Tensor, gen: GenerationConfig, history: Tensor | None, generator=None) -> Tensor:
    """Pick the next token per row from logits ``(B, V)``; ``history`` ``(B, T)`` feeds the repetition penalty."""
    logits = logits.float()
    if gen.repetition_penalty != 1.0 and history is not None and history.numel():
        score = logits.gather(1, history)
        score = torch.where(score < 0, score * gen.repetition_penalty, score / gen.repetition_penalty)
        logits = logits.scatter(1, history, score)
    if not gen.do_sample:
        return logits.argmax(-1)
    logits = logits / gen.temperature
    if gen.top_k > 0:
        kth = torch.topk(logits, min(gen.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if gen.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= gen.top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def _unpadded_history(input_ids: Tensor, valid: Tensor) -> Tensor:
    """``input_ids`` ``(B, T)`` with each padding position replaced by the row's first real token.

    The repetition penalty gathers and scatters over the history; a repeated real token changes nothing there, while
    the pad id would be penalised (and the pad id is often EOS).
    """
    first = input_ids.gather(1, valid.long().argmax(-1, keepdim=True))  # (B, 1)
    return torch.where(valid, input_ids, first)


def generate_step(
    model,
    cache: PolicyCache,
    input_ids: Tensor,
    gen: GenerationConfig,
    *,
    attention_mask: Tensor | None = None,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    done: Tensor | None = None,
    pad_id: int = 0,
) -> Iterator[Tensor]:
    """The token-level decode loop: prefill, then yield the next token per row, long ``(B,)``, until the caller stops.

    Args:
        input_ids: long ``(B, T)``, left or right padded.
        attention_mask: ``(B, T)`` 1 = real token, 0 = padding; None = all real.
        done: bool ``(B,)`` owned by the caller, who sets finished rows to True in place before asking for the next
            token; those rows then yield ``pad_id`` and feed it as (masked) padding. None = a single row, never done.
    """
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    history = _unpadded_history(input_ids, valid)
    logits = prefill(model, cache, input_ids, attention_mask, chunk_size=chunk_size)
    while True:
        token = sample_next(logits, gen, history, generator)  # (B,)
        if done is not None:
            token = torch.where(done, torch.full_like(token, pad_id), token)
        yield token
        history = torch.cat([history, token[:, None]], 1)
        logits = decode_step(model, cache, token, valid=None if done is None else ~done)


# -- prompts -----------------------------------------------------------------------------------------------------
def encode_prompt(lm: LoadedModel, prompt: str, chat: bool = True) -> list[int]:
    """Token ids of a prompt: chat template when asked for and available, ``<AC>`` inserted in AC mode."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise AnLLMError("the prompt is empty: give some text to continue or a question to answer")
    text = insert_ac(prompt) if lm.anchor.kind == "ac" else prompt
    tok = lm.tokenizer
    if chat and getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    return tok(text)["input_ids"]


def eos_ids(lm: LoadedModel) -> set[int]:
    ids = set()
    for src in (lm.tokenizer.eos_token_id, getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif src:
            ids.update(int(i) for i in src)
    return ids


def check_fits(lm: LoadedModel, n_tokens: int, what: str = "the prompt has", hint: str = "shorten it") -> int | None:
    """Raise if ``n_tokens`` exceed the model's positions (``max_position_embeddings``); returns that limit or None.

    The one place the position check lives: generation, perplexity, QA, benchmarks and verify all call it, each with
    its own ``what`` (the subject of the message) and ``hint`` (what to do about it; ``{limit}`` is filled in).
    """
    limit = getattr(lm.model.config, "max_position_embeddings", None)
    if limit is not None and n_tokens > limit:
        raise AnLLMError(
            f"{what} {n_tokens} tokens but the model supports {limit} positions; {hint.format(limit=limit)}"
        )
    return limit


def check_max_new_tokens(lm: LoadedModel, n_prompt: int, max_new_tokens: int) -> None:
    """Refuse (never clamp) a generation length that runs past the model's positions after an ``n_prompt`` prompt.

    Raises:
        AnLLMError: naming the largest ``max_new_tokens`` that fits.
    """
    limit = getattr(lm.model.config, "max_position_embeddings", None)
    if limit is not None and n_prompt + max_new_tokens > limit:
        raise AnLLMError(
            f"max new tokens {max_new_tokens} + the prompt's {n_prompt} tokens exceed the model's {limit} positions; "
            f"ask for at most {max(limit - n_prompt, 0)} new tokens (or shorten the prompt)"
        )


# -- streaming ---------------------------------------------------------------------------------------------------
@dataclass
class GenerationResponse:
    """One generated token and the state of the cache when it was produced."""

    token: int  # the token id
    text: str  # text this token adds to the output (may be "" while a multi-byte character is incomplete)
    is_anchor: bool
    step: int  # tokens generated so far, this one included
    prompt_tokens: int
    kv_entries: int  # entries stored per layer
    kv_full_entries: int  # entries a full cache would hold (tokens seen)
    kv_bytes: int  # bytes of K/V held, all layers
    n_evicted: int  # entries dropped so far
    elapsed_s: float  # since the call started, prefill included
    prefill_s: float
    tokens_per_s: float  # generated tokens / time since the first token (decode speed)
    finish_reason: str | None = None  # None while running, then "eos", "stop" or "length"

    @property
    def stats(self) -> RunStats:
        """The run's numbers at this token (KV kept fraction, C⇓, tokens/s are defined there)."""
        return _run_stats(self, new_tokens=self.step)

    def to_dict(self) -> dict:
        return asdict(self)


def _run_stats(r: GenerationResponse | GenerationResult, new_tokens: int) -> RunStats:
    """The :class:`RunStats` of a response or result (the one place their fields map onto it)."""
    return RunStats(
        kv_entries=r.kv_entries,
        kv_full_entries=r.kv_full_entries,
        kv_bytes=r.kv_bytes,
        n_evicted=r.n_evicted,
        prompt_tokens=r.prompt_tokens,
        new_tokens=new_tokens,
        prefill_s=r.prefill_s,
        elapsed_s=r.elapsed_s,
    )


class _TextTracker:
    """Incremental detokenisation: hides ``<AC>``, holds back incomplete UTF-8 characters and any tail that could
    still become a stop string, so streamed text never has to be taken back."""

    def __init__(self, tokenizer, hide: set[int], stop_strings: tuple[str, ...]):
        self.tok, self.hide, self.stops = tokenizer, hide, stop_strings
        self.ids: list[int] = []
        self.text = ""  # decoded so far (complete characters only)
        self.emitted = 0  # characters already handed out

    def add(self, token: int) -> None:
        if token not in self.hide:
            self.ids.append(token)
            text = self.tok.decode(self.ids, skip_special_tokens=True)
            if not text.endswith("\ufffd"):
                self.text = text

    def stop_at(self) -> int | None:
        """Index where the first stop string starts, or None."""
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        return min(hits) if hits else None

    def take(self, end: int | None = None) -> str:
        """Text not yet handed out, up to ``end`` (default: all that cannot still start a stop string)."""
        if end is None:
            end = len(self.text)
            for s in self.stops:
                for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        out = self.text[self.emitted : max(end, self.emitted)]
        self.emitted += len(out)
        return out


@renamed_kwargs(mode="policy")
def stream_generate(
    lm: LoadedModel,
    prompt: str | list[int],
    policy: str | EvictionPolicy = "anchor",
    gen: GenerationConfig | None = None,
    *,
    cache: PolicyCache | None = None,
) -> Iterator[GenerationResponse]:
    """Generate for one prompt, yielding a :class:`GenerationResponse` per token.

    ``prompt`` is text (chat template applied when ``gen.chat`` and available) or token ids. ``cache``: continue
    a one-row cache that already holds earlier text (a saved document, a chat); it is extended in place and its own
    policy is used instead of ``policy``. The last sampled token is not fed into it.
    """
    gen = gen or GenerationConfig()
    model = lm.model
    ids = encode_prompt(lm, prompt, gen.chat) if isinstance(prompt, str) else list(prompt)
    if not ids:
        raise AnLLMError("the prompt is empty: give some text to continue or a question to answer")
    n_cached = int(cache.n_seen.max()) if cache is not None and cache.n_seen is not None else 0
    check_fits(lm, n_cached + len(ids), "the cached text and the prompt have" if n_cached else "the prompt has")
    check_max_new_tokens(lm, n_cached + len(ids), gen.max_new_tokens)  # refused, never clamped
    max_new = gen.max_new_tokens
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    generator = torch.Generator(device).manual_seed(gen.seed) if gen.seed is not None else None
    stop_ids = eos_ids(lm) if gen.stop_on_eos else set()
    ac_id = lm.tokenizer.get_vocab().get(AC_TOKEN)
    tracker = _TextTracker(lm.tokenizer, {ac_id} if ac_id is not None else set(), gen.stop_strings)
    anchor_set = set(lm.anchor_ids)
    cache = make_cache(lm, policy) if cache is None else cache
    chunk = prefill_chunk_size(lm, cache.policy)
    t0 = time.perf_counter()
    with torch.inference_mode():
        steps = generate_step(model, cache, input_ids, gen, chunk_size=chunk, generator=generator)
        t_prefill = None
        for step in range(1, max_new + 1):
            token = next(steps)  # (1,)
            if t_prefill is None:
                t_prefill = time.perf_counter() - t0  # includes sampling the first token
            tok = int(token[0])
            finish = None
            if tok in stop_ids:
                finish, delta = "eos", tracker.take(len(tracker.text))
            else:
                tracker.add(tok)
                cut = tracker.stop_at()
                if cut is not None:
                    finish, delta = "stop", tracker.take(cut)
                elif step == max_new:
                    finish, delta = "length", tracker.take(len(tracker.text))
                else:
                    delta = tracker.take()
            now = time.perf_counter()
            yield GenerationResponse(
                token=tok,
                text=delta,
                is_anchor=tok in anchor_set,
                step=step,
                prompt_tokens=len(ids),
                kv_entries=int(cache.n_kept()[0]),
                kv_full_entries=int(cache.n_seen[0]),
                kv_bytes=int(cache.kv_bytes()[0]),
                n_evicted=int(cache.n_evicted[0]),
                elapsed_s=now - t0,
                prefill_s=t_prefill,
                tokens_per_s=decode_rate(step, now - t0, t_prefill),
                finish_reason=finish,
            )
            if finish is not None:
                return


@dataclass
class GenerationResult:
    """What :func:`generate` returns for one prompt."""

    text: str
    tokens: list[int]
    prompt_tokens: int
    finish_reason: str
    kv_entries: int  # stored at the end
    kv_full_entries: int  # a full cache would hold this many
    kv_bytes: int
    peak_kv_bytes: int
    n_evicted: int
    prefill_s: float
    elapsed_s: float
    tokens_per_s: float

    @property
    def stats(self) -> RunStats:
        """The run's numbers at the end (KV kept fraction, C⇓, tokens/s are defined there)."""
        return _run_stats(self, new_tokens=len(self.tokens) + (self.finish_reason == "eos"))

    @classmethod
    def empty(cls) -> GenerationResult:
        """The result of asking for no tokens (``max_new_tokens == 0``)."""
        return cls(
            text="", tokens=[], prompt_tokens=0, finish_reason="length", kv_entries=0, kv_full_entries=0, kv_bytes=0,
            peak_kv_bytes=0, n_evicted=0, prefill_s=0.0, elapsed_s=0.0, tokens_per_s=0.0,
        )  # fmt: skip

    @property
    def kv_reduction(self) -> float:
        """C⇓ = 1 - kept / full entries at the end."""
        return self.stats.kv_reduction

    def to_dict(self) -> dict:
        return {**asdict(self), "kv_reduction": self.kv_reduction}


@renamed_kwargs(mode="policy")
def generate(
    lm: LoadedModel,
    prompt: str | list[int],
    policy: str | EvictionPolicy = "anchor",
    gen: GenerationConfig | None = None,
) -> GenerationResult:
    """Generate for one prompt and return the text, tokens and cache statistics."""
    tokens, parts, last, peak = [], [], None, 0
    for r in stream_generate(lm, prompt, policy, gen):
        if r.finish_reason != "eos":
            tokens.append(r.token)
        parts.append(r.text)
        peak = max(peak, r.kv_bytes)
        last = r
    if last is None:  # max_new_tokens == 0
        return GenerationResult.empty()
    return GenerationResult(
        text="".join(parts),
        tokens=tokens,
        prompt_tokens=last.prompt_tokens,
        finish_reason=last.finish_reason,
        kv_entries=last.kv_entries,
        kv_full_entries=last.kv_full_entries,
        kv_bytes=last.kv_bytes,
        peak_kv_bytes=peak,
        n_evicted=last.n_evicted,
        prefill_s=last.prefill_s,
        elapsed_s=last.elapsed_s,
        tokens_per_s=last.tokens_per_s,
    )


@renamed_kwargs(mode="policy")
def generate_batch(
    lm: LoadedModel, prompts: list[str], policy: str | EvictionPolicy = "anchor", gen: GenerationConfig | None = None
) -> list[list[int]]:
    """Greedy/sampled generation for several prompts at once (left padding); returns new token ids per prompt.

    A row ends at EOS (kept, as in ``model.generate``), at the token that completes one of ``gen.stop_strings``
    (kept; the text before the stop string is ``decode(ids)`` cut at it) or after ``gen.max_new_tokens``.
    """
    gen = gen or GenerationConfig()
    seqs = [encode_prompt(lm, p, gen.chat) for p in prompts]
    pad = lm.tokenizer.pad_token_id
    T = max(len(s) for s in seqs)
    device = next(lm.model.parameters()).device
    input_ids = torch.tensor([[pad] * (T - len(s)) + s for s in seqs], device=device)
    attn = torch.tensor([[0] * (T - len(s)) + [1] * len(s) for s in seqs], device=device)
    return generate_ids(lm, input_ids, attn, policy, gen)


@renamed_kwargs(mode="policy")
def generate_ids(
    lm: LoadedModel,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    policy: str | EvictionPolicy,
    gen: GenerationConfig,
) -> list[list[int]]:
    """Batched decode on token ids ``(B, T)`` through :func:`generate_step`; finished rows feed masked padding."""
    B = input_ids.shape[0]
    n_real = input_ids.shape[1] if attention_mask is None else int(attention_mask.sum(-1).max())
    check_fits(lm, n_real)
    check_max_new_tokens(lm, n_real, gen.max_new_tokens)  # refused, never clamped
    max_new = gen.max_new_tokens
    cache = make_cache(lm, policy)
    chunk = prefill_chunk_size(lm, cache.policy)
    stop_ids = eos_ids(lm) if gen.stop_on_eos else set()
    generator = torch.Generator(input_ids.device).manual_seed(gen.seed) if gen.seed is not None else None
    ac_id = lm.tokenizer.get_vocab().get(AC_TOKEN)
    trackers = [_TextTracker(lm.tokenizer, {ac_id} if ac_id is not None else set(), gen.stop_strings) for _ in range(B)]
    out: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    pad = lm.tokenizer.pad_token_id
    with torch.inference_mode():
        steps = generate_step(
            lm.model, cache, input_ids, gen, attention_mask=attention_mask, chunk_size=chunk, generator=generator,
            done=done, pad_id=pad,
        )  # fmt: skip
        for _ in range(max_new):
            token = next(steps).tolist()
            for b in range(B):
                if done[b]:
                    continue
                out[b].append(token[b])
                if token[b] in stop_ids:
                    done[b] = True
                elif gen.stop_strings:
                    trackers[b].add(token[b])
                    done[b] = trackers[b].stop_at() is not None
            if bool(done.all()):
                break
    return out
