"""Configuration dataclasses and presets for the released AnLLM checkpoints.

Every knob lives here, validated in ``__post_init__`` so a bad value fails at construction with a message that
names the field. Library functions take these objects; only the CLI, the app and notebooks build them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

AnchorKind = Literal["ep", "ac"]
PositionPolicy = Literal["true", "compact"]

AC_TOKEN = "<AC>"
DEFAULT_ANCHOR_CHARS = ".!?"
DEFAULT_CHUNK_SIZE = 256  # measured in bench/chunk_size.py: 256-512-token chunks run at the backbone's best speed


class AnLLMError(ValueError):
    """A user-facing error: the message names the problem and what to do about it."""


@dataclass(frozen=True)
class AnchorConfig:
    """Which tokens are anchors and how the AnSAN mask is shaped.

    The defaults are the official code's rule (arXiv 2402.07616 §3.2, Eq. 4; README "Exactness"): anchors see only
    their own sentence, no sinks, no local window.
    """

    kind: AnchorKind = "ep"  # "ep": sentence-end punctuation is the anchor; "ac": an added <AC> token is
    anchor_chars: str = DEFAULT_ANCHOR_CHARS  # EP: a token is an anchor if its text ends a sentence with one of these
    anchor_ids: tuple[int, ...] | None = None  # explicit anchor ids; overrides anchor_chars (presets use this)
    anchors_see_anchors: bool = False  # ablation: anchor queries may also see earlier anchors
    n_sink: int = 0  # ablation: the first n_sink tokens stay visible to every later token (and are never evicted)
    window: int = 0  # ablation: each token also sees the previous `window - 1` tokens (0 = off)
    position_policy: PositionPolicy = "true"  # "true": positions count every token seen; "compact": official code
    chunk_size: int = DEFAULT_CHUNK_SIZE  # prefill chunk length in anchor mode
    max_segment: int = 0  # a forced anchor after this many tokens without one (bounds the cache; 0 = off)

    def __post_init__(self) -> None:
        if self.kind not in ("ep", "ac"):
            raise AnLLMError(f"AnchorConfig.kind must be 'ep' or 'ac', got {self.kind!r}")
        if self.position_policy not in ("true", "compact"):
            raise AnLLMError(f"AnchorConfig.position_policy must be 'true' or 'compact', got {self.position_policy!r}")
        if self.kind == "ep" and self.anchor_ids is None and not self.anchor_chars:
            raise AnLLMError("AnchorConfig.anchor_chars is empty: give at least one sentence-end character, e.g. '.'")
        if self.anchor_ids is not None:
            if len(self.anchor_ids) == 0 or any(int(i) < 0 for i in self.anchor_ids):
                raise AnLLMError(f"AnchorConfig.anchor_ids must be non-negative token ids, got {self.anchor_ids!r}")
            object.__setattr__(self, "anchor_ids", tuple(int(i) for i in self.anchor_ids))
        for name in ("n_sink", "window", "max_segment"):
            if getattr(self, name) < 0:
                raise AnLLMError(f"AnchorConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.chunk_size < 1:
            raise AnLLMError(f"AnchorConfig.chunk_size must be >= 1, got {self.chunk_size}")

    @property
    def mode(self) -> AnchorKind:
        """The former name of :attr:`kind` (read-only; ``mode`` now means a cache policy only)."""
        return self.kind

    def replace(self, **changes) -> AnchorConfig:
        """A copy with ``changes`` applied (the former field name ``mode`` is read as ``kind``)."""
        return replace(self, **canonical_anchor_fields(changes))

    @classmethod
    def from_dict(cls, fields: dict) -> AnchorConfig:
        """Build from a mapping, e.g. an adapter's ``anchor.json`` (whose older files say ``mode`` for ``kind``)."""
        return cls(**canonical_anchor_fields(fields))


def canonical_anchor_fields(fields: dict) -> dict:
    """``fields`` with the former key ``mode`` renamed ``kind`` (both given: an error unless they agree)."""
    if "mode" not in fields:
        return dict(fields)
    out = {k: v for k, v in fields.items() if k != "mode"}
    if out.setdefault("kind", fields["mode"]) != fields["mode"]:
        raise AnLLMError(f"anchor settings give kind={out['kind']!r} and mode={fields['mode']!r}; give kind only")
    return out


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings shared by the CLI, the app and the library's generate functions."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off; HF semantics (divide positive logits, multiply negative ones)
    seed: int | None = None
    stop_strings: tuple[str, ...] = ()
    stop_on_eos: bool = True
    chat: bool = True  # apply the tokenizer's chat template when it has one

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise AnLLMError(f"GenerationConfig.max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not self.temperature >= 0:  # also rejects NaN
            raise AnLLMError(f"GenerationConfig.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise AnLLMError(f"GenerationConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise AnLLMError(f"GenerationConfig.top_k must be >= 0, got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise AnLLMError(f"GenerationConfig.repetition_penalty must be > 0, got {self.repetition_penalty}")
        object.__setattr__(self, "stop_strings", tuple(s for s in self.stop_strings if s))

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class CheckpointPreset:
    """A released AnLLM checkpoint: where it lives and which ids are its anchors (from its tokenizer files)."""

    hub_id: str
    anchor: AnchorConfig
    pad_id: int | None = None
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


# Llama-2 vocab ids: "." = 29889 (the piece without a leading "▁"), [PAD] = 32000, <AC> = 32001.
_EP = AnchorConfig(kind="ep", anchor_ids=(29889,))  # "compact" positions reproduce the official code
_AC = AnchorConfig(kind="ac", anchor_ids=(32001,))

PRESETS: dict[str, CheckpointPreset] = {
    "anllm-ac-7b": CheckpointPreset(
        "pangjh3/AnLLM-AC-7B-PT", _AC, 32000, "AnLLM-AC, Llama-2-7B continued pre-training"
    ),
    "anllm-ac-13b": CheckpointPreset(
        "pangjh3/AnLLM-AC-13B-PT", _AC, 32000, "AnLLM-AC, Llama-2-13B continued pre-training"
    ),
    "anllm-ac-7b-translation": CheckpointPreset(
        "pangjh3/AnLLM-AC-7B-translation", _AC, 32000, "AnLLM-AC-7B fine-tuned for De→En translation"
    ),
    "anllm-ep-7b": CheckpointPreset(
        "pangjh3/AnLLM-EP-7B-PT", _EP, 32000, "AnLLM-EP, Llama-2-7B continued pre-training"
    ),
    "anllm-ep-7b-translation": CheckpointPreset(
        "pangjh3/AnLLM-EP-7B-translation", _EP, 32000, "AnLLM-EP-7B fine-tuned for De→En translation"
    ),
}


def preset_for(name_or_hub_id: str) -> CheckpointPreset | None:
    """Return the preset for a preset name or its hub id (case-insensitive), else None."""
    key = name_or_hub_id.lower()
    if key in PRESETS:
        return PRESETS[key]
    for preset in PRESETS.values():
        if preset.hub_id.lower() == key:
            return preset
    return None
