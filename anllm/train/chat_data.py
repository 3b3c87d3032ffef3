"""Chat distillation data: instructions answered by the base model's full cache, as weighted segment records (JSONL).

Issue 27 asks that anchor mode still behave like an assistant (answer every part, stop by EOS). The loss of the memory
recipes (``loss: kl``) distils the base model's full-attention predictions into the masked student at every labelled
token; these records give it chat turns to distil: a training instruction (:data:`TRAIN_CHAT_TEMPLATES`, many kinds
of multi-part request, never the wording or slot values of ``anllm eval assistant``; ``tests/test_chat_data.py``
checks) through the tokenizer's chat template, the base model's own greedy answer (so the teacher's distribution is
the one that produced it) and the end of turn, whose weight (``--end-weight``) stresses the decision to stop. Answers
that run into the token limit are dropped: every record ends where the base model chose to stop.

    python -m anllm.train.chat_data --out runs/chat-v2/train.jsonl --n 400 --seed 5
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from anllm.config import AnLLMError


@dataclass(frozen=True)
class ChatTemplate:
    """An instruction with ``{slots}``; each slot draws from its pool."""

    name: str
    text: str
    pools: dict[str, tuple]

    def fill(self, rng: random.Random) -> str:
        return self.text.format(**{k: rng.choice(v) for k, v in self.pools.items()})


_N = ("2", "3", "4", "5", "two", "three", "four", "five")
_CATEGORIES = ("birds", "board games", "metals", "cities in Asia", "rivers", "breakfast foods", "sports played with a "
               "ball", "types of cloud", "desserts", "insects", "languages", "flowers", "gemstones", "spices",
               "constellations", "ways to save water", "hobbies for rainy days", "kinds of bridge")  # fmt: skip
_PHENOMENA = ("the sky looks blue", "leaves change colour in autumn", "bread rises", "metal feels cold to the touch",
              "we see lightning before we hear thunder", "ice floats on water", "the Moon has phases",
              "salt melts ice on roads", "cats purr", "tides rise and fall", "onions make people cry",
              "rainbows appear after rain", "bicycles stay upright when moving", "deserts are cold at night",
              "bread goes stale", "some birds migrate south", "yawning is contagious",
              "the ocean is salty")  # fmt: skip
_CLAIMS = ("sound travels faster than light", "the heart pumps blood", "bats are birds",
           "water boils at 100 degrees Celsius at sea level", "the Sahara is in Australia", "honey is made by bees",
           "a triangle has four sides", "Mount Everest is the tallest mountain above sea level", "spiders are insects",
           "the Moon orbits the Earth", "glass is made from sand", "dolphins breathe through gills",
           "Venus is closer to the Sun than Mars", "a year has 400 days", "plants need light to grow")  # fmt: skip
_THINGS = ("a bakery", "a pet tortoise", "a sailing boat", "a robot vacuum", "a bookshop", "a chess club",
           "a new species of frog", "a coffee blend", "a hiking trail", "a weather app", "a family restaurant",
           "a jazz band", "a garden gnome", "a space probe", "a rescue dog", "a cycling team")  # fmt: skip
_FORMAL = ("gonna grab some food, back soon", "that movie was super cool", "can u send me the file asap",
           "thanks a ton for the help", "the meeting got moved, no clue why", "i'm kinda busy today",
           "sorry, totally forgot to call back", "the printer's broken again lol", "wanna meet up friday?",
           "ur report looks fine i guess", "we ran outta coffee", "this app keeps crashing, ugh")  # fmt: skip
_PLACES = ("a busy train station", "a quiet library at night", "a mountain lake", "a street market", "a snowy village",
           "an old lighthouse", "a crowded beach in summer", "a bakery early in the morning", "a thunderstorm at sea",
           "an empty classroom", "a flower field in spring", "a fishing harbour at dawn")  # fmt: skip
_TOPICS = ("solar power in cities", "learning to swim as an adult", "the history of tea", "urban gardening",
           "sleep and memory", "electric bicycles", "saving money on groceries", "working from home",
           "public libraries", "learning a second language", "keeping bees", "night trains in Europe",
           "cooking with children", "recycling old phones")  # fmt: skip
_SPANISH = (
    "libro",
    "casa",
    "perro",
    "agua",
    "sol",
    "mesa",
    "ventana",
    "leche",
    "luna",
    "manzana",
    "puerta",
    "camino",
    "flor",
    "tiempo",
    "ciudad",
    "escuela",
)
_HEAVIER = (("a brick", "a feather"), ("an elephant", "a mouse"), ("a car", "a bicycle"), ("a watermelon", "a grape"),
            ("a piano", "a violin"), ("a bowling ball", "a tennis ball"), ("a whale", "a dolphin"),
            ("a sofa", "a cushion"), ("a bucket of sand", "a bucket of popcorn"), ("a horse", "a cat"),
            ("a truck", "a motorbike"), ("a pumpkin", "a cherry"))  # fmt: skip
_TASKS = ("boil an egg", "plant a seed", "make a cup of tea", "wash your hands properly", "tie a shoelace",
          "write a thank-you note", "clean a window", "pack a suitcase", "change a light bulb", "make a paper plane",
          "brew coffee in a French press", "prepare for a job interview")  # fmt: skip
_OBJECTS = (
    "a ripe banana",
    "fresh snow",
    "grass in spring",
    "a ripe tomato",
    "coal",
    "the clear daytime sky",
    "a fire engine",
    "milk",
    "a lime",
    "a flamingo",
    "chocolate",
    "an emerald",
    "a school bus",
    "ripe wheat",
)
_INVITES = (
    "a wedding",
    "a weekend hike",
    "a book club meeting",
    "a late-night concert",
    "a board game evening",
    "a charity run",
    "a dinner party",
    "a work retreat",
    "a karaoke night",
    "a museum tour",
)
_NUMBERS = tuple(range(2, 13))

TRAIN_CHAT_TEMPLATES: tuple[ChatTemplate, ...] = (
    ChatTemplate("examples-lines", "Give me {n} examples of {cat}, one per line, and nothing else.",
                 {"n": _N, "cat": _CATEGORIES}),
    ChatTemplate("explain-k", "In {k} short sentences, explain why {ph}.", {"k": ("two", "three"), "ph": _PHENOMENA}),
    ChatTemplate("true-false", "True or false: {claim}? Start your reply with True or False, then explain briefly.",
                 {"claim": _CLAIMS}),
    ChatTemplate("name-it", "Suggest a name for {thing}, then explain your choice in one sentence.",
                 {"thing": _THINGS}),
    ChatTemplate("formal", "Rewrite this in a more formal tone; give only the rewritten text: '{s}'",
                 {"s": _FORMAL}),
    ChatTemplate("times", "What is {a} times {b}? Reply with the number only.", {"a": _NUMBERS, "b": _NUMBERS}),
    ChatTemplate("describe-two", "Describe {place} in exactly two sentences.", {"place": _PLACES}),
    ChatTemplate("title", "Write a title of fewer than eight words for an article about {topic}.",
                 {"topic": _TOPICS}),
    ChatTemplate("spanish", "What does the Spanish word '{es}' mean in English? Then use the English word in a "
                 "sentence.", {"es": _SPANISH}),
    ChatTemplate("heavier", "Which weighs more, {pair}? Give your answer first and the reason after it.",
                 {"pair": tuple(f"{a} or {b}" for a, b in _HEAVIER)}),
    ChatTemplate("steps", "Write {n} short numbered steps to {task}.", {"n": ("three", "four", "5"), "task": _TASKS}),
    ChatTemplate("one-word", "Answer with a single word: what colour is {obj}?", {"obj": _OBJECTS}),
    ChatTemplate("decline", "Write a polite reply of at most two sentences declining an invitation to {ev}.",
                 {"ev": _INVITES}),
    ChatTemplate("pros-cons", "Name one advantage and one disadvantage of {topic}, one sentence each.",
                 {"topic": _TOPICS}),
)  # fmt: skip


def chat_prompts(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` distinct ``(template name, instruction)`` pairs, templates in turn, slots drawn from ``seed``.

    Raises:
        AnLLMError: the templates cannot give ``n`` distinct instructions.
    """
    rng, out, seen = random.Random(seed), [], set()
    for k in range(n * 50):
        if len(out) == n:
            break
        t = TRAIN_CHAT_TEMPLATES[k % len(TRAIN_CHAT_TEMPLATES)]
        text = t.fill(rng)
        if text not in seen:
            seen.add(text)
            out.append((t.name, text))
    if len(out) < n:
        raise AnLLMError(f"chat_data: only {len(out)} distinct instructions from the templates, {n} asked")
    return out


def chat_record(tokenizer, instruction: str, answer: str, *, answer_weight: float, end_weight: float) -> dict:
    """The segment record of one turn: prompt (chat template, weight 1), answer, end of turn."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=False
    )
    end = (tokenizer.eos_token or "") + "\n"
    return {
        "segments": [
            {"text": prompt, "weight": 1.0},
            {"text": answer, "weight": answer_weight},
            {"text": end, "weight": end_weight},
        ]
    }


def build_chat_data(
    lm,
    out: str | Path,
    *,
    n: int = 400,
    seed: int = 5,
    max_new_tokens: int = 160,
    batch_size: int = 8,
    answer_weight: float = 1.0,
    end_weight: float = 4.0,
    progress=None,
) -> dict:
    """Answer ``n`` training instructions with ``lm``'s full cache (greedy) and write the records that ended by EOS.

    Resumable: instructions already in ``out`` (its ``instruction`` fields) are skipped. Returns counts.
    """
    from anllm.generation import GenerationConfig, eos_ids, generate_batch

    tok = lm.tokenizer
    if not getattr(tok, "chat_template", None):
        raise AnLLMError(f"chat_data: {lm.name or 'this model'}'s tokenizer has no chat template")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {json.loads(x)["instruction"] for x in out.read_text(encoding="utf-8").splitlines() if x.strip()}
    todo = [(name, p) for name, p in chat_prompts(n, seed) if p not in done]
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, chat=True)
    stops = eos_ids(lm)
    kept = dropped = 0
    with out.open("a", encoding="utf-8") as f:
        for s in range(0, len(todo), batch_size):
            batch = todo[s : s + batch_size]
            for (name, prompt), ids in zip(batch, generate_batch(lm, [p for _, p in batch], "full", gen)):
                if not ids or ids[-1] not in stops:
                    dropped += 1  # ran into the limit: not an answer the base chose to end
                    continue
                answer = tok.decode(ids[:-1], skip_special_tokens=True).strip()
                rec = chat_record(tok, prompt, answer, answer_weight=answer_weight, end_weight=end_weight)
                f.write(json.dumps({**rec, "template": name, "instruction": prompt}) + "\n")
                kept += 1
            f.flush()
            if progress is not None:
                progress(min(s + batch_size, len(todo)), len(todo))
    return {"asked": len(todo), "kept": kept, "dropped": dropped, "already": len(done)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anllm.train.chat_data", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the JSONL to write (appended to: a rerun continues)")
    p.add_argument("--model", default="smollm2-135m", help="the teacher: the base model (never the adapted one)")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--end-weight", type=float, default=4.0, help="loss weight of the end-of-turn token")
    args = p.parse_args(argv)
    if args.n < 1 or args.max_new_tokens < 1 or args.batch_size < 1 or args.end_weight < 0:
        p.error("--n, --max-new-tokens and --batch-size must be >= 1 and --end-weight >= 0")
    try:
        chat_prompts(args.n, args.seed)  # before the model loads: too many asked is refused at once
        from anllm.models import load_model

        counts = build_chat_data(
            load_model(args.model), args.out, n=args.n, seed=args.seed, max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size, end_weight=args.end_weight,
            progress=lambda d, t: print(f"{d}/{t}", flush=True),
        )  # fmt: skip
    except AnLLMError as e:
        print(f"chat_data: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
