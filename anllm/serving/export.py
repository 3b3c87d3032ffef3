"""Export a model to a plain Hugging Face folder that a serving engine loads, with its anchor setting beside it.

The folder holds the weights (an anchor adapter merged in: no peft needed to serve), the tokenizer, the config and
``anllm_anchor.json``: everything a server needs to apply the anchor cache's attention rule (arXiv 2402.07616
§3.2-3.3; docs/exactness.md) - anchor token ids resolved with this tokenizer, sinks, window, the forced-anchor
length and the position policy. The vLLM plugin (:mod:`anllm.serving.vllm`) reads it back and never guesses.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from anllm.config import AnLLMError

ANCHOR_FILE = "anllm_anchor.json"
FORMAT = 1  # bump when a field changes meaning; readers refuse formats they do not know


@dataclass(frozen=True)
class ServedAnchor:
    """The anchor setting a server applies, exactly as the anllm ``PolicyCache`` anchor mode does."""

    kind: str  # "ep" | "ac" (informational: the ids below are what counts)
    anchor_ids: tuple[int, ...]
    n_sink: int = 0
    window: int = 0
    max_segment: int = 0
    anchors_see_anchors: bool = False
    position_policy: str = "true"
    policy: str = "anchor"

    def __post_init__(self) -> None:
        if self.policy != "anchor":
            raise AnLLMError(f"{ANCHOR_FILE}: policy must be 'anchor', got {self.policy!r}")
        if self.kind not in ("ep", "ac"):
            raise AnLLMError(f"{ANCHOR_FILE}: kind must be 'ep' or 'ac', got {self.kind!r}")
        if not self.anchor_ids or any(not isinstance(i, int) or i < 0 for i in self.anchor_ids):
            raise AnLLMError(f"{ANCHOR_FILE}: anchor_ids must be a non-empty list of token ids, got {self.anchor_ids}")
        for name in ("n_sink", "window", "max_segment"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise AnLLMError(f"{ANCHOR_FILE}: {name} must be an integer >= 0, got {v!r}")
        if not isinstance(self.anchors_see_anchors, bool):
            raise AnLLMError(f"{ANCHOR_FILE}: anchors_see_anchors must be true or false: {self.anchors_see_anchors}")
        if self.position_policy not in ("true", "compact"):
            raise AnLLMError(f"{ANCHOR_FILE}: position_policy must be 'true' or 'compact', not {self.position_policy}")

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "policy": self.policy,
            "kind": self.kind,
            "anchor_ids": list(self.anchor_ids),
            "n_sink": self.n_sink,
            "window": self.window,
            "max_segment": self.max_segment,
            "anchors_see_anchors": self.anchors_see_anchors,
            "position_policy": self.position_policy,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ServedAnchor:
        if not isinstance(d, dict):
            raise AnLLMError(f"{ANCHOR_FILE}: expected a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise AnLLMError(f"{ANCHOR_FILE}: format {d.get('format')!r} is not {FORMAT}; re-export with this anllm")
        known = {"format", "policy", "kind", "anchor_ids", "n_sink", "window", "max_segment", "anchors_see_anchors",
                 "position_policy", "source"}  # fmt: skip
        unknown = sorted(set(d) - known)
        if unknown:
            raise AnLLMError(f"{ANCHOR_FILE}: unknown field(s) {', '.join(unknown)}; re-export with this anllm")
        missing = sorted({"kind", "anchor_ids"} - set(d))
        if missing:
            raise AnLLMError(f"{ANCHOR_FILE}: missing field(s) {', '.join(missing)}")
        fields = {k: v for k, v in d.items() if k not in ("format", "source")}
        fields["anchor_ids"] = tuple(fields["anchor_ids"]) if isinstance(fields["anchor_ids"], list) else None
        return cls(**fields)

    @classmethod
    def from_loaded(cls, lm) -> ServedAnchor:
        """The setting a :class:`anllm.models.LoadedModel` is served with in anchor mode."""
        a = lm.anchor
        return cls(
            kind=a.kind,
            anchor_ids=tuple(int(i) for i in lm.anchor_ids),
            n_sink=a.n_sink,
            window=a.window,
            max_segment=a.max_segment,
            anchors_see_anchors=a.anchors_see_anchors,
            position_policy=a.position_policy,
        )


def read_served_anchor(model_dir: str | Path) -> ServedAnchor:
    """The anchor setting written beside a model's weights by :func:`export_model`.

    Raises:
        AnLLMError: one line naming the folder and the fix, when the file is missing or invalid.
    """
    path = Path(model_dir) / ANCHOR_FILE
    if not path.is_file():
        raise AnLLMError(
            f"{model_dir} has no {ANCHOR_FILE}: export the model with `anllm export --model default --out DIR` "
            "(the anchor setting is read from the folder, never guessed)"
        )
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AnLLMError(f"{path} is not valid JSON ({e}); re-export the model with `anllm export`") from e
    return ServedAnchor.from_dict(d)


def export_model(lm, out: str | Path, *, source: str = "") -> Path:
    """Write ``lm`` (adapter already merged by :func:`anllm.models.load_model`) as a plain HF folder at ``out``.

    Only anchor-trained models are exported (their anchor mode is what a server applies). The folder is written to
    a temporary sibling and renamed, so a killed export never leaves a half-written model behind.
    """
    if not lm.anchor_trained:
        raise AnLLMError(
            f"model {lm.name!r} was not trained for anchors (no anchor adapter or preset): export the default model "
            "or an anchor preset"
        )
    served = ServedAnchor.from_loaded(lm)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AnLLMError(f"{out} exists and is not an empty folder: give a new folder to --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model folder is read by the serving user
    try:
        lm.model.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        d = served.to_dict()
        if source:
            d["source"] = source
        (tmp / ANCHOR_FILE).write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return out
