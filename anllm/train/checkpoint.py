"""Atomic training checkpoints, the JSONL metrics log and the final export.

A checkpoint ``<output_dir>/checkpoints/step-0000100/`` holds:

* ``trainable.safetensors``: the trainable parameters (all weights for full fine-tuning, LoRA weights otherwise);
  under FSDP / DeepSpeed the sharded model and optimizer go through ``accelerator.save_state`` into ``accelerate/``;
* ``optimizer.pt``, ``scheduler.pt``, ``rng_<rank>.pt`` (torch, Python, NumPy and CUDA generators of every process);
* ``state.json``: step, tokens seen, global batch (the data position is ``step * global_batch`` examples of a
  deterministic order, see :class:`anllm.train.loop.SampleOrder`), the config;
* ``adapter/`` (LoRA, loadable with peft) and ``tokenizer/``.

It is written into ``.step-0000100.tmp`` and renamed when complete, then ``latest`` is replaced atomically, so a
run killed at any moment leaves only complete checkpoints behind.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from anllm.config import AnLLMError

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
LATEST = "latest"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint directory under ``out``, or None."""
    root = Path(out) / CHECKPOINT_DIR
    pointer = root / LATEST
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "state.json").is_file():
            return cand
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file()) if root.is_dir() else []
    return done[-1] if done else None


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out, step, accelerator, model, optimizer, scheduler, tokenizer, meta: dict, keep: int = 2) -> Path:
    """Write checkpoint ``step`` (all processes must call this) and keep the newest ``keep`` ones."""
    from safetensors.torch import save_file

    root = Path(out) / CHECKPOINT_DIR
    name = f"step-{step:07d}"
    final, tmp = root / name, root / f".{name}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # left over from a run killed while saving
        tmp.mkdir()
    accelerator.wait_for_everyone()
    if _sharded(accelerator):
        accelerator.save_state(str(tmp / "accelerate"))
    elif accelerator.is_main_process:
        params = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(params, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(_rng_state(), tmp / f"rng_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if hasattr(model, "peft_config") and not _sharded(accelerator):  # sharded: see export_final
            model.save_pretrained(tmp / "adapter")
        tokenizer.save_pretrained(tmp / "tokenizer")
        state = {"step": step, "world_size": accelerator.num_processes, "time": time.time(), **meta}
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _atomic_write(root / LATEST, name + "\n")
        done = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())
        for old in done[: max(0, len(done) - max(keep, 1))]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, accelerator, model, optimizer, scheduler) -> dict:
    """Restore parameters, optimizer, scheduler and RNG from ``path``; return its ``state.json``."""
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    if _sharded(accelerator):
        accelerator.load_state(str(path / "accelerate"))
    else:
        params = load_file(str(path / "trainable.safetensors"))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(params) != trainable:
            missing, extra = sorted(trainable - set(params))[:3], sorted(set(params) - trainable)[:3]
            raise AnLLMError(f"{path}: checkpoint does not match this model (missing {missing}, unexpected {extra})")
        result = model.load_state_dict(params, strict=False)
        if result.unexpected_keys:
            raise AnLLMError(f"{path}: unexpected parameters {result.unexpected_keys[:3]}")
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=accelerator.device))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt"))
    rng = path / f"rng_{accelerator.process_index}.pt"
    if rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=False))
    return state


def export_final(out, accelerator, model, tokenizer) -> Path:
    """Save the trained adapter (LoRA) or model (full) plus tokenizer into ``<out>/final``, atomically.

    ``model`` is the prepared (possibly wrapped or sharded) model; every process must call this.
    """
    final, tmp = Path(out) / "final", Path(out) / ".final.tmp"
    accelerator.wait_for_everyone()
    state = accelerator.get_state_dict(model)  # gathers FSDP / ZeRO-3 shards (every process must call it)
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        # peft keeps only the adapter weights of the full state dict
        accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def trim_metrics(path: Path, step: int) -> None:
    """Drop metric lines after ``step`` (a resumed run recomputes them), atomically."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    _atomic_write(path, "".join(k + "\n" for k in keep))


class MetricsLog:
    """Append-only JSONL metrics (one object per line), optionally mirrored to TensorBoard."""

    def __init__(self, out: Path, *, enabled: bool = True, tensorboard: bool = False):
        self.enabled, self.path, self.tb = enabled, Path(out) / METRICS_FILE, None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise AnLLMError("tensorboard: true needs the tensorboard package (pip install tensorboard)") from e
            self.tb = SummaryWriter(str(Path(out) / "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
