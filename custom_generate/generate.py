"""anllm's anchor KV cache behind transformers' ``model.generate`` (a Hub ``custom_generate`` method).

``model.generate(input_ids, custom_generate=<repo or folder>, trust_remote_code=True, tokenizer=tok)`` lands in
:func:`generate` below. It lets transformers prepare everything as usual (generation config, logits processors
for greedy or sampling, EOS / max_new_tokens stopping, the streamer's prompt) by calling ``model.generate`` again
with a decoding loop as the callable ``custom_generate``; that loop feeds the model through anllm's
:class:`anllm.cache.PolicyCache` (``prepare`` -> forward -> ``evict`` per chunk, via ``anllm.generation.prefill``
and ``decode_step``), so non-anchor entries are dropped exactly as ``anllm.generate`` drops them
(arXiv 2402.07616 §3.3; the module docstring of ``anllm/cache.py`` in the anllm repository).
"""

from __future__ import annotations

import copy

import torch
from transformers import StoppingCriteriaList, StopStringCriteria
from transformers.generation.utils import GenerateDecoderOnlyOutput

from anllm.anchors import resolve_anchor_ids
from anllm.compat import check_supported
from anllm.config import AnchorConfig, AnLLMError
from anllm.generation import decode_step, make_cache, prefill, prefill_chunk_size
from anllm.models import LoadedModel, merge_anchor
from anllm.policies import EvictionPolicy
from anllm.renames import renamed_kwargs

# the output field holding the cache: `cache` in transformers 5.24, `past_key_values` in older releases
_OUTPUT_CACHE_FIELD = "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"


@renamed_kwargs(anchor_mode="policy")
def generate(
    model,
    inputs: torch.Tensor | None = None,
    *,
    policy: str | EvictionPolicy = "anchor",
    anchor_config: AnchorConfig | dict | None = None,
    anchor_ids: tuple[int, ...] | list[int] | None = None,
    tokenizer=None,
    **kwargs,
):
    """Generate with transformers' usual arguments, decoding through anllm's anchor cache.

    Args:
        model: a causal LM anllm supports (Llama, Mistral, Qwen2, Qwen3; ``sdpa`` or ``eager`` attention).
        inputs: long ``(B, T)`` prompt ids (or pass ``input_ids=`` / ``attention_mask=`` with left padding).
        policy: the cache policy: ``"anchor"`` (AnLLM's cache), ``"full"`` (keep everything), a spec anllm accepts
            (``"streaming:sink=4,window=64"``, ``"sepllm"``) or an :class:`anllm.policies.EvictionPolicy`. The
            former name ``anchor_mode=`` is still accepted (with a ``DeprecationWarning``).
        anchor_config: an :class:`anllm.config.AnchorConfig` or a dict of its fields (the anchor rule the model was
            trained with; ``load_model(name).anchor`` for anllm's models). Default: the paper's EP rule, ``.!?``.
        anchor_ids: explicit anchor token ids (otherwise read from ``tokenizer`` by the anchor rule).
        tokenizer: the model's tokenizer; needed for the anchor ids unless given, and for ``stop_strings``.
        **kwargs: everything ``model.generate`` takes: ``max_new_tokens``, ``do_sample``, ``temperature``,
            ``top_k``, ``top_p``, ``repetition_penalty``, ``eos_token_id``, ``stop_strings``, ``streamer``,
            ``generation_config``, ``return_dict_in_generate``, ``output_scores``, ``output_logits``...
    Returns:
        long ``(B, T + n)``: prompt and generated ids, as ``model.generate``; with ``return_dict_in_generate=True`` a
        ``GenerateDecoderOnlyOutput`` whose ``cache`` (``past_key_values`` before transformers 5.24) is the
        :class:`anllm.cache.PolicyCache` after decoding (``n_kept()``, ``n_evicted``, ``kv_bytes()``).
    """
    for key in ("past_key_values", "cache"):
        if kwargs.get(key) is not None:
            raise AnLLMError(
                "custom_generate builds anllm's own anchor cache: drop past_key_values= / cache= (policy= picks "
                "the cache policy, and return_dict_in_generate=True returns the cache)"
            )
    check_supported(model)
    lm = _loaded_model(model, tokenizer, anchor_config, anchor_ids)
    cache = make_cache(lm, policy)
    chunk_size = prefill_chunk_size(lm, cache.policy)
    kwargs = _stop_strings_as_criteria(kwargs, tokenizer)
    # `type(model).generate`: a model loaded with this method swapped in as `model.generate` must not recurse.
    loop = _decoding_loop(cache, chunk_size, kwargs.get("streamer"))
    return type(model).generate(model, inputs, custom_generate=loop, **kwargs)


def _loaded_model(model, tokenizer, anchor_config, anchor_ids) -> LoadedModel:
    """The model, tokenizer and anchor rule bundled as anllm's decode functions expect them."""
    if isinstance(anchor_config, AnchorConfig):
        cfg = anchor_config
    elif anchor_config is None or isinstance(anchor_config, dict):
        cfg = merge_anchor(AnchorConfig(), anchor_config)
    else:
        raise AnLLMError(f"anchor_config must be an anllm AnchorConfig or a dict, got {type(anchor_config).__name__}")
    if anchor_ids is not None:
        cfg = cfg.replace(anchor_ids=tuple(anchor_ids))
    if cfg.anchor_ids is None and tokenizer is None:
        raise AnLLMError(
            "custom_generate needs the anchor token ids: pass tokenizer=<the model's tokenizer> (they are read "
            "from its vocabulary) or anchor_ids=[...]"
        )
    ids = resolve_anchor_ids(cfg, tokenizer)  # no model: never adds <AC> to the caller's vocabulary
    return LoadedModel(model, tokenizer, cfg, ids, name=str(getattr(model, "name_or_path", "")))


def _stop_strings_as_criteria(kwargs: dict, tokenizer) -> dict:
    """Move ``stop_strings`` into a ``StopStringCriteria``.

    transformers 5.24 does not hand ``tokenizer`` on when ``custom_generate`` is a callable, so its own stop-string
    check would fail for want of one; the criterion built here carries the tokenizer itself.
    """
    kwargs = dict(kwargs)
    config = kwargs.get("generation_config")
    stops = kwargs.pop("stop_strings", None) or getattr(config, "stop_strings", None)
    if not stops:
        return kwargs
    if tokenizer is None:
        raise AnLLMError("stop_strings need the model's tokenizer: pass tokenizer=... to generate")
    if getattr(config, "stop_strings", None):
        kwargs["generation_config"] = config = copy.deepcopy(config)
        config.stop_strings = None
    criteria = StoppingCriteriaList(kwargs.get("stopping_criteria") or [])
    criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=[stops] if isinstance(stops, str) else stops))
    kwargs["stopping_criteria"] = criteria
    return kwargs


def _decoding_loop(cache, chunk_size: int | None, streamer_given=None):
    """A decoding callable with ``GenerationMixin._sample``'s signature that runs through ``cache``.

    transformers 5.24 puts the prompt into the streamer but does not pass ``streamer`` on to a callable
    ``custom_generate``, so the streamer given to :func:`generate` is kept here as well.
    """

    def decode(
        model,
        input_ids: torch.Tensor,
        logits_processor,
        stopping_criteria,
        generation_config,
        synced_gpus: bool = False,
        streamer=None,
        **model_kwargs,
    ):
        if generation_config.num_beams > 1:
            raise AnLLMError("custom_generate with anllm's cache decodes greedily or by sampling: set num_beams=1")
        if generation_config.output_attentions or generation_config.output_hidden_states:
            raise AnLLMError("custom_generate does not return attentions or hidden states; use anllm.verify for them")
        streamer = streamer if streamer is not None else streamer_given
        pad = generation_config._pad_token_tensor
        unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # (B,)
        scores, raw_logits = [], []
        # the model_kwargs' cache (a DynamicCache transformers prepared), mask and positions are replaced by the
        # PolicyCache's own per chunk; a 2D padding mask (None when there is no padding) is all that is used
        logits = prefill(model, cache, input_ids, model_kwargs.get("attention_mask"), chunk_size=chunk_size)  # (B, V)
        while True:
            logits = logits.to(torch.float32)
            next_scores = logits_processor(input_ids, logits)  # (B, V)
            if generation_config.do_sample:
                token = torch.multinomial(next_scores.softmax(-1), num_samples=1)[:, 0]  # (B,)
            else:
                token = next_scores.argmax(-1)
            if pad is not None:
                token = torch.where(unfinished, token, pad)
            input_ids = torch.cat([input_ids, token[:, None]], dim=-1)
            scores.append(next_scores)
            raw_logits.append(logits)
            if streamer is not None:
                streamer.put(token.cpu())
            unfinished &= ~stopping_criteria(input_ids, next_scores)
            if not bool(unfinished.any()):
                break
            logits = decode_step(model, cache, token, valid=unfinished)  # finished rows feed masked padding
        if streamer is not None:
            streamer.end()
        if not generation_config.return_dict_in_generate:
            return input_ids
        return GenerateDecoderOnlyOutput(
            sequences=input_ids,
            scores=tuple(scores) if generation_config.output_scores else None,
            logits=tuple(raw_logits) if generation_config.output_logits else None,
            **{_OUTPUT_CACHE_FIELD: cache},
        )

    return decode
