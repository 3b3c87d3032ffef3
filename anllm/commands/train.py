"""``anllm train``: continued pre-training or SFT with the AnSAN mask, from a YAML/JSON config.

Runs as one process, or under ``accelerate launch`` on several processes/GPUs (DDP, FSDP, DeepSpeed).
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Fine-tune a causal LM so that it works with the AnSAN anchor mask (arXiv 2402.07616 §4.2): every training example
runs under the mask, so each sentence's information has to gather in its anchor token (EP: the sentence-end
punctuation already in the text; AC: an <AC> token inserted after every sentence), and the model learns to use an
anchor cache that keeps only the anchors and the open sentence.

  objective: pretrain  (data.objective; former key: mode) continued pre-training on plain text (.txt, or JSONL
                       {"text": ...}); loss on every token
  objective: sft       instruction tuning on Alpaca records (or translation pairs); loss on the response only
  loss: lm        (loss.kind) next-token cross-entropy (the paper's); kl / lm+kl distil the model's own full-attention
                  predictions into the masked model (how the shipped SmolLM2 adapter was trained)
  finetune        full (all weights) or lora (a peft adapter; export it with anllm.models.export_adapter)

Every option is a key of one YAML/JSON config, flat (lr: 2.0e-5) or in sections (model, anchor, data, loss, optim,
run: optim: {lr: 2.0e-5}); --set takes either (--set max_steps=50, --set optim.lr=1e-4). configs/ (in the source
repository) holds working ones:
tiny-pretrain-ep.yaml (a minute on a CPU), sft-alpaca-ac.yaml, sft-translation-ep.yaml, smollm2-anchor-adapter.yaml
(the default model's adapter) and the paper's 7B runs (paper-*.yaml, with configs/accelerate/ and configs/deepspeed/
for several GPUs). Checkpoints, logs and the final model go to output_dir. docs/training.md explains the keys."""

EPILOG = """\
examples (from the source repository's root; the first command writes the tiny config's data, once):
  python -m anllm.train.corpus --out runs/corpus-synth --sources synthetic
  anllm train --config configs/tiny-pretrain-ep.yaml
  anllm train --config configs/tiny-pretrain-ep.yaml --set max_steps=50 --set anchors=ac --print-config
  accelerate launch --config_file configs/accelerate/fsdp.yaml -m anllm train --config configs/paper-cpt-ep-7b.yaml"""


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train with the AnSAN mask (pretrain | sft), full fine-tuning or LoRA",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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

    from anllm.train.config import TrainConfig

    cfg = TrainConfig.load(args.config, args.overrides)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from anllm.commands.checks import check_train

    check_train(cfg)  # the model name, data files and output_dir, before a model loads
    from anllm.train.loop import train

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
