"""Speed and memory benchmark: prefill time, decode tokens/s, KV entries/bytes and peak memory per cache mode.

Every mode decodes the same tokens: the context is the first ``N`` tokens of a text, decoding is teacher-forced
on the text's next tokens (one token per step through :func:`anllm.generation.decode_step`, the argmax computed
as in greedy decoding), so all modes do identical work apart from their cache. Two extra rows:

* ``limit``: the empirical limit of eviction, a plain full cache holding as many entries as the anchor cache
  after prefill (the last ``K`` context tokens): anchor decoding cannot beat it.
* ``hf_generate``: ``model.generate`` (greedy, stock ``DynamicCache``) on the same context, for scale.

Prefill is set against two references measured in the same run (prefill only, no decoding):

* ``onepass``: the one-pass full prefill, ``model(context, logits_to_keep=1)`` through a stock ``DynamicCache``;
  every row's ``prefill_vs_onepass`` is its speed-up over it.
* ``backbone@C`` (``C`` tokens, or ``one-pass``): the prefill limit on ``C``-token chunks (docs/benchmarks.md,
  "Prefill against the backbone"): each chunk of the context through the decoder alone (embeddings, decoder
  layers, final norm) at its true positions, with no cache and no mask (the model's own causal kernel over the
  chunk), and the LM head for the context's last token only. That is the work every chunked prefill does at
  least; what a cache adds is attention to its stored entries, its mask and its bookkeeping. One row per chunk
  size the modes use, and one for a one-pass prefill; every row's ``prefill_of_limit`` is the limit's time on its
  own chunks over its own time.

Each mode prefills as the library does (:func:`anllm.generation.prefill_chunk_size`: the full cache in one pass,
the evicting caches in the model's chunk size) unless ``BenchConfig.chunk_size`` forces one chunk for all.

Peak memory is the process RSS sampled every few ms on CPU (freed memory is trimmed back to the OS before each
run), CUDA max-allocated on GPU. The roofline helpers give the ideal anchor/full speed-up from bytes and FLOPs.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from anllm.anchors import insert_ac
from anllm.config import AnLLMError
from anllm.evaluation.metrics import median
from anllm.generation import check_fits, decode_step, make_cache, prefill, prefill_chunk_size
from anllm.models import LoadedModel
from anllm.policies import FullCachePolicy
from anllm.progress import progress_bar
from anllm.resources import KJV_GENESIS, resource_path

logger = logging.getLogger(__name__)

PASSAGE_FILE = resource_path(KJV_GENESIS)
DEFAULT_MODES = ("full", "anchor", "streaming", "sepllm", "limit")
EXTRA_ROWS = ("limit", "hf_generate")
ONEPASS = "onepass"  # the one-pass full prefill baseline row
BACKBONE = "backbone@"  # prefix of the prefill-limit rows: backbone@<chunk tokens>
STATS = ("median", "best")


@dataclass(frozen=True)
class BenchConfig:
    """What ``anllm bench`` measures."""

    contexts: tuple[int, ...] = (256, 1024)  # context lengths in tokens
    modes: tuple[str, ...] = DEFAULT_MODES  # cache modes / specs; "limit" needs "anchor" before it
    new_tokens: int = 32  # decoded tokens per run
    repeats: int = 3  # runs per (context, mode); `stat` of them is reported
    chunk_size: int | None = None  # prefill chunk for every mode, full included (None: each mode's library default)
    compare_hf: bool = True  # add an `hf_generate` row (model.generate on the same context)
    prefill_limit: bool = True  # add the `onepass` baseline and the `backbone@C` prefill-limit rows
    stat: str = "median"  # "median" of the repetitions, or "best" (fastest prefill, fastest decode)
    warmup: bool = True  # one untimed short run first (first calls are slower)

    def __post_init__(self) -> None:
        if not self.contexts:
            raise AnLLMError("BenchConfig.contexts is empty: give at least one context length, e.g. 256")
        if any(int(c) < 2 for c in self.contexts):
            raise AnLLMError(f"BenchConfig.contexts must be >= 2 tokens each, got {self.contexts}")
        if not self.modes:
            raise AnLLMError("BenchConfig.modes is empty: e.g. full,anchor,streaming,sepllm,limit")
        if "limit" in self.modes and "anchor" not in self.modes[: self.modes.index("limit")]:
            raise AnLLMError("BenchConfig.modes: 'limit' is sized from the anchor run, so list 'anchor' before it")
        if self.new_tokens < 1:
            raise AnLLMError(f"BenchConfig.new_tokens must be >= 1, got {self.new_tokens}")
        if self.repeats < 1:
            raise AnLLMError(f"BenchConfig.repeats must be >= 1, got {self.repeats}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise AnLLMError(f"BenchConfig.chunk_size must be >= 1, got {self.chunk_size}")
        if self.stat not in STATS:
            raise AnLLMError(f"BenchConfig.stat must be one of {', '.join(STATS)}, got {self.stat!r}")


@dataclass
class ModeResult:
    """Medians (or the best) over repetitions for one (context, mode)."""

    prefill_s: float
    decode_tok_s: float | None  # None for the prefill-only rows (onepass, backbone@C)
    kv_entries: int  # entries stored at the end (after decoding)
    kv_bytes: int
    peak_mem_bytes: int | None  # process RSS peak on CPU, CUDA max-allocated on GPU
    kv_entries_prefill: int = 0  # entries stored right after prefill
    kv_full_entries: int = 0  # entries a full cache holds at the end (tokens seen)
    prefill_tok_s: float = 0.0
    chunk_size: int | None = None  # prefill chunk in tokens; None = one pass
    prefill_limit_s: float | None = None  # backbone@C's prefill_s on this row's chunks (C = chunk or context)
    prefill_of_limit: float | None = None  # prefill_limit_s / prefill_s: the fraction of the limit reached
    prefill_vs_onepass: float | None = None  # onepass prefill_s / prefill_s: speed-up over one-pass full prefill
    runs: list[dict] = field(default_factory=list)  # every repetition, for the record

    def speedups_over(self, base: ModeResult) -> dict[str, float]:
        """``decode_x``: decode tokens/s over ``base``'s; ``prefill_x``: ``base``'s prefill time over this one's."""
        return {"decode_x": self.decode_tok_s / base.decode_tok_s, "prefill_x": base.prefill_s / self.prefill_s}

    def to_dict(self) -> dict:
        return asdict(self)


# -- inputs ------------------------------------------------------------------------------------------------------
# SmolLM2-135M's shapes (its config.json): what speed and memory depend on, with no weights needed
SMOLLM2_SHAPE = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)


def shaped_model(
    name: str, *, positions: int = 8192, dtype: torch.dtype = torch.float32, device: str = "cpu", **sizes
) -> LoadedModel:
    """A model for speed and memory measurements.

    ``"smollm2-shape"`` is SmolLM2-135M's architecture with random weights and the character tokenizer (EP anchors
    ``.!?``), with ``positions`` positions: timings and cache sizes depend on shapes and token ids, not weights, so
    it stands in where the real weights cannot be had (a machine that can neither download nor receive 540 MB).
    Its tokens are characters, so a context of N tokens covers less text than SmolLM2's. ``sizes`` override
    :data:`SMOLLM2_SHAPE` fields. Any other name goes to :func:`anllm.models.load_model`.
    """
    from anllm.anchors import resolve_anchor_ids
    from anllm.config import AnchorConfig
    from anllm.models import load_model, tiny_model, tiny_tokenizer

    if name != "smollm2-shape":
        return load_model(name, dtype=dtype, device=device)
    tok = tiny_tokenizer()
    model = tiny_model(**{**SMOLLM2_SHAPE, "max_position_embeddings": positions, **sizes}).to(device, dtype)
    cfg = AnchorConfig()
    return LoadedModel(model, tok, cfg, resolve_anchor_ids(cfg, tok), name, ["random weights, character tokens"])


def builtin_passage() -> str:
    """The built-in English passage: KJV Genesis 1-36 (public domain), about 33.9k SmolLM2 tokens."""
    return PASSAGE_FILE.read_text(encoding="utf-8")


def bench_tokens(lm: LoadedModel, text: str, n_tokens: int) -> list[int]:
    """The first ``n_tokens`` ids of ``text`` (``<AC>`` inserted in AC mode); errors if it is too short/long."""
    check_fits(lm, n_tokens, "context + new tokens =", "use a shorter --context")
    if not text.strip():
        raise AnLLMError("the benchmark text is empty")
    if lm.anchor.kind == "ac":
        text = insert_ac(text)
    ids = list(lm.tokenizer(text)["input_ids"])
    if len(ids) < n_tokens:
        raise AnLLMError(f"the text has {len(ids)} tokens, fewer than the {n_tokens} needed; give a longer --text-file")
    return ids[:n_tokens]


# -- memory ------------------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: ru_maxrss (kB on Linux, bytes on macOS) is the best available
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so the next RSS peak starts from a fair base."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PeakMemory:
    """Context manager measuring peak memory: CUDA max-allocated on ``cuda`` devices, else sampled process RSS."""

    def __init__(self, device: torch.device, interval_s: float = 0.002):
        self.device, self.interval_s, self.peak = device, interval_s, 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- one run -----------------------------------------------------------------------------------------------------
def run_once(lm: LoadedModel, ctx: Tensor, cont: Tensor, policy, chunk_size: int) -> dict:
    """Prefill ``ctx`` ``(1, N)`` through a ``policy`` cache, then decode the tokens of ``cont`` ``(G,)`` one by one.

    Returns a dict with ``prefill_s``, ``decode_s``, ``decode_tok_s``, ``kv_entries(_prefill)``, ``kv_bytes``,
    ``kv_full_entries`` and ``peak_mem_bytes``.
    """
    model, device = lm.model, ctx.device
    release_memory()
    with torch.inference_mode(), PeakMemory(device) as mem:
        cache = make_cache(lm, policy)
        _sync(device)
        t0 = time.perf_counter()
        logits = prefill(model, cache, ctx, chunk_size=chunk_size)  # (1, V)
        _sync(device)
        t1 = time.perf_counter()
        kv_prefill = int(cache.n_kept()[0])
        for tok in cont:
            logits.argmax(-1)  # the greedy pick costs what it costs; the text's token is fed (teacher forcing)
            logits = decode_step(model, cache, tok.reshape(1))
        _sync(device)
        t2 = time.perf_counter()
    return {
        "prefill_s": t1 - t0,
        "decode_s": t2 - t1,
        "decode_tok_s": len(cont) / max(t2 - t1, 1e-9),
        "kv_entries_prefill": kv_prefill,
        "kv_entries": int(cache.n_kept()[0]),
        "kv_full_entries": int(cache.n_seen[0]),
        "kv_bytes": int(cache.kv_bytes()[0]),
        "peak_mem_bytes": mem.peak,
    }


class _StepClock:
    """A ``generate`` streamer that only records when each step's tokens arrive (the prompt comes first)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def run_hf_generate(lm: LoadedModel, ctx: Tensor, new_tokens: int) -> dict:
    """``model.generate`` (greedy, exactly ``new_tokens`` + 1 tokens), timed per step with a streamer.

    Prefill = call start to the first generated token; decode tokens/s = ``new_tokens`` / time from the first to
    the last generated token (both as seen by the streamer, i.e. including sampling, like our loop).
    """
    model, device = lm.model, ctx.device
    kw = dict(attention_mask=torch.ones_like(ctx), do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    clock = _StepClock()
    release_memory()
    with torch.inference_mode(), PeakMemory(device) as mem:
        _sync(device)
        t0 = time.perf_counter()
        model.generate(ctx, max_new_tokens=new_tokens + 1, min_new_tokens=new_tokens + 1, streamer=clock, **kw)
        _sync(device)
    first, last = clock.times[1], clock.times[-1]  # times[0] is the prompt being handed to the streamer
    decode_s = max(last - first, 1e-9)
    n = ctx.shape[1] + new_tokens  # entries after feeding the context and the first new_tokens generated tokens
    return {
        "prefill_s": first - t0,
        "decode_s": decode_s,
        "decode_tok_s": new_tokens / decode_s,
        "kv_entries_prefill": ctx.shape[1],
        "kv_entries": n,
        "kv_full_entries": n,
        "kv_bytes": n * kv_bytes_per_entry(lm.model.config, lm.model.dtype),
        "peak_mem_bytes": mem.peak,
    }


def run_onepass(lm: LoadedModel, ctx: Tensor) -> dict:
    """The one-pass full prefill baseline: ``model(ctx, logits_to_keep=1)`` through a stock ``DynamicCache``."""
    from transformers import DynamicCache

    from anllm.compat import cache_kwarg

    model, device = lm.model, ctx.device
    release_memory()
    with torch.inference_mode(), PeakMemory(device) as mem:
        cache = DynamicCache(config=model.config)
        _sync(device)
        t0 = time.perf_counter()
        model(input_ids=ctx, use_cache=True, logits_to_keep=1, **{cache_kwarg(model): cache})  # logits (1, 1, V)
        _sync(device)
        t1 = time.perf_counter()
    n = ctx.shape[1]
    return _prefill_only(t1 - t0, n, n * kv_bytes_per_entry(model.config, model.dtype), mem.peak)


def backbone_forward(lm: LoadedModel, ctx: Tensor, chunk_size: int | None) -> Tensor:
    """The prefill limit's work on ``chunk_size``-token chunks (None = one pass); returns the last logits ``(1, V)``.

    Each chunk of ``ctx`` ``(1, N)`` goes through the model's decoder (embeddings, decoder layers, final norm) at
    its true positions with no cache and no mask, so attention spans the chunk only, through the model's own causal
    kernel; the LM head runs once, for the context's last token. No K/V is kept, no mask or metadata is built.
    """
    model = lm.model
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    n = ctx.shape[1]
    step = min(chunk_size or n, n)
    for s in range(0, n, step):
        e = min(s + step, n)
        pos = torch.arange(s, e, device=ctx.device)[None]  # (1, C)
        hidden = decoder(input_ids=ctx[:, s:e], position_ids=pos, use_cache=False).last_hidden_state  # (1, C, H)
    return head(hidden[:, -1])  # (1, V): the logits a prefill returns


def run_backbone(lm: LoadedModel, ctx: Tensor, chunk_size: int | None) -> dict:
    """Time :func:`backbone_forward` (the prefill limit on ``chunk_size``-token chunks) like a prefill."""
    device = ctx.device
    release_memory()
    with torch.inference_mode(), PeakMemory(device) as mem:
        _sync(device)
        t0 = time.perf_counter()
        backbone_forward(lm, ctx, chunk_size)
        _sync(device)
        t1 = time.perf_counter()
    return _prefill_only(t1 - t0, 0, 0, mem.peak)


def _prefill_only(prefill_s: float, kv_entries: int, kv_bytes: int, peak: int) -> dict:
    return {
        "prefill_s": prefill_s,
        "decode_s": None,
        "decode_tok_s": None,
        "kv_entries_prefill": kv_entries,
        "kv_entries": kv_entries,
        "kv_full_entries": kv_entries,
        "kv_bytes": kv_bytes,
        "peak_mem_bytes": peak,
    }


def backbone_row(chunk_size: int | None, n_ctx: int) -> str:
    """The prefill-limit row for ``chunk_size``-token chunks of an ``n_ctx`` context: ``backbone@256``, or
    ``backbone@one-pass`` when the chunk holds the whole context (``chunk_size`` None or >= ``n_ctx``)."""
    return f"{BACKBONE}{chunk_size}" if chunk_size and chunk_size < n_ctx else f"{BACKBONE}one-pass"


def _summarise(runs: list[dict], n_ctx: int, stat: str = "median") -> ModeResult:
    pick_low, pick_high = (median, median) if stat == "median" else (min, max)
    prefill_s = pick_low([r["prefill_s"] for r in runs])
    decode = [r["decode_tok_s"] for r in runs if r["decode_tok_s"] is not None]
    return ModeResult(
        prefill_s=prefill_s,
        decode_tok_s=pick_high(decode) if decode else None,
        kv_entries=runs[0]["kv_entries"],
        kv_bytes=runs[0]["kv_bytes"],
        peak_mem_bytes=int(median([r["peak_mem_bytes"] for r in runs])),
        kv_entries_prefill=runs[0]["kv_entries_prefill"],
        kv_full_entries=runs[0]["kv_full_entries"],
        prefill_tok_s=n_ctx / max(prefill_s, 1e-9),
        runs=runs,
    )


def relate_prefill(row: dict[str, ModeResult], n_ctx: int) -> None:
    """Fill each row's ``prefill_limit_s``, ``prefill_of_limit`` and ``prefill_vs_onepass`` from the same run.

    Rows that prefill the whole context are set against ``backbone@C`` for their own chunk size and against
    ``onepass``; the ``limit`` row (which prefills only part of it) is left out.
    """
    onepass = row.get(ONEPASS)
    for mode, r in row.items():
        if mode == "limit":
            continue
        limit = row.get(backbone_row(r.chunk_size, n_ctx))
        if limit is not None:
            r.prefill_limit_s = limit.prefill_s
            r.prefill_of_limit = limit.prefill_s / max(r.prefill_s, 1e-12)
        if onepass is not None:
            r.prefill_vs_onepass = onepass.prefill_s / max(r.prefill_s, 1e-12)


# -- the benchmark -----------------------------------------------------------------------------------------------
def run_bench(
    lm: LoadedModel, cfg: BenchConfig, text: str | None = None, *, progress: bool = False
) -> dict[str, dict[str, ModeResult]]:
    """Measure every mode at every context length; returns ``{str(context): {mode: ModeResult}}``.

    ``progress`` shows a bar on stderr, one step per timed run (context x repeat x mode).
    """
    text = builtin_passage() if text is None else text
    device = next(lm.model.parameters()).device
    policies = {m: lm.policy(m) for m in cfg.modes if m not in EXTRA_ROWS}  # validate specs before timing
    full = FullCachePolicy()

    def chunk_of(policy) -> int | None:  # each mode's prefill chunk: what the library uses, unless forced
        return cfg.chunk_size or prefill_chunk_size(lm, policy)

    chunks = {m: chunk_of(policies.get(m, full)) for m in cfg.modes}

    def limit_rows(n_ctx: int) -> dict[str, int | None]:  # backbone row -> chunk: the modes' chunks, then one pass
        if not cfg.prefill_limit:
            return {}
        rows: dict[str, int | None] = {}
        for c in [*sorted({c for c in chunks.values() if c}), None]:
            rows.setdefault(backbone_row(c, n_ctx), c if c and c < n_ctx else None)
        return rows

    if cfg.warmup:
        ids = torch.tensor([bench_tokens(lm, text, 40)], device=device)
        for policy in list(policies.values())[:2] or [full]:
            run_once(lm, ids[:, :32], ids[0, 32:], policy, chunk_of(policy))
        if cfg.prefill_limit:
            run_backbone(lm, ids[:, :32], 16)
    results: dict[str, dict[str, ModeResult]] = {}
    per_repeat = len(cfg.modes) + int(cfg.compare_hf) + int(cfg.prefill_limit)
    total = sum(cfg.repeats * (per_repeat + len(limit_rows(n))) for n in cfg.contexts)
    bar = progress_bar(desc="bench", total=total, unit="run", enabled=progress)
    for n_ctx in cfg.contexts:
        ids = torch.tensor([bench_tokens(lm, text, n_ctx + cfg.new_tokens)], device=device)  # (1, N + G)
        ctx, cont = ids[:, :n_ctx], ids[0, n_ctx:]
        runs: dict[str, list[dict]] = {m: [] for m in cfg.modes}
        if cfg.compare_hf:
            runs["hf_generate"] = []
        limit_chunks = limit_rows(n_ctx)
        if cfg.prefill_limit:
            runs[ONEPASS] = []
        runs.update({name: [] for name in limit_chunks})
        for _ in range(cfg.repeats):  # modes interleaved, so drift on a shared machine hits every mode alike
            for mode in cfg.modes:
                if mode == "limit":
                    k = runs["anchor"][0]["kv_entries_prefill"]  # a full cache of the anchor cache's size
                    runs[mode].append(run_once(lm, ctx[:, n_ctx - k :], cont, full, chunks[mode]))
                else:
                    runs[mode].append(run_once(lm, ctx, cont, policies[mode], chunks[mode]))
                bar.update()
            if cfg.compare_hf:
                runs["hf_generate"].append(run_hf_generate(lm, ctx, cfg.new_tokens))
                bar.update()
            if cfg.prefill_limit:
                runs[ONEPASS].append(run_onepass(lm, ctx))
                bar.update()
            for name, c in limit_chunks.items():
                runs[name].append(run_backbone(lm, ctx, c))
                bar.update()
        row: dict[str, ModeResult] = {}
        for mode, rs in runs.items():
            row[mode] = _summarise(rs, rs[0]["kv_entries_prefill"] if mode == "limit" else n_ctx, cfg.stat)
            row[mode].chunk_size = chunks.get(mode, limit_chunks.get(mode))
        relate_prefill(row, n_ctx)
        for mode, r in row.items():
            logger.info("context %d %s: %s", n_ctx, mode, {k: v for k, v in r.to_dict().items() if k != "runs"})
        results[str(n_ctx)] = row
    bar.close()
    return results


def results_json(results: dict[str, dict[str, ModeResult]], *, with_runs: bool = False) -> dict:
    """The ``--json`` last line: ``{context: {mode: {prefill_s, decode_tok_s, kv_entries, kv_bytes, …}}}``."""
    out = {}
    for ctx, row in results.items():
        out[ctx] = {}
        for mode, r in row.items():
            d = r.to_dict()
            if not with_runs:
                d.pop("runs")
            out[ctx][mode] = d
    return out


# -- roofline ----------------------------------------------------------------------------------------------------
def kv_bytes_per_entry(config, dtype: torch.dtype) -> int:
    """Bytes one token's K and V take across all layers."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * n_kv * head_dim * torch.finfo(dtype).bits // 8


def decode_cost(model, kv_entries: int) -> dict[str, float]:
    """Bytes read and FLOPs for decoding one token against ``kv_entries`` cached entries (batch 1).

    Bytes: every weight once (a tied embedding is read once, by the LM head) plus every cached K/V entry once.
    FLOPs: 2 per weight multiply-add (the embedding lookup is free) plus 4 * layers * query heads * head_dim per
    cached entry (QK^T and PV).
    """
    cfg = model.config
    dtype = next(model.parameters()).dtype
    elem = torch.finfo(dtype).bits // 8
    n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    emb = model.get_input_embeddings().weight.numel()
    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    )
    matmul_params = n_params if tied else n_params - emb
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn_flops = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * kv_entries
    return {
        "bytes": float(n_params * elem + kv_entries * kv_bytes_per_entry(cfg, dtype)),
        "flops": float(2 * matmul_params + attn_flops),
    }


def measure_machine(device: torch.device, size_mb: int = 256) -> dict[str, float]:
    """Achievable memory bandwidth (bytes/s, a large copy) and matmul throughput (FLOP/s, 1024^2 fp32)."""
    n = size_mb * 2**20 // 4
    a = torch.empty(n, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(5):
        b.copy_(a)
    _sync(device)
    bw = 5 * 2 * a.numel() * 4 / (time.perf_counter() - t0)  # read + write
    x = torch.randn(1024, 1024, device=device)
    x @ x
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        x @ x
    _sync(device)
    flops = 10 * 2 * 1024**3 / (time.perf_counter() - t0)
    return {"bytes_per_s": bw, "flops_per_s": flops}


def roofline(model, kv_by_mode: dict[str, int], machine: dict[str, float] | None = None) -> dict[str, dict]:
    """Ideal decode time per token and speed-up over ``full`` for each mode's KV entries.

    ``speedup_bytes`` / ``speedup_flops`` are the ratios if decoding were purely memory- / compute-bound;
    with ``machine`` also ``ideal_s`` = max(bytes / bandwidth, FLOPs / throughput) and ``speedup_roofline``.
    """
    costs = {m: decode_cost(model, n) for m, n in kv_by_mode.items()}
    base = costs.get("full") or max(costs.values(), key=lambda c: c["bytes"])
    out = {}
    for m, c in costs.items():
        d = {
            "kv_entries": kv_by_mode[m],
            "bytes": c["bytes"],
            "flops": c["flops"],
            "speedup_bytes": base["bytes"] / c["bytes"],
            "speedup_flops": base["flops"] / c["flops"],
        }
        if machine:
            t = max(c["bytes"] / machine["bytes_per_s"], c["flops"] / machine["flops_per_s"])
            t_base = max(base["bytes"] / machine["bytes_per_s"], base["flops"] / machine["flops_per_s"])
            d.update(ideal_s=t, speedup_roofline=t_base / t)
        out[m] = d
    return out
