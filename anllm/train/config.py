"""``TrainConfig``: every training knob in validated sections (model / anchor / data / loss / optim / run), read from
YAML/JSON (flat keys or sections) plus ``key=value`` overrides.

The defaults follow the paper's continued pre-training recipe where it applies to any model size (arXiv 2402.07616 §4.2;
docs/training.md): AnSAN mask on every example, EP anchors, no packing, constant LR with warm-up, weight decay 0, seed
34.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from anllm.config import AnchorConfig, AnLLMError
from anllm.textio import read_text_file

TrainObjective = Literal["pretrain", "sft"]
LossKind = Literal["lm", "kl", "lm+kl"]
Finetune = Literal["full", "lora"]
Precision = Literal["auto", "fp32", "bf16"]
AttentionPath = Literal["auto", "dense", "flex"]
Scheduler = Literal["constant", "constant_with_warmup", "cosine", "linear"]
DataFormat = Literal["auto", "text", "jsonl", "alpaca", "translation"]


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise AnLLMError(f"TrainConfig.{name} must be one of {', '.join(choices)}; got {value!r}")


def _at_least(obj: Any, names: tuple[str, ...], low: int) -> None:
    for name in names:
        if int(getattr(obj, name)) < low:
            raise AnLLMError(f"TrainConfig.{name} must be >= {low}, got {getattr(obj, name)}")


@dataclass
class ModelSection:
    """What is trained: the model and how its weights change."""

    name: str = "tiny-random"  # anllm.models.load_model name: smollm2-135m, tiny-random, a hub id or a local dir
    finetune: Finetune = "full"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    init_adapter: str | None = None  # LoRA: start from this peft adapter directory (its r/alpha/targets win)
    grow_lora_r: int = 0  # with init_adapter: raise its rank to this; new directions start at zero (0 = keep its r)
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        _choice("finetune", self.finetune, ("full", "lora"))
        _at_least(self, ("lora_r", "lora_alpha"), 1)
        _at_least(self, ("grow_lora_r",), 0)
        if not 0 <= self.lora_dropout < 1:
            raise AnLLMError(f"TrainConfig.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if isinstance(self.lora_targets, str):
            self.lora_targets = [t.strip() for t in self.lora_targets.split(",") if t.strip()]
        if self.finetune == "lora" and not self.lora_targets:
            raise AnLLMError("TrainConfig.lora_targets is empty: name the modules LoRA adapts, e.g. q_proj,v_proj")
        if self.init_adapter is not None:
            self.init_adapter = str(self.init_adapter)
            if self.finetune != "lora":
                raise AnLLMError("TrainConfig.init_adapter starts LoRA from a saved adapter: set finetune: lora")
            if not (Path(self.init_adapter) / "adapter_config.json").is_file():
                raise AnLLMError(
                    f"TrainConfig.init_adapter: {Path(self.init_adapter) / 'adapter_config.json'} not found "
                    "(give a peft adapter directory, e.g. a run's final/ or anllm/adapters/smollm2-135m-anchor)"
                )
        elif self.grow_lora_r:
            raise AnLLMError("TrainConfig.grow_lora_r raises the rank of a saved adapter: set init_adapter too")


@dataclass
class DataSection:
    """What the model reads: the objective, the files and how they become examples."""

    objective: TrainObjective = "pretrain"  # pretrain: loss on every token; sft: Alpaca prompt/response, loss on it
    train_files: list[str] = field(default_factory=list)  # local files, or "hub:org/name[:split]" (needs datasets)
    eval_file: str | None = None  # held-out text/JSONL: perplexity under full and anchor attention
    data_format: DataFormat = "auto"  # auto: by objective and extension (.txt text, .jsonl/.json records)
    text_field: str = "text"  # pretraining JSONL field
    doc_separator: str | None = None  # plain text: split a file into documents on this string (None: one per file)
    source_lang: str = "de"  # translation pairs: field/language of the source ...
    target_lang: str = "en"  # ... and of the target; turned into Alpaca records
    block_size: int = 1024  # tokens per example; longer examples are truncated (warned and counted)
    packing: bool = False  # pretrain only: concatenate documents (EOS between) and cut into full blocks
    max_examples: int = 0  # use only the first N examples (0 = all)
    eval_block_size: int = 1024
    eval_max_tokens: int = 4096

    def __post_init__(self) -> None:
        _choice("objective", self.objective, ("pretrain", "sft"))
        _choice("data_format", self.data_format, ("auto", "text", "jsonl", "alpaca", "translation"))
        if isinstance(self.train_files, str):
            self.train_files = [self.train_files]
        self.train_files = [str(f) for f in self.train_files]
        _at_least(self, ("block_size", "eval_block_size"), 1)
        _at_least(self, ("max_examples", "eval_max_tokens"), 0)
        if self.packing and self.objective == "sft":
            raise AnLLMError("TrainConfig.packing is for pretraining only: SFT examples stay one per row (no packing)")


@dataclass
class LossSection:
    """What is minimised, under the AnSAN mask."""

    kind: LossKind = "lm"  # kl: distil the model's own full-attention predictions (teacher = adapters off / frozen)
    kl_weight: float = 1.0  # weight of the KL term in "lm+kl"
    kl_temperature: float = 1.0
    full_kl_weight: float = 0.0  # + KL(teacher || student under full attention): guards normal (full-cache) use
    target_lm_weight: float = 0.0  # + LM loss on tokens marked "target" in segment records (memory-item answers)

    def __post_init__(self) -> None:
        _choice("loss", self.kind, ("lm", "kl", "lm+kl"))
        if not self.kl_temperature > 0:
            raise AnLLMError(f"TrainConfig.kl_temperature must be > 0, got {self.kl_temperature}")
        for name in ("kl_weight", "full_kl_weight", "target_lm_weight"):
            if not getattr(self, name) >= 0:
                raise AnLLMError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def needs_teacher(self) -> bool:
        """Whether a KL term needs the model's own full-attention predictions."""
        return self.kind != "lm" or self.full_kl_weight > 0


@dataclass
class OptimSection:
    """How the weights are updated: batches, steps, learning rate."""

    batch_size: int = 1  # examples per process per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step; global batch = batch_size * grad_accum * processes
    max_steps: int = 0  # optimiser steps; 0 = derive from epochs
    epochs: float = 1.0
    lr: float = 2e-5
    lr_scheduler: Scheduler = "constant_with_warmup"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps == 0
    min_lr_ratio: float = 0.0  # cosine/linear floor as a fraction of lr
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: float = 1.0  # 0 = no clipping

    def __post_init__(self) -> None:
        _choice("lr_scheduler", self.lr_scheduler, ("constant", "constant_with_warmup", "cosine", "linear"))
        _at_least(self, ("batch_size", "grad_accum"), 1)
        _at_least(self, ("max_steps", "warmup_steps"), 0)
        if not self.lr > 0:
            raise AnLLMError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not self.epochs > 0 and self.max_steps == 0:
            raise AnLLMError("TrainConfig.epochs must be > 0 when max_steps is 0")
        for name in ("warmup_ratio", "min_lr_ratio"):
            if not 0 <= getattr(self, name) < 1:
                raise AnLLMError(f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("weight_decay", "max_grad_norm"):
            if not getattr(self, name) >= 0:
                raise AnLLMError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise AnLLMError(f"TrainConfig.adam_betas must be two numbers in [0, 1), got {self.adam_betas}")


@dataclass
class RunSection:
    """Where and how the run happens: output, seed, precision, checkpoints, logging, evaluation."""

    output_dir: str = "runs/train"
    seed: int = 34
    precision: Precision = "auto"  # auto: bf16 autocast on CUDA with bf16 support, float32 otherwise
    attention: AttentionPath = "auto"  # auto: FlexAttention on CUDA, dense 4D mask (SDPA) on CPU
    num_threads: int = 0  # torch intra-op threads per process (0 = torch's default)
    save_every: int = 100  # checkpoint every N optimiser steps (0 = only at the end)
    keep_checkpoints: int = 2  # newest N complete checkpoints are kept
    log_every: int = 1
    tensorboard: bool = False  # also write TensorBoard scalars (needs the tensorboard package)
    eval_every: int = 0  # evaluate every N steps (0 = only at the start and the end when eval_file is set)
    progress: bool = True  # tqdm bar on the main process

    def __post_init__(self) -> None:
        _choice("precision", self.precision, ("auto", "fp32", "bf16"))
        _choice("attention", self.attention, ("auto", "dense", "flex"))
        _at_least(self, ("log_every",), 1)
        _at_least(self, ("save_every", "eval_every", "num_threads", "keep_checkpoints"), 0)


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "anchor": AnchorConfig,
    "data": DataSection,
    "loss": LossSection,
    "optim": OptimSection,
    "run": RunSection,
}
# flat keys (the config files' and --set's names) whose field has another name in its section
_RENAMED = {"model": ("model", "name"), "anchors": ("anchor", "kind"), "loss": ("loss", "kind")}
_FORMER_KEYS = {"mode": "objective"}  # flat keys older config files use, still read (not written)
_TRAINED_ANCHOR = ("kind", "anchor_chars", "n_sink", "window", "anchors_see_anchors", "max_segment")


def _flat_keys() -> dict[str, tuple[str, str]]:
    """Every flat key -> (section, field)."""
    out = dict(_RENAMED)
    for section, cls in SECTIONS.items():
        names = _TRAINED_ANCHOR if cls is AnchorConfig else tuple(f.name for f in fields(cls))
        for name in names:
            if (section, name) not in out.values():
                out[name] = (section, name)
    return out


FLAT_KEYS = _flat_keys()


@dataclass
class TrainConfig:
    """One training run, in sections: ``model``, ``anchor`` (an :class:`~anllm.config.AnchorConfig`), ``data``,
    ``loss``, ``optim`` and ``run``.

    Config files and ``--set`` give flat keys (``lr: 2e-5``, ``objective: sft``, ``anchors: ac``; see
    :data:`FLAT_KEYS`; the former key ``mode`` is read as ``objective``) or sections (``optim: {lr: 2e-5}``), or a
    dotted key (``--set optim.lr=2e-5``); :meth:`from_dict` reads all three. In code:
    ``TrainConfig.from_dict({"lr": 1e-4, "max_steps": 10})`` or the sections themselves.
    """

    model: ModelSection = field(default_factory=ModelSection)
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                got = type(getattr(self, name)).__name__
                raise AnLLMError(f"TrainConfig.{name} must be a {cls.__name__}, got {got}")

    def mask_rule(self) -> dict:
        """The AnSAN mask's keyword arguments (:func:`anllm.masks.ansan_mask`) of this run's anchor setting."""
        a = self.anchor
        return dict(anchors_see_anchors=a.anchors_see_anchors, n_sink=a.n_sink, window=a.window)

    def to_dict(self) -> dict:
        """The sections as plain data (what ``config.json`` and ``--print-config`` show; :meth:`from_dict` reads it)."""
        out = asdict(self)
        out["anchor"] = {k: out["anchor"][k] for k in _TRAINED_ANCHOR}
        return out

    def flat(self) -> dict:
        """Every setting under its flat key, as the config files write them."""
        return {key: getattr(getattr(self, s), f) for key, (s, f) in FLAT_KEYS.items()}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied, named by flat keys as in a config file (``cfg.replace(max_steps=2)``)."""
        data = {f"{s}.{f}": v for s, f, v in ((s, f, getattr(getattr(self, s), f)) for s, f in FLAT_KEYS.values())}
        for key, value in changes.items():
            for s, f, v in _locate(key, value, "TrainConfig.replace"):
                data[f"{s}.{f}"] = v
        return TrainConfig.from_dict(data, source="TrainConfig.replace")

    # -- construction ----------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from flat keys, sections (a mapping under a section name) or dotted keys (``optim.lr``), mixed.

        An unknown key is an error naming it (and the closest known key); a setting given twice is an error.
        """
        if not isinstance(data, dict):
            raise AnLLMError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
        parts: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in data.items():
            for s, f, v in _locate(str(key), value, source):
                if f in parts[s]:
                    raise AnLLMError(f"{source}: setting {s}.{f} is given twice")
                parts[s][f] = _coerce(s, f, v)
        try:
            built = {name: SECTIONS[name](**values) for name, values in parts.items()}
        except TypeError as e:  # e.g. a list where a number belongs
            raise AnLLMError(f"{source}: {e}") from e
        return cls(**built)

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
        """Read a YAML or JSON file (or nothing) and apply ``key=value`` overrides (values parsed as YAML)."""
        import yaml

        data: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            text = read_text_file(path, "config")
            if not text.strip():
                raise AnLLMError(f"config file {path} is empty: see configs/ for examples")
            data = _parse_config(text, path)
            if not isinstance(data, dict):
                raise AnLLMError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
            data = _flatten(data, str(path))
        for item in overrides or []:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise AnLLMError(f"--set expects key=value, got {item!r}")
            try:
                parsed = yaml.safe_load(value) if value.strip() else None
            except yaml.YAMLError:
                raise AnLLMError(f"--set {item!r}: the value is not valid YAML (quote strings)") from None
            for s, f, v in _locate(key.strip(), parsed, "--set"):
                data[f"{s}.{f}"] = v  # an override replaces the file's value, whichever way either names it
        return cls.from_dict(data, source=str(path) if path is not None else "--set")


def _unknown(key: str, source: str) -> AnLLMError:
    known = sorted({*FLAT_KEYS, *SECTIONS})
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return AnLLMError(f"{source}: unknown training setting {key!r}{hint}")


def _section_fields(section: str) -> tuple[str, ...]:
    cls = SECTIONS[section]
    return _TRAINED_ANCHOR if cls is AnchorConfig else tuple(f.name for f in fields(cls))


def _locate(key: str, value: Any, source: str) -> list[tuple[str, str, Any]]:
    """Where ``key: value`` goes: ``[(section, field, value), ...]`` (a whole section gives one per field)."""
    if key in SECTIONS and isinstance(value, dict):
        out = []
        for f, v in value.items():
            if str(f) not in _section_fields(key):
                close = difflib.get_close_matches(str(f), _section_fields(key), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise AnLLMError(f"{source}: unknown setting {f!r} in section {key!r}{hint}")
            out.append((key, str(f), v))
        return out
    section, dot, name = key.partition(".")
    if dot and section in SECTIONS:
        if name not in _section_fields(section):
            raise _unknown(key, source)
        return [(section, name, value)]
    key = _FORMER_KEYS.get(key, key)
    if key not in FLAT_KEYS:
        raise _unknown(key, source)
    return [(*FLAT_KEYS[key], value)]


def _flatten(data: dict, source: str) -> dict:
    """A file's settings as ``{"section.field": value}``, so later overrides replace them one by one."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        for s, f, v in _locate(str(key), value, source):
            if f"{s}.{f}" in out:
                raise AnLLMError(f"{source}: setting {s}.{f} is given twice")
            out[f"{s}.{f}"] = v
    return out


def _parse_config(text: str, path: Path) -> Any:
    """JSON or YAML text as data; a syntax error is one line with file, line and column."""
    import yaml

    if path.suffix == ".json":
        try:
            return json.loads(text) or {}
        except json.JSONDecodeError as e:
            raise AnLLMError(f"{path}:{e.lineno}:{e.colno}: config is not valid JSON ({e.msg})") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        at = f"{mark.line + 1}:{mark.column + 1}:" if mark is not None else ""
        problem = getattr(e, "problem", None) or getattr(e, "context", None) or type(e).__name__
        raise AnLLMError(f"{path}:{at} config is not valid YAML ({problem})") from None


def _coerce(section: str, name: str, value: Any) -> Any:
    """Numbers written as strings (YAML reads ``1e-4`` as a string) become the field's type; else an error."""
    cls = SECTIONS[section]
    f = next(f for f in fields(cls) if f.name == name)
    default = f.default
    shown = next((k for k, v in FLAT_KEYS.items() if v == (section, name)), name)
    if isinstance(default, bool) or value is None or not isinstance(default, int | float):
        return value
    if isinstance(value, bool):
        raise AnLLMError(f"TrainConfig.{shown} must be a number, got {value!r}")
    try:
        return type(default)(float(value)) if isinstance(default, float) else int(str(value))
    except ValueError as e:
        raise AnLLMError(f"TrainConfig.{shown} must be a number, got {value!r}") from e
