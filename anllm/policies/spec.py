"""Build a policy from a short spec string: ``"streaming:sink=4,window=64"``, ``"sepllm:budget=256"``, ``"full"``.

Keys: ``sink`` (initial tokens kept), ``window`` (a token sees the ``window`` most recent tokens, itself included:
the same meaning for every policy) and ``budget`` (entries held between forward passes, sinks + the ``window - 1``
recent ones, i.e. ``window = budget - sink + 1``; SepLLM keeps its separators on top). ``anchor`` takes ``sink`` and
``window`` as its ablations; other registered policies take their own dataclass fields as keys.
"""

from __future__ import annotations

import dataclasses

from anllm.config import AnLLMError
from anllm.policies.anchor import AnchorPolicy
from anllm.policies.base import EvictionPolicy
from anllm.policies.registry import POLICIES

_ALIASES = {"sink": "n_sink"}


def split_modes(s: str) -> tuple[str, ...]:
    """A command line's comma-separated list of cache policies; ``;`` separates a spec's own parameters.

    ``"full,streaming:sink=4;window=64"`` -> ``("full", "streaming:sink=4,window=64")``.
    """
    return tuple(m.strip().replace(";", ",") for m in s.split(",") if m.strip())


def parse_spec(spec: str) -> tuple[str, dict[str, int]]:
    """``"name:k=v,k=v"`` -> ``(name, {k: v})`` with integer values; raises :class:`AnLLMError` on bad syntax."""
    if not isinstance(spec, str) or not spec.strip():
        raise AnLLMError("empty policy spec: use e.g. full, anchor, streaming, sepllm or streaming:sink=4,window=64")
    name, _, rest = spec.strip().partition(":")
    params: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise AnLLMError(f"policy spec {spec!r}: {item!r} is not key=value")
        try:
            params[key.strip()] = int(value)
        except ValueError:
            raise AnLLMError(f"policy spec {spec!r}: {key.strip()} must be an integer, got {value.strip()!r}") from None
    return name.strip().lower(), params


def policy_from_spec(spec: str, lm=None) -> EvictionPolicy:
    """The policy named by ``spec``; ``lm`` (a :class:`~anllm.models.LoadedModel`) supplies anchors/separators.

    Raises:
        AnLLMError: unknown policy or key, or a budget/window of zero.
    """
    name, params = parse_spec(spec)
    if name not in POLICIES:
        raise AnLLMError(
            f"unknown cache policy {name!r}; choose one of {', '.join(POLICIES)} (optionally name:key=value,...)"
        )
    cls = POLICIES[name]
    kwargs = {_ALIASES.get(k, k): v for k, v in params.items()}
    if "budget" in kwargs:
        budget = kwargs.pop("budget")
        if budget < 1:
            raise AnLLMError(f"policy spec {spec!r}: budget must be >= 1 KV entry, got {budget}")
        sink = kwargs.get("n_sink", _default(cls, "n_sink", 0))
        if budget <= sink:
            raise AnLLMError(f"policy spec {spec!r}: budget {budget} leaves no room for a window after {sink} sinks")
        kwargs["window"] = budget - sink + 1  # the query itself is the window's last token
    if "window" in kwargs and kwargs["window"] < 1 and name != "anchor":
        raise AnLLMError(f"policy spec {spec!r}: window must be >= 1 (a KV budget of zero keeps nothing)")
    allowed = {f.name for f in dataclasses.fields(cls)} - {"separator_ids"}
    unknown = set(kwargs) - allowed
    if unknown:
        keys = sorted(({k for k, v in _ALIASES.items() if v in allowed} | allowed | {"budget"}) - {"n_sink"})
        raise AnLLMError(f"policy spec {spec!r}: unknown key(s) {', '.join(sorted(unknown))}; {name} takes {keys}")
    if cls is AnchorPolicy and lm is not None:
        base = AnchorPolicy.from_config(lm.anchor)
        return dataclasses.replace(base, **kwargs)
    if hasattr(cls, "from_model"):
        if lm is None:
            raise AnLLMError(f"mode {name!r} needs the model's tokenizer: pass lm")
        return cls.from_model(lm, **kwargs)
    return cls(**kwargs)


BUDGETED = ("streaming", "sepllm")  # bare mode names that a budget resizes


def budget_spec(name: str, entries: int) -> str:
    """The spec of a bare budgeted mode sized to ``entries`` KV entries (at most 4 of them sinks), e.g. to match
    another cache's size: ``budget_spec("streaming", 30)`` -> ``"streaming:budget=30,sink=4"``."""
    return f"{name}:budget={entries},sink={min(4, entries - 1)}"


def _default(cls, field: str, fallback: int) -> int:
    for f in dataclasses.fields(cls):
        if f.name == field and f.default is not dataclasses.MISSING:
            return int(f.default)
    return fallback
