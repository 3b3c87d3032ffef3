"""Memory training data: fact -> filler -> question -> answer items as weighted segment records (JSONL).

Built from :data:`anllm.memory.TRAIN_TEMPLATES` (never the benchmark's templates) with filler sentences from a
training corpus (``train.jsonl`` of ``anllm.train.corpus``; never the evaluation texts). Each line is
``{"segments": [{"text", "weight", "target"}, ...]}`` (read by :func:`anllm.train.data.segments_example`): the prompt
with weight 1, the answer with ``answer_weight`` and ``target`` set, so distillation and the LM loss both push the
answer through the anchors. Half the items use the tokenizer's chat template (the instruct behaviour), half a plain
``Question: ... Answer:`` layout.

    python -m anllm.train.memory_data --corpus runs/corpus-broad/train.jsonl --out runs/memory/train.jsonl --n 6000
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from anllm.config import AnLLMError
from anllm.memory import CHAT_OPENERS_TRAIN, TRAIN_TEMPLATES, MemoryItem, filler_sentences, make_items

CHAT_ANSWERS = ("{answer}.", "The answer is {answer}.", "It is {answer}.", "{fact}")


def corpus_filler(corpus: str | Path, *, max_docs: int = 4000, seed: int = 0) -> str:
    """Filler prose: up to ``max_docs`` random documents of a corpus ``train.jsonl``, joined."""
    docs = [json.loads(line)["text"] for line in Path(corpus).read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(docs)
    return " ".join(docs[:max_docs])


def item_record(item: MemoryItem, tokenizer, rng: random.Random, *, chat: bool, answer_weight: float) -> dict:
    """The segment record of one item (prompt, answer, end of turn)."""
    if chat and getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(item.messages(), add_generation_prompt=True, tokenize=False)
        style = rng.choice(CHAT_ANSWERS)
        answer = style.format(answer=item.answer, fact=item.fact or f"{item.answer}.")
        end = (tokenizer.eos_token or "") + "\n"
        return {
            "segments": [
                {"text": prompt, "weight": 1.0},
                {"text": answer, "weight": answer_weight, "target": True},
                {"text": end, "weight": 1.0},
            ]
        }
    return {
        "segments": [
            {"text": item.plain_prompt(), "weight": 1.0},
            {"text": f" {item.answer}.", "weight": answer_weight, "target": True},
        ]
    }


def build_memory_data(
    corpus: str | Path,
    out: str | Path,
    tokenizer,
    *,
    n: int = 6000,
    seed: int = 1,
    min_distance: int = 16,
    max_distance: int = 800,
    answer_weight: float = 4.0,
) -> dict:
    """Write ``n`` memory records (single, multi, chat families; distances log-uniform) to ``out``."""
    if not 1 <= min_distance <= max_distance:
        raise AnLLMError(
            f"memory data: distances must satisfy 1 <= min_distance <= max_distance, got {min_distance} and "
            f"{max_distance}; pass e.g. --min-distance 48 --max-distance 900"
        )
    rng = random.Random(seed)
    filler = filler_sentences(corpus_filler(corpus, seed=seed))
    lo, hi = math.log(min_distance), math.log(max_distance)
    records, families = [], ("single", "multi", "chat")
    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    for k in range(n):
        d = int(math.exp(rng.uniform(lo, hi)))
        (item,) = make_items(
            seed=rng.randrange(2**31),
            distances=(d,),
            n_per_distance=1,
            filler=filler,
            count_tokens=count,
            families=(families[k % 3],),
            templates=TRAIN_TEMPLATES,
            chat_openers=CHAT_OPENERS_TRAIN,
        )
        chat = item.family == "chat" or rng.random() < 0.5
        records.append(item_record(item, tokenizer, rng, chat=chat, answer_weight=answer_weight))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(out)
    info = {"records": len(records), "seed": seed, "corpus": str(corpus), "out": str(out)}
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anllm.train.memory_data", description=__doc__.split("\n")[0])
    p.add_argument("--corpus", required=True, help="a corpus train.jsonl (python -m anllm.train.corpus)")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="smollm2-135m", help="whose tokenizer measures distances and renders chats")
    p.add_argument("--n", type=int, default=6000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--min-distance", type=int, default=16, help="shortest filler between fact and question (tokens)")
    p.add_argument("--max-distance", type=int, default=800, help="longest filler (tokens; distances are log-uniform)")
    p.add_argument("--answer-weight", type=float, default=4.0)
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    from anllm.models import SMOLLM2_DIRNAME, smollm2_path

    path = smollm2_path() if args.model in ("smollm2-135m", "default", SMOLLM2_DIRNAME) else args.model
    tok = AutoTokenizer.from_pretrained(path)
    info = build_memory_data(
        args.corpus,
        args.out,
        tok,
        n=args.n,
        seed=args.seed,
        min_distance=args.min_distance,
        max_distance=args.max_distance,
        answer_weight=args.answer_weight,
    )
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
