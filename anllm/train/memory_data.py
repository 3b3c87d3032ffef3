"""Memory training data: fact -> filler -> question -> answer items as weighted segment records (JSONL).

Built from :data:`anllm.memory.TRAIN_TEMPLATES` (``--templates v1``) or :data:`~anllm.memory.TRAIN_TEMPLATES_V2`
(``v2``: plus answers of many forms and paraphrased questions), never the benchmark's templates, with filler sentences
from a training corpus (``train.jsonl`` of ``anllm.train.corpus``; never the evaluation texts) and optionally from a
second one (``--second-corpus``, e.g. technical prose: each item draws its filler from it with probability
``--second-share``). Each line is
``{"segments": [{"text", "weight", "target"}, ...]}`` (read by :func:`anllm.train.data.segments_example`): the prompt
with weight 1, the answer with ``answer_weight`` and ``target`` set, so distillation and the LM loss both push the
answer through the anchors. Half the items use the tokenizer's chat template (the instruct behaviour), half a plain
``Question: ... Answer:`` layout.

    python -m anllm.train.memory_data --corpus runs/corpus-broad/train.jsonl --out runs/memory/train.jsonl --n 6000
    python -m anllm.train.memory_data --corpus runs/corpus-broad/train.jsonl --templates v2 \
        --second-corpus runs/corpus-tech/train.jsonl --out runs/memory-v2b/train.jsonl --n 8000 --seed 21
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from anllm.config import AnLLMError
from anllm.memory import (
    CHAT_OPENERS_TRAIN,
    CHAT_OPENERS_TRAIN_V2,
    TRAIN_TEMPLATES,
    TRAIN_TEMPLATES_V2,
    MemoryItem,
    filler_sentences,
    make_items,
)

CHAT_ANSWERS = ("{answer}.", "The answer is {answer}.", "It is {answer}.", "{fact}")
# --templates: name -> (templates, chat openers); both training-only (tests/test_recall.py checks the wording)
TEMPLATE_SETS = {"v1": (TRAIN_TEMPLATES, CHAT_OPENERS_TRAIN), "v2": (TRAIN_TEMPLATES_V2, CHAT_OPENERS_TRAIN_V2)}
TRAIN_FAMILIES = ("single", "multi", "chat")  # the benchmark's few-shot families are left to evaluation


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
    templates: str = "v1",
    second_corpus: str | Path | None = None,
    second_share: float = 0.5,
) -> dict:
    """Write ``n`` memory records (single, multi, chat families in turn; distances log-uniform) to ``out``.

    Args:
        templates: a :data:`TEMPLATE_SETS` name.
        second_corpus: another corpus ``train.jsonl``; each item takes its filler from it with probability
            ``second_share``, else from ``corpus`` (without it, items are exactly those of earlier versions).
    """
    if templates not in TEMPLATE_SETS:
        raise AnLLMError(f"memory data: unknown template set {templates!r}; choose from {', '.join(TEMPLATE_SETS)}")
    if second_corpus is not None and not 0 <= second_share <= 1:
        raise AnLLMError(f"memory data: second_share must be in [0, 1], got {second_share}")
    if not 1 <= min_distance <= max_distance:
        raise AnLLMError(
            f"memory data: distances must satisfy 1 <= min_distance <= max_distance, got {min_distance} and "
            f"{max_distance}; pass e.g. --min-distance 48 --max-distance 900"
        )
    rng = random.Random(seed)
    fillers = [filler_sentences(corpus_filler(corpus, seed=seed))]
    if second_corpus is not None:
        fillers.append(filler_sentences(corpus_filler(second_corpus, seed=seed + 1)))
    template_set, openers = TEMPLATE_SETS[templates]
    lo, hi = math.log(min_distance), math.log(max_distance)
    records, families, per_source = [], TRAIN_FAMILIES, [0] * len(fillers)
    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    for k in range(n):
        d = int(math.exp(rng.uniform(lo, hi)))
        source = int(second_corpus is not None and rng.random() < second_share)  # no draw without a second corpus
        per_source[source] += 1
        (item,) = make_items(
            seed=rng.randrange(2**31),
            distances=(d,),
            n_per_distance=1,
            filler=fillers[source],
            count_tokens=count,
            families=(families[k % 3],),
            templates=template_set,
            chat_openers=openers,
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
    info |= {"templates": templates, "n_templates": len(template_set), "families": list(families)}
    info |= {"distances": [min_distance, max_distance], "answer_weight": answer_weight}
    if second_corpus is not None:
        info |= {"second_corpus": str(second_corpus), "second_share": second_share, "items_per_corpus": per_source}
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
    p.add_argument("--templates", default="v1", choices=sorted(TEMPLATE_SETS), help="training template set")
    p.add_argument("--second-corpus", help="another corpus train.jsonl for filler (e.g. technical prose)")
    p.add_argument("--second-share", type=float, default=0.5, help="share of items with filler from --second-corpus")
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
        templates=args.templates,
        second_corpus=args.second_corpus,
        second_share=args.second_share,
    )
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
