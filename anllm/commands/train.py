"""``anllm train``: continued pre-training or SFT with the AnSAN mask, from a YAML/JSON config.

Runs as one process, or under ``accelerate launch`` on several processes/GPUs (DDP, FSDP, DeepSpeed).
"""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("train", help="train with the AnSAN mask (pretrain | sft), full fine-tuning or LoRA")
    p.add_argument("--config", default=None, help="YAML or JSON training config (see configs/)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os

    from anllm.training_config import TrainConfig

    cfg = TrainConfig.load(args.config, args.overrides)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from anllm.training import train

    result = train(cfg, resume=args.resume)
    last = result.losses.get(result.step)
    summary = {
        "summary": True,
        "output_dir": str(result.output_dir),
        "start_step": result.start_step,
        "step": result.step,
        "loss": last,
        "final_dir": str(result.final_dir),
    }
    if result.evals:
        summary["eval"] = result.evals[-1]
    if os.environ.get("RANK", "0") == "0":  # one summary under accelerate launch
        print(json.dumps(summary), file=sys.stderr)
    return 0
