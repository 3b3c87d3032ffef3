"""``TrainConfig``: every training knob in one validated dataclass, read from YAML/JSON plus ``key=value`` overrides.

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

TrainMode = Literal["pretrain", "sft"]
LossKind = Literal["lm", "kl", "lm+kl"]
Finetune = Literal["full", "lora"]
Precision = Literal["auto", "fp32", "bf16"]
AttentionPath = Literal["auto", "dense", "flex"]
Scheduler = Literal["constant", "constant_with_warmup", "cosine", "linear"]
DataFormat = Literal["auto", "text", "jsonl", "alpaca", "translation"]

_CHOICES = {
    "mode": ("pretrain", "sft"),
    "anchors": ("ep", "ac"),
    "loss": ("lm", "kl", "lm+kl"),
    "finetune": ("full", "lora"),
    "precision": ("auto", "fp32", "bf16"),
    "attention": ("auto", "dense", "flex"),
    "lr_scheduler": ("constant", "constant_with_warmup", "cosine", "linear"),
    "data_format": ("auto", "text", "jsonl", "alpaca", "translation"),
}


@dataclass
class TrainConfig:
    """One training run. Every field can be set in the config file or with ``--set key=value``."""

    # -- model and anchors
    model: str = "tiny-random"  # anllm.models.load_model name: smollm2-135m, tiny-random, a hub id or a local dir
    mode: TrainMode = "pretrain"  # pretrain: loss on every token; sft: Alpaca prompt/response, loss on the response
    anchors: Literal["ep", "ac"] = "ep"  # ep: sentence-end punctuation as is; ac: insert <AC> after every sentence
    anchor_chars: str = ".!?"  # EP: tokens ending a sentence with one of these are anchors (official code: ".")
    n_sink: int = 0  # ablation: first n_sink tokens stay visible (0 = the paper's rule)
    window: int = 0  # ablation: each token also sees its window-1 predecessors (0 = off)
    anchors_see_anchors: bool = False  # ablation: anchor queries also see earlier anchors
    max_segment: int = 0  # a forced anchor after this many tokens without one (bounds the cache; 0 = off)

    # -- data
    train_files: list[str] = field(default_factory=list)  # local files, or "hub:org/name[:split]" (needs datasets)
    eval_file: str | None = None  # held-out text/JSONL: perplexity under full and anchor attention
    data_format: DataFormat = "auto"  # auto: by mode and extension (.txt text, .jsonl/.json records)
    text_field: str = "text"  # pretraining JSONL field
    doc_separator: str | None = None  # plain text: split a file into documents on this string (None: one per file)
    source_lang: str = "de"  # translation pairs: field/language of the source ...
    target_lang: str = "en"  # ... and of the target; turned into Alpaca records
    block_size: int = 1024  # tokens per example; longer examples are truncated (warned and counted)
    packing: bool = False  # pretrain only: concatenate documents (EOS between) and cut into full blocks
    max_examples: int = 0  # use only the first N examples (0 = all)

    # -- optimisation
    finetune: Finetune = "full"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    init_adapter: str | None = None  # LoRA: start from this peft adapter directory (its r/alpha/targets win)
    grow_lora_r: int = 0  # with init_adapter: raise its rank to this; new directions start at zero (0 = keep its r)
    loss: LossKind = "lm"  # kl: distil the model's own full-attention predictions (teacher = adapters off / frozen)
    kl_weight: float = 1.0  # weight of the KL term in "lm+kl"
    kl_temperature: float = 1.0
    full_kl_weight: float = 0.0  # + KL(teacher || student under full attention): guards normal (full-cache) use
    target_lm_weight: float = 0.0  # + LM loss on tokens marked "target" in segment records (memory-item answers)
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
    seed: int = 34
    precision: Precision = "auto"  # auto: bf16 autocast on CUDA with bf16 support, float32 otherwise
    attention: AttentionPath = "auto"  # auto: FlexAttention on CUDA, dense 4D mask (SDPA) on CPU
    gradient_checkpointing: bool = False
    num_threads: int = 0  # torch intra-op threads per process (0 = torch's default)

    # -- output, checkpoints, logging, evaluation
    output_dir: str = "runs/train"
    save_every: int = 100  # checkpoint every N optimiser steps (0 = only at the end)
    keep_checkpoints: int = 2  # newest N complete checkpoints are kept
    log_every: int = 1
    tensorboard: bool = False  # also write TensorBoard scalars (needs the tensorboard package)
    eval_every: int = 0  # evaluate every N steps (0 = only at the start and the end when eval_file is set)
    eval_block_size: int = 1024
    eval_max_tokens: int = 4096
    progress: bool = True  # tqdm bar on the main process

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise AnLLMError(f"TrainConfig.{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")
        if isinstance(self.train_files, str):
            self.train_files = [self.train_files]
        self.train_files = [str(f) for f in self.train_files]
        positive = ("block_size", "batch_size", "grad_accum", "lora_r", "lora_alpha", "eval_block_size", "log_every")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise AnLLMError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        non_negative = ("max_steps", "warmup_steps", "save_every", "eval_every", "n_sink", "window", "max_examples")
        non_negative += ("max_segment",)
        for name in non_negative + ("num_threads", "eval_max_tokens", "keep_checkpoints", "grow_lora_r"):
            if int(getattr(self, name)) < 0:
                raise AnLLMError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise AnLLMError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not self.epochs > 0 and self.max_steps == 0:
            raise AnLLMError("TrainConfig.epochs must be > 0 when max_steps is 0")
        for name in ("warmup_ratio", "min_lr_ratio", "lora_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise AnLLMError(f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.kl_weight < 0 or not self.kl_temperature > 0:
            raise AnLLMError("TrainConfig: weight_decay, max_grad_norm and kl_weight must be >= 0, kl_temperature > 0")
        for name in ("full_kl_weight", "target_lm_weight"):
            if not getattr(self, name) >= 0:
                raise AnLLMError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise AnLLMError(f"TrainConfig.adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if self.packing and self.mode == "sft":
            raise AnLLMError("TrainConfig.packing is for pretraining only: SFT examples stay one per row (no packing)")
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
        self.anchor_config()  # validates anchors / anchor_chars / n_sink / window together

    # -- derived ---------------------------------------------------------------------------------------------------
    def anchor_config(self) -> AnchorConfig:
        """The :class:`AnchorConfig` this run trains (and evaluates) with."""
        return AnchorConfig(
            mode=self.anchors,
            anchor_chars=self.anchor_chars,
            n_sink=self.n_sink,
            window=self.window,
            anchors_see_anchors=self.anchors_see_anchors,
            max_segment=self.max_segment,
        )

    def mask_rule(self) -> dict:
        return dict(anchors_see_anchors=self.anchors_see_anchors, n_sink=self.n_sink, window=self.window)

    def to_dict(self) -> dict:
        return asdict(self)

    # -- construction ----------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from a mapping; an unknown key is an error naming it (and the closest known key)."""
        if not isinstance(data, dict):
            raise AnLLMError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise AnLLMError(f"{source}: unknown training setting {key!r}{hint}")
        data = {k: _coerce(cls, k, v) for k, v in data.items()}
        try:
            return cls(**data)
        except TypeError as e:  # e.g. a list where a number belongs
            raise AnLLMError(f"{source}: {e}") from e

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
        for item in overrides or []:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise AnLLMError(f"--set expects key=value, got {item!r}")
            try:
                data[key.strip()] = yaml.safe_load(value) if value.strip() else None
            except yaml.YAMLError:
                raise AnLLMError(f"--set {item!r}: the value is not valid YAML (quote strings)") from None
        return cls.from_dict(data, source=str(path) if path is not None else "--set")


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


def _coerce(cls, key: str, value: Any) -> Any:
    """Numbers written as strings (YAML reads ``1e-4`` as a string) become the field's type; else an error."""
    default = next(f.default for f in fields(cls) if f.name == key)
    if isinstance(default, bool) or value is None or not isinstance(default, int | float):
        return value
    if isinstance(value, bool):
        raise AnLLMError(f"TrainConfig.{key} must be a number, got {value!r}")
    try:
        return type(default)(float(value)) if isinstance(default, float) else int(str(value))
    except ValueError as e:
        raise AnLLMError(f"TrainConfig.{key} must be a number, got {value!r}") from e
