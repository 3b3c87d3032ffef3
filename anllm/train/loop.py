"""Training with the AnSAN mask on every example (arXiv 2402.07616 §4.2; docs/training.md), on accelerate: one
CPU, DDP, FSDP or DeepSpeed.

:func:`train` is :func:`setup` (accelerator, precision, seed) -> :func:`build` (model, data, optimiser, resume state)
-> :func:`fit` (the steps, read top to bottom), which calls :func:`train_step` per optimiser step, :func:`evaluate`
and :func:`save`; the pieces they use are small functions:

* :func:`anllm.train.losses.micro_batch_loss` computes the LM loss and/or the KL distillation loss against the
  model's own full-attention predictions (teacher = adapters disabled for LoRA, a frozen copy for full fine-tuning);
* :func:`evaluate_perplexity` measures held-out perplexity under full and under anchor attention (one AnSAN-masked
  pass with true positions equals anchor-cache decoding exactly, see ``anllm.verify``);
* :mod:`anllm.train.checkpoint` writes and reads checkpoints atomically.

Losses are normalised by the number of predicted tokens in the whole global batch (all processes and micro-batches),
so a run on N processes with batch B computes the same gradients as one process with batch N x B.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from anllm.config import AnLLMError
from anllm.train.config import TrainConfig
from anllm.train.data import IGNORE_INDEX, collate
from anllm.train.losses import anchor_attention, micro_batch_loss, token_nll

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns: the per-step losses (global batch means) and the evaluations made."""

    output_dir: Path
    start_step: int
    step: int
    losses: dict[int, float] = field(default_factory=dict)
    evals: list[dict] = field(default_factory=list)
    final_dir: Path | None = None


# -- evaluation --------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_perplexity(
    model, blocks: list[list[int]], anchor_ids, rule: dict, device, path: str = "dense", max_segment: int = 0
) -> dict[str, float]:
    """Perplexity of held-out blocks under full (causal) attention and under the AnSAN mask (true positions).

    The anchor number equals decoding through the evicting anchor cache (exactness is tested in the core).
    """
    was_training = model.training
    model.eval()
    nll = {"full": 0.0, "anchor": 0.0}
    count = 0
    for block in blocks:
        ids = torch.tensor([block], device=device)  # (1, T)
        ones = torch.ones_like(ids)
        labels = ids.clone()
        nll["full"] += float(token_nll(model(input_ids=ids, attention_mask=ones).logits, labels))
        mask, pos = anchor_attention(ids, ones, anchor_ids, rule, path=path, max_segment=max_segment)
        nll["anchor"] += float(token_nll(model(input_ids=ids, attention_mask=mask, position_ids=pos).logits, labels))
        count += ids.shape[1] - 1
    model.train(was_training)
    return {f"ppl_{k}": math.exp(v / count) for k, v in nll.items()} | {"eval_tokens": count}


# -- schedule and data order -----------------------------------------------------------------------------------------
def lr_lambda(cfg: TrainConfig, max_steps: int) -> Callable[[int], float]:
    """LR multiplier after ``step`` optimiser steps: linear warm-up, then constant, cosine or linear decay."""
    warmup = cfg.optim.warmup_steps or math.ceil(cfg.optim.warmup_ratio * max_steps)

    def f(step: int) -> float:
        if cfg.optim.lr_scheduler == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        if cfg.optim.lr_scheduler == "cosine":
            return cfg.optim.min_lr_ratio + (1 - cfg.optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.optim.lr_scheduler == "linear":
            return cfg.optim.min_lr_ratio + (1 - cfg.optim.min_lr_ratio) * (1 - progress)
        return 1.0

    return f


class SampleOrder:
    """Deterministic example order: a fresh seeded permutation per epoch, read as one endless stream.

    The data position of a run is just the number of examples consumed, so resuming needs only the step number.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._perms = n, seed, {}

    def __getitem__(self, p: int) -> int:
        epoch, i = divmod(p, self.n)
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._perms[epoch][i]

    def global_batch(self, step: int, size: int) -> list[int]:
        return [self[p] for p in range(step * size, (step + 1) * size)]


def process_slice(indices: list[int], micro: int, rank: int, world: int, batch_size: int) -> list[int]:
    """This process's examples of micro-batch ``micro``: the global batch is laid out [micro][rank][row]."""
    start = (micro * world + rank) * batch_size
    return indices[start : start + batch_size]


# -- model setup -----------------------------------------------------------------------------------------------------
def resolve_precision(cfg: TrainConfig) -> str:
    if cfg.run.precision != "auto":
        return cfg.run.precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def resolve_attention(cfg: TrainConfig) -> str:
    if cfg.run.attention != "auto":
        return cfg.run.attention
    return "flex" if torch.cuda.is_available() else "dense"


def prepare_model(cfg: TrainConfig):
    """Load the model (``<AC>`` added in AC mode), attach LoRA if asked, and build the KL teacher.

    Returns:
        (model, loaded, frozen): the trainable module, the :class:`anllm.models.LoadedModel`, and a frozen copy of
        the initial model as KL teacher for full fine-tuning (None otherwise: LoRA disables its adapters instead).
    """
    from anllm.models import load_model

    attn_impl = "flex_attention" if resolve_attention(cfg) == "flex" else "sdpa"
    lm = load_model(cfg.model.name, anchor=cfg.anchor, attn_implementation=attn_impl)
    model = lm.model
    frozen = None
    if cfg.loss.needs_teacher and cfg.model.finetune == "full":
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
    if cfg.model.finetune == "lora" and cfg.model.init_adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, cfg.model.init_adapter, is_trainable=True)
        except Exception as e:  # noqa: BLE001 - unreadable adapter files: name the directory, not a peft internal
            raise AnLLMError(
                f"TrainConfig.init_adapter {cfg.model.init_adapter}: not a usable peft adapter ({e})"
            ) from e
        logger.info("LoRA starts from %s (its r, alpha and target modules)", cfg.model.init_adapter)
        if cfg.model.grow_lora_r:
            model = grow_lora_rank(model, cfg.model.grow_lora_r, dropout=cfg.model.lora_dropout)
            logger.info(
                "LoRA rank raised to %d (new directions start at zero: same model at step 0)", cfg.model.grow_lora_r
            )
    elif cfg.model.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        extra = {}
        if cfg.anchor.kind == "ac":  # the new <AC> embedding row must learn too
            extra["trainable_token_indices"] = {"embed_tokens": list(lm.anchor_ids)}
        lora = LoraConfig(
            r=cfg.model.lora_r,
            lora_alpha=cfg.model.lora_alpha,
            lora_dropout=cfg.model.lora_dropout,
            target_modules=list(cfg.model.lora_targets),
            task_type="CAUSAL_LM",
            **extra,
        )
        model = get_peft_model(model, lora)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()
    return model, lm, frozen


def grow_lora_rank(model, r: int, *, dropout: float = 0.0):
    """A LoRA model of rank ``r`` computing the same function as ``model`` (a peft LoRA model of rank <= r).

    The saved directions fill the first rows of every ``lora_A`` and columns of every ``lora_B``; the new ``lora_B``
    columns are zero (so the model is unchanged) and the new ``lora_A`` rows keep peft's random init (so they get
    gradients). ``lora_alpha`` is scaled with the rank to keep ``alpha / r``, so old directions keep their step size.
    """
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    old = model.peft_config["default"]
    if old.trainable_token_indices or old.modules_to_save or old.use_rslora or old.use_dora:
        raise AnLLMError(
            "TrainConfig.grow_lora_r: the saved adapter trains token rows, whole modules, rsLoRA or DoRA; "
            "only a plain LoRA adapter can grow (train a new one at the rank you want instead)"
        )
    if r < old.r:
        raise AnLLMError(f"TrainConfig.grow_lora_r = {r} is below the saved adapter's r = {old.r}; give r >= {old.r}")
    saved = {
        n: (m.lora_A["default"].weight.detach().clone(), m.lora_B["default"].weight.detach().clone())
        for n, m in model.named_modules()
        if isinstance(m, LoraLayer)
    }  # name -> (r0, in), (out, r0)
    alpha = old.lora_alpha * r / old.r
    new = LoraConfig(
        r=r,
        lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,
        lora_dropout=dropout,
        target_modules=old.target_modules if isinstance(old.target_modules, str) else sorted(old.target_modules),
        task_type="CAUSAL_LM",
    )
    grown = get_peft_model(model.unload(), new)
    with torch.no_grad():
        for name, m in grown.named_modules():
            if isinstance(m, LoraLayer):
                a, b = saved[name]
                m.lora_A["default"].weight[: a.shape[0]].copy_(a)  # (r, in): new rows keep peft's random init
                m.lora_B["default"].weight.zero_()  # (out, r): new columns start at zero ...
                m.lora_B["default"].weight[:, : b.shape[1]].copy_(b)  # ... the saved ones are copied back
    return grown


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay only on matrices (not on norms/biases)."""
    decay = [p for p in trainable_parameters(model) if p.ndim >= 2]
    rest = [p for p in trainable_parameters(model) if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.optim.lr, betas=tuple(cfg.optim.adam_betas))


def _allow_new_precision(mixed: str) -> None:
    """Let a second run in one single-process Python session (a notebook, a test) use another precision.

    accelerate keeps one process-wide state and refuses a new ``mixed_precision`` once it is set; a launched
    multi-process run keeps it (its precision comes from the launcher), a single process may start afresh.
    """
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed) != mixed and PartialState().num_processes == 1:
        AcceleratorState._reset_state()  # private in accelerate 1.15; only the precision-bearing state is cleared


# -- the loop: setup -> build -> fit ---------------------------------------------------------------------------------
@dataclass
class TrainSetup:
    """What :func:`setup` decides before anything is loaded: the resolved config and where the run happens."""

    cfg: TrainConfig  # a copy with precision resolved (the caller's config keeps "auto")
    accelerator: Any
    path: str  # attention path: "dense" or "flex"
    out: Path
    resume: bool

    @property
    def world(self) -> int:
        return self.accelerator.num_processes


@dataclass
class TrainParts:
    """What :func:`build` makes: the model and its teacher, the data, the optimiser and schedule, the resume point."""

    model: torch.nn.Module  # prepared by accelerate (DDP / FSDP wrapped)
    unwrapped: torch.nn.Module
    lm: Any  # the anllm.models.LoadedModel (tokenizer, anchor ids)
    teacher: Callable | None
    examples: list
    data_stats: Any
    blocks: list[list[int]] | None  # held-out evaluation blocks
    optimizer: torch.optim.Optimizer
    scheduler: Any
    global_batch: int
    max_steps: int
    start_step: int = 0
    tokens_seen: int = 0  # tokens trained on so far (advanced by train_step)


def setup(cfg: TrainConfig, *, resume: bool = False) -> TrainSetup:
    """Threads, precision, attention path, the accelerator, the output directory's checks and the seed."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from anllm.train import checkpoint as ckpt

    if cfg.run.num_threads:
        torch.set_num_threads(cfg.run.num_threads)
    precision = resolve_precision(cfg)
    path = resolve_attention(cfg)
    if path == "flex" and not torch.cuda.is_available():
        raise AnLLMError("attention: flex needs a CUDA GPU here; use attention: dense on CPU")
    # the caller's config keeps "auto" for its next run; this copy is saved with the resolved value
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, precision=precision))
    mixed = "bf16" if precision == "bf16" else "no"
    _allow_new_precision(mixed)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=mixed, gradient_accumulation_steps=cfg.optim.grad_accum
    )
    out = Path(cfg.run.output_dir)
    if resume and ckpt.latest_checkpoint(out) is None:
        raise AnLLMError(f"--resume: no complete checkpoint in {out / ckpt.CHECKPOINT_DIR}")
    if not resume and ckpt.latest_checkpoint(out) is not None:
        raise AnLLMError(f"{out} already holds checkpoints: pass --resume to continue, or choose another output_dir")
    set_seed(cfg.run.seed)
    return TrainSetup(cfg, accelerator, path, out, resume)


def build(s: TrainSetup) -> TrainParts:
    """The model (and frozen teacher), the examples and evaluation blocks, optimiser and schedule; on resume, the
    newest checkpoint's weights, optimiser, schedule and RNG state."""
    from anllm.train import checkpoint as ckpt
    from anllm.train.data import build_examples, eval_blocks

    cfg, accelerator = s.cfg, s.accelerator
    model, lm, frozen = prepare_model(cfg)
    examples, stats = build_examples(cfg, lm.tokenizer)
    blocks = eval_blocks(cfg.data.eval_file, cfg, lm.tokenizer) if cfg.data.eval_file else None
    global_batch = cfg.optim.batch_size * cfg.optim.grad_accum * s.world
    max_steps = cfg.optim.max_steps or max(1, math.ceil(cfg.optim.epochs * len(examples) / global_batch))
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, max_steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    if frozen is not None:
        frozen.to(accelerator.device)
    unwrapped = accelerator.unwrap_model(model)
    teacher = _bind_teacher(frozen if frozen is not None else unwrapped) if cfg.loss.needs_teacher else None
    parts = TrainParts(
        model, unwrapped, lm, teacher, examples, stats, blocks, optimizer, scheduler, global_batch, max_steps
    )
    if s.resume:
        state = ckpt.load_checkpoint(ckpt.latest_checkpoint(s.out), accelerator, unwrapped, optimizer, scheduler)
        if state["global_batch"] != global_batch:
            raise AnLLMError(
                f"--resume: the checkpoint used a global batch of {state['global_batch']} examples, this run "
                f"{global_batch}; keep batch_size * grad_accum * processes unchanged to continue the data order"
            )
        parts.start_step, parts.tokens_seen = state["step"], state["tokens_seen"]
    return parts


@dataclass
class BatchPlan:
    """How examples become global batches: the shared sample order, predicted tokens per example, the pad id."""

    order: SampleOrder
    n_pred: list[int]  # tokens with a label per example (the loss's normaliser)
    pad_id: int

    @classmethod
    def of(cls, p: TrainParts, seed: int) -> BatchPlan:
        tok = p.lm.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        n_pred = [sum(lab != IGNORE_INDEX for lab in e.labels[1:]) for e in p.examples]
        return cls(SampleOrder(len(p.examples), seed), n_pred, pad_id)


def train_step(s: TrainSetup, p: TrainParts, plan: BatchPlan, step: int) -> dict:
    """Optimiser step ``step + 1``: ``grad_accum`` micro-batches of this process's share of global batch ``step``.

    Returns:
        the step's metrics (global batch means over every process), as logged.
    """
    cfg, accelerator, model = s.cfg, s.accelerator, p.model
    rank, world = accelerator.process_index, accelerator.num_processes
    t0 = time.perf_counter()
    indices = plan.order.global_batch(step, p.global_batch)
    n_norm = max(sum(plan.n_pred[i] for i in indices), 1)  # predicted tokens in the global batch
    sums = torch.zeros(5, device=accelerator.device)  # objective, nll, kl, kl_full, tokens
    zero = sums[0] * 0
    n_tokens, grad_norm = 0, None
    for micro in range(cfg.optim.grad_accum):
        rows = [p.examples[i] for i in process_slice(indices, micro, rank, world, cfg.optim.batch_size)]
        batch = {k: v.to(accelerator.device) for k, v in collate(rows, plan.pad_id).items()}
        n_tokens += int(batch["attention_mask"].sum())
        with accelerator.accumulate(model), accelerator.autocast():
            objective, parts = micro_batch_loss(model, batch, p.lm.anchor_ids, cfg, teacher=p.teacher, path=s.path)
            # DDP averages over processes and accelerate divides by grad_accum: undo both, normalise globally
            accelerator.backward(objective * (world * cfg.optim.grad_accum / n_norm))
            sums += torch.stack([objective.detach(), parts["nll"], parts["kl"], parts["kl_full"], zero])
            grad_norm = None
            if accelerator.sync_gradients and cfg.optim.max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
            p.optimizer.step()
            p.optimizer.zero_grad(set_to_none=True)
    lr = p.scheduler.get_last_lr()[0]
    p.scheduler.step()
    sums[4] = n_tokens
    objective, nll, kl, kl_full, n_step = accelerator.reduce(sums, "sum").tolist()
    p.tokens_seen += int(n_step)
    return {
        "step": step + 1,
        "loss": objective / n_norm,
        "lm_loss": nll / n_norm,
        "kl": kl / n_norm,
        "kl_full": kl_full / n_norm,
        "lr": lr,
        "grad_norm": None if grad_norm is None else float(grad_norm),
        "tokens": int(n_step),
        "tokens_seen": p.tokens_seen,
        "tokens_per_s": int(n_step) / (time.perf_counter() - t0),
        "epoch": (step + 1) * p.global_batch / len(p.examples),
    }


def evaluate(s: TrainSetup, p: TrainParts, step: int) -> dict | None:
    """Held-out perplexity under full and anchor attention after ``step`` steps (None without an ``eval_file``)."""
    if p.blocks is None:
        return None
    cfg = s.cfg
    ev = evaluate_perplexity(
        p.model, p.blocks, p.lm.anchor_ids, cfg.mask_rule(), s.accelerator.device, s.path, cfg.anchor.max_segment
    )
    renamed = {f"eval_{k}" if k.startswith("ppl") else k: v for k, v in ev.items()}
    return {"step": step, "tokens_seen": p.tokens_seen, **renamed}


def save(s: TrainSetup, p: TrainParts, step: int) -> None:
    """A complete checkpoint after ``step`` steps (every process calls it; the newest ``keep_checkpoints`` stay)."""
    from anllm.train import checkpoint as ckpt

    meta = {"global_batch": p.global_batch, "tokens_seen": p.tokens_seen, "config": s.cfg.to_dict()}
    ckpt.save_checkpoint(
        s.out, step, s.accelerator, p.unwrapped, p.optimizer, p.scheduler, p.lm.tokenizer, meta,
        keep=s.cfg.run.keep_checkpoints,
    )  # fmt: skip


def _announce(s: TrainSetup, p: TrainParts) -> None:
    """Write ``config.json``, cut the metrics file back to the resume step, and log what the run will do."""
    from anllm.train import checkpoint as ckpt

    cfg, accelerator = s.cfg, s.accelerator
    if accelerator.is_main_process:
        s.out.mkdir(parents=True, exist_ok=True)
        (s.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        ckpt.trim_metrics(s.out / ckpt.METRICS_FILE, p.start_step)
        logger.info("data: %s; %d steps of %d examples (global batch)", p.data_stats, p.max_steps, p.global_batch)
    logger.info(
        "process %d/%d: %s precision, %s attention, %s anchors %s",
        accelerator.process_index, accelerator.num_processes, cfg.run.precision, s.path, cfg.anchor.kind,
        p.lm.anchor_ids[:8],
    )  # fmt: skip


def _due(every: int, done: int, max_steps: int) -> bool:
    """Whether a periodic evaluation / checkpoint falls after step ``done`` (the last step has its own)."""
    return bool(every) and done % every == 0 and done < max_steps


def _keep_eval(result: TrainResult, log, record: dict | None) -> None:
    if record is not None:
        result.evals.append(record)
        log.write(record)


def fit(s: TrainSetup, p: TrainParts, on_step_end: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Optimiser steps from ``p.start_step`` to ``p.max_steps``: logs, evaluations, checkpoints, the final export."""
    from tqdm.auto import tqdm

    from anllm.train import checkpoint as ckpt

    cfg, main = s.cfg, s.accelerator.is_main_process
    _announce(s, p)
    plan = BatchPlan.of(p, cfg.run.seed)
    log = ckpt.MetricsLog(s.out, enabled=main, tensorboard=cfg.run.tensorboard)
    result = TrainResult(s.out, p.start_step, p.start_step)
    if p.start_step == 0:
        _keep_eval(result, log, evaluate(s, p, 0))
    bar = tqdm(
        total=p.max_steps, initial=p.start_step, disable=not (main and cfg.run.progress), desc="train", unit="step"
    )
    for step in range(p.start_step, p.max_steps):
        record = train_step(s, p, plan, step)
        done = result.step = step + 1
        result.losses[done] = record["loss"]
        if done % cfg.run.log_every == 0 or done == p.max_steps:
            log.write(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
        if _due(cfg.run.eval_every, done, p.max_steps):
            _keep_eval(result, log, evaluate(s, p, done))
        if _due(cfg.run.save_every, done, p.max_steps):
            save(s, p, done)
        if on_step_end is not None:
            on_step_end(done, record)
    bar.close()
    if result.step > p.start_step or p.start_step == p.max_steps:
        _keep_eval(result, log, evaluate(s, p, result.step))
    save(s, p, result.step)
    result.final_dir = ckpt.export_final(s.out, s.accelerator, p.model, p.lm.tokenizer)
    log.close()
    s.accelerator.wait_for_everyone()
    return result


def train(cfg: TrainConfig, *, resume: bool = False, on_step_end: Callable[[int, dict], None] | None = None):
    """Train ``cfg`` under whatever ``accelerate launch`` set up (or one local process): :func:`setup`, then
    :func:`build`, then :func:`fit`.

    Args:
        resume: continue from the newest complete checkpoint in ``cfg.run.output_dir`` (error if there is none).
        on_step_end: called on every process after each optimiser step with ``(step, metrics)``.
    Returns:
        :class:`TrainResult`.
    """
    s = setup(cfg, resume=resume)
    return fit(s, build(s), on_step_end)


def _bind_teacher(model):
    """Full-attention (no AnSAN) logits of the base model: a frozen copy, or the peft model with adapters disabled."""

    def teacher(input_ids, attention_mask, position_ids):
        ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
        with ctx:
            return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits

    return teacher
