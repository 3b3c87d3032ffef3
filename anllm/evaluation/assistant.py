"""Does the anchor cache still behave like an assistant? (issue 27, item 4; docs/evaluation.md, "Assistant
behaviour").

Held-out chat prompts, each with several instructions (a yes or no first, a list of exactly n items, a word to use, a
sentence or word limit), answered greedily through a cache with the chat template; every instruction has its own
deterministic check on the answer text. Two measures per row, each with a 95 % bootstrap interval:

* ``eos``: the share of answers that end by EOS within ``max_new_tokens`` (the model stopped by itself);
* ``all_pass``: the share of answers that pass every check of their prompt (they addressed every part).

Rows, all on one loaded model (the base with the anchor adapter attached unmerged, as
:func:`anllm.evaluation.acceptance.load_adapted` loads it): ``base:full`` (adapter disabled, the reference),
``full`` and ``anchor`` (the adapted weights with the full cache and the served anchor cache, as the app runs them).
The prompts are generated from :data:`TEMPLATES` x their slot values, in no training corpus and sharing no wording
with :mod:`anllm.memory`'s templates or the app's examples (``tests/test_assistant.py``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from anllm.config import AnLLMError, GenerationConfig
from anllm.evaluation.acceptance import REFERENCE, adapter_disabled
from anllm.evaluation.bootstrap import bootstrap_interval
from anllm.evaluation.recall import normalise
from anllm.models import LoadedModel

ROWS = (REFERENCE, "full", "anchor")  # the reference first; "anchor" is compared with "full"
TARGET = 0.9  # acceptance: anchor >= TARGET x full on both shares
DEFAULT_MAX_NEW_TOKENS = 96  # the app's default "max new tokens"

NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty").split()  # fmt: skip
TENS = {"thirty": 30, "forty": 40, "fifty": 50}
_WORDS = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]*]*\s+|\n+")
_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•+])\s+(\S.*)$")
_YES_NO = ("yes", "no")


# -- reading an answer ----------------------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    """Lower-case words (letters, digits, inner apostrophes) in order."""
    return _WORDS.findall(text.lower().replace("’", "'"))


def sentences(text: str) -> list[str]:
    """Sentences: split after ``.``/``!``/``?`` followed by space and at line breaks; pieces without a word dropped."""
    return [s.strip() for s in _SENTENCE_BREAK.split(text.strip()) if words(s)]


def list_items(text: str) -> list[str]:
    """The text of each numbered (``1.``, ``2)``) or bulleted (``-``, ``*``, ``•``) line."""
    return [m.group(1).strip() for line in text.splitlines() if (m := _LIST_ITEM.match(line))]


def mentions(text: str, word: str) -> bool:
    """``word`` (or its plural with ``s``/``es``) appears as whole words in ``text``, case and punctuation ignored."""
    hay, w = f" {normalise(text)} ", normalise(word)
    return bool(w) and any(f" {form} " in hay for form in (w, w + "s", w + "es"))


def count_word(text: str, word: str) -> int:
    return words(text).count(word.lower())


def first_number(text: str) -> int | None:
    """The first number in ``text``, written in digits or in words up to fifty (``"twelve"``, ``"forty-two"``)."""
    ws = words(text.replace("-", " "))
    for i, w in enumerate(ws):
        if w.isdigit():
            return int(w)
        if w in NUMBER_WORDS:
            return NUMBER_WORDS.index(w)
        if w in TENS:
            unit = ws[i + 1] if i + 1 < len(ws) else ""
            return TENS[w] + (NUMBER_WORDS.index(unit) if unit in NUMBER_WORDS[1:10] else 0)
    return None


# -- the checks: (answer, *args) -> bool ----------------------------------------------------------------------------
def starts_yes_no(text: str, want: str | None = None) -> bool:
    """The first word is yes or no (``want``: that one)."""
    ws = words(text)
    return bool(ws) and ws[0] in _YES_NO and (want is None or ws[0] == want)


def words_after_first(text: str, n: int) -> bool:
    """At least ``n`` words follow the first (a reason after the yes or no)."""
    return len(words(text)) - 1 >= n


def mentions_any(text: str, options: tuple[str, ...], k: int = 1) -> bool:
    """At least ``k`` different ones of ``options`` are mentioned."""
    return sum(mentions(text, o) for o in options) >= k


def at_most_sentences(text: str, n: int) -> bool:
    return 1 <= len(sentences(text)) <= n


def at_most_words(text: str, n: int) -> bool:
    return 1 <= len(words(text)) <= n


def n_list_items(text: str, n: int) -> bool:
    return len(list_items(text)) == n


def items_under_words(text: str, n: int) -> bool:
    """Every list item has fewer than ``n`` words (and there is at least one)."""
    items = list_items(text)
    return bool(items) and all(len(words(x)) < n for x in items)


def line_is(text: str, word: str) -> bool:
    """Some line holds ``word`` alone (case, markup and punctuation ignored)."""
    return any(normalise(line) == word.lower() for line in text.splitlines())


def single_line(text: str) -> bool:
    """Exactly one non-empty line."""
    return len([ln for ln in text.splitlines() if ln.strip()]) == 1


def comma_items(text: str, n: int) -> bool:
    """The first non-empty line holds ``n`` items separated by commas (or ``and``)."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    return len([p for p in re.split(r",|;|\band\b", line.strip().rstrip(".")) if words(p)]) == n


def number_first(text: str, want: int) -> bool:
    """The first number in the answer is ``want``."""
    return first_number(text) == want


def word_at_least(text: str, word: str, k: int) -> bool:
    return count_word(text, word) >= k


def words_in_order(text: str, seq: tuple[str, ...]) -> bool:
    """Every word of ``seq`` appears, in that order."""
    ws, i = words(text), 0
    for w in ws:
        if i < len(seq) and w == seq[i]:
            i += 1
    return i == len(seq)


CHECKS: dict[str, Callable[..., bool]] = {f.__name__: f for f in (
    starts_yes_no, words_after_first, mentions, mentions_any, at_most_sentences, at_most_words, n_list_items,
    items_under_words, line_is, single_line, comma_items, number_first, word_at_least, words_in_order,
)}  # fmt: skip


@dataclass(frozen=True)
class Check:
    """One instruction of a prompt and the test of it on the answer: ``CHECKS[fn](answer, *args)``."""

    what: str  # the instruction in words, e.g. "answers yes or no first"
    fn: str  # a key of CHECKS
    args: tuple = ()

    def __post_init__(self) -> None:
        if self.fn not in CHECKS:
            raise AnLLMError(f"unknown check {self.fn!r}; choose from {', '.join(CHECKS)}")

    def passes(self, answer: str) -> bool:
        return bool(CHECKS[self.fn](answer, *self.args))


@dataclass(frozen=True)
class AssistantPrompt:
    id: str  # "<template>-<slot index>"
    template: str
    prompt: str
    checks: tuple[Check, ...]

    def score(self, answer: str) -> list[dict]:
        return [{"check": c.what, "pass": c.passes(answer)} for c in self.checks]


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with ``{slots}``, its slot values (one dict per prompt) and the checks each filling gets."""

    name: str
    text: str
    slots: tuple[dict, ...]
    checks: Callable[[dict], tuple[Check, ...]] = field(compare=False)

    def fill(self, i: int) -> AssistantPrompt:
        s = self.slots[i]
        return AssistantPrompt(f"{self.name}-{i}", self.name, self.text.format(**s), self.checks(s))


def _c(what: str, fn: str, *args) -> Check:
    return Check(what, fn, args)


GROUPS = {  # "Name two {group}": the members that count
    "primary colours": ("red", "blue", "yellow"),
    "seasons of the year": ("spring", "summer", "autumn", "fall", "winter"),
    "planets of the solar system": ("mercury", "venus", "earth", "mars", "jupiter", "saturn", "uranus", "neptune"),
    "farm animals": ("cow", "pig", "sheep", "horse", "goat", "chicken", "hen", "duck", "donkey", "turkey"),
    "musical instruments": ("piano", "guitar", "violin", "drum", "flute", "trumpet", "cello", "harp", "saxophone",
                            "clarinet", "ukulele", "banjo"),
    "fruits": ("apple", "banana", "orange", "mango", "pear", "grape", "strawberry", "strawberries", "cherry",
               "cherries", "peach", "pineapple", "lemon", "kiwi", "watermelon", "plum"),
}  # fmt: skip
FAVOURITE = ("favourite", "favorite", "prefer", "best", "love")  # words that say which one is the favourite
CONTINENTS = ("Europe", "Asia", "Africa", "North America", "South America", "Oceania", "Australia", "Antarctica")

# slot values, one tuple per prompt
YES_NO = (("Is the Sun a star?", "yes"), ("Can penguins fly?", "no"), ("Is ice frozen water?", "yes"),
          ("Do spiders have six legs?", "no"), ("Is the Pacific an ocean?", "yes"),
          ("Is a whale a fish?", "no"))  # fmt: skip
SUMS = ((7, 5), (9, 4), (12, 6), (15, 8), (3, 11), (20, 13))
LISTS = ((3, "vegetables"), (4, "kitchen utensils"), (3, "winter sports"), (5, "countries in Europe"),
         (4, "kinds of tree"), (3, "school subjects"))  # fmt: skip
WORD_PAIRS = (("river", "bread"), ("mountain", "letter"), ("garden", "clock"), ("winter", "bicycle"),
              ("library", "rain"), ("ocean", "pencil"))  # fmt: skip
CAPITALS = (("France", "Paris"), ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Spain", "Madrid"),
            ("Kenya", "Nairobi"))  # fmt: skip
OPPOSITES = (("hot", "cold"), ("early", "late"), ("fast", "slow"), ("empty", "full"), ("wet", "dry"), ("loud", "quiet"))
BRING = ((3, "picnic"), (3, "job interview"), (4, "camping trip"), (3, "day at the beach"), (4, "hiking trip"),
         (3, "birthday party"))  # fmt: skip
HABITATS = ((3, "sea"), (4, "desert"), (3, "jungle"), (3, "Arctic"), (4, "forest"), (3, "savanna"))
TOOLS = ((12, "hammer"), (15, "thermometer"), (12, "broom"), (15, "microscope"), (12, "ladle"), (15, "calculator"))
COUNTS = tuple((NUMBER_WORDS[a], NUMBER_WORDS[a + 4]) for a in (1, 3, 2, 4, 5, 6))
FRENCH = (
    ("cat", "chat"),
    ("dog", "chien"),
    ("house", "maison"),
    ("water", "eau"),
    ("bread", "pain"),
    ("book", "livre"),
)


def _slots(keys: str, rows: tuple) -> tuple[dict, ...]:
    return tuple(dict(zip(keys.split(), row)) for row in rows)


def _counted(a: str, b: str) -> tuple[str, ...]:
    return tuple(NUMBER_WORDS[NUMBER_WORDS.index(a) : NUMBER_WORDS.index(b) + 1])


_T = PromptTemplate
TEMPLATES: tuple[PromptTemplate, ...] = (
    _T("favourite", "Name two {group} and say which one is your favourite, all in one sentence.",
       _slots("group", tuple((g,) for g in GROUPS)),
       lambda s: (_c("names two of them", "mentions_any", GROUPS[s["group"]], 2),
                  _c("says which is the favourite", "mentions_any", FAVOURITE),
                  _c("in one sentence", "at_most_sentences", 1))),
    _T("yes-no", "{q} Answer yes or no first, then give one reason in a single short sentence.", _slots("q a", YES_NO),
       lambda s: (_c("answers yes or no first", "starts_yes_no"),
                  _c(f"the answer is {s['a']}", "starts_yes_no", s["a"]),
                  _c("gives a reason", "words_after_first", 4),
                  _c("at most two sentences", "at_most_sentences", 2))),
    _T("sum-parity",
       "Add {a} and {b}. Reply with the result first, then say in one more sentence whether it is even or odd.",
       _slots("a b", SUMS),
       lambda s: (_c(f"the result {s['a'] + s['b']} first", "number_first", s["a"] + s["b"]),
                  _c("says even or odd", "mentions", "odd" if (s["a"] + s["b"]) % 2 else "even"),
                  _c("at most two sentences", "at_most_sentences", 2))),
    _T("list-done", "List exactly {n} {things} as a numbered list, then write the word DONE on its own line.",
       _slots("n things", LISTS),
       lambda s: (_c(f"exactly {s['n']} list items", "n_list_items", s["n"]),
                  _c("DONE on its own line", "line_is", "done"))),
    _T("two-words", "Write two sentences: the first must use the word '{w1}' and the second the word '{w2}'.",
       _slots("w1 w2", WORD_PAIRS),
       lambda s: (_c(f"uses '{s['w1']}'", "mentions", s["w1"]),
                  _c(f"uses '{s['w2']}'", "mentions", s["w2"]),
                  _c("at most two sentences", "at_most_sentences", 2))),
    _T("capital",
       "What is the capital of {country}? Answer in a single sentence that also names the continent it is on.",
       _slots("country capital", CAPITALS),
       lambda s: (_c(f"names {s['capital']}", "mentions", s["capital"]),
                  _c("names a continent", "mentions_any", CONTINENTS),
                  _c("in one sentence", "at_most_sentences", 1))),
    _T("opposite", "Give the opposite of '{word}' in one word, then use that opposite in a short sentence.",
       _slots("word opp", OPPOSITES),
       lambda s: (_c(f"gives '{s['opp']}'", "mentions", s["opp"]),
                  _c("uses it in a sentence as well", "word_at_least", s["opp"], 2),
                  _c("short: at most 30 words", "at_most_words", 30))),
    _T("bullets", "Answer in exactly {n} bullet points, each under ten words: what should someone bring to a {event}?",
       _slots("n event", BRING),
       lambda s: (_c(f"exactly {s['n']} bullet points", "n_list_items", s["n"]),
                  _c("each under ten words", "items_under_words", 10))),
    _T("comma-line", "Name {n} animals that live in the {habitat}, as one comma-separated line with no other text.",
       _slots("n habitat", HABITATS),
       lambda s: (_c(f"{s['n']} comma-separated names", "comma_items", s["n"]),
                  _c("one line, no other text", "single_line"))),
    _T("word-limit", "In at most {k} words, say what a {tool} is used for, and use the word '{tool}' in your answer.",
       _slots("k tool", TOOLS),
       lambda s: (_c(f"at most {s['k']} words", "at_most_words", s["k"]),
                  _c(f"uses '{s['tool']}'", "mentions", s["tool"]))),
    _T("count", "Count from {a} to {b} in words, separated by commas, and then say which of them is the largest.",
       _slots("a b", COUNTS),
       lambda s: (_c(f"counts {s['a']} to {s['b']} in words", "words_in_order", _counted(s["a"], s["b"])),
                  _c(f"names {s['b']} as the largest", "word_at_least", s["b"], 2))),
    _T("french",
       "How do you say '{en}' in French? Give the French word first, then one English sentence that uses '{en}'.",
       _slots("en fr", FRENCH),
       lambda s: (_c(f"gives '{s['fr']}'", "mentions", s["fr"]),
                  _c(f"uses '{s['en']}' in a sentence", "mentions", s["en"]),
                  _c("at most two sentences", "at_most_sentences", 2))),
)  # fmt: skip


def assistant_prompts(n: int | None = None) -> list[AssistantPrompt]:
    """The first ``n`` prompts (all when None), slot-major: every template's first filling, then every second, ...,
    so a short run covers every template."""
    depth = max(len(t.slots) for t in TEMPLATES)
    out = [t.fill(i) for i in range(depth) for t in TEMPLATES if i < len(t.slots)]
    return out if n is None else out[:n]


N_PROMPTS = len(assistant_prompts())


# -- the run ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AssistantConfig:
    """What one run covers: the first ``n`` prompts through every row."""

    n: int = N_PROMPTS
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    reference: bool = True  # the base model's full cache, adapter disabled
    batch_size: int = 1  # prompts decoded together (left padding); 1 = one at a time, as the app decodes
    n_boot: int = 2000

    def __post_init__(self) -> None:
        if not 1 <= self.n <= N_PROMPTS:
            raise AnLLMError(f"assistant: n must be between 1 and {N_PROMPTS} (the prompts there are), got {self.n}")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.n_boot < 1:
            raise AnLLMError("assistant: max_new_tokens, batch_size and n_boot must be >= 1")

    @property
    def rows(self) -> tuple[str, ...]:
        return ROWS if self.reference else ROWS[1:]


def score_answer(prompt: AssistantPrompt, row: str, new_ids: list[int], text: str, stops: set[int]) -> dict:
    """One record: the answer's ids as ``generate_batch`` returns them (a final EOS kept) and its checks.

    ``eos`` is True when the answer ended with one of ``stops`` (so within the token limit); ``new_tokens`` counts the
    answer without that EOS.
    """
    eos = bool(new_ids) and new_ids[-1] in stops
    checks = prompt.score(text)
    return {
        "id": prompt.id,
        "template": prompt.template,
        "row": row,
        "eos": eos,
        "all_pass": all(c["pass"] for c in checks),
        "new_tokens": len(new_ids) - eos,
        "checks": checks,
        "prompt": prompt.prompt,
        "output": text,
    }


def run_assistant(
    lm: LoadedModel, cfg: AssistantConfig, *, progress: Callable[[int, int], None] | None = None
) -> list[dict]:
    """Every prompt through every row, greedy, chat template applied; one :func:`score_answer` record each.

    Raises:
        AnLLMError: the reference row asked of a model without a switchable (unmerged) adapter.
    """
    from anllm.generation import eos_ids, generate_batch

    if cfg.reference and getattr(lm.model, "disable_adapter", None) is None:  # refused before anything runs
        raise AnLLMError(f"{lm.name}: the base reference row needs an unmerged adapter (load with load_adapted)")
    prompts = assistant_prompts(cfg.n)
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=0.0, chat=True)
    stops, records, total = eos_ids(lm), [], len(prompts) * len(cfg.rows)
    for row in cfg.rows:
        switch = adapter_disabled(lm) if row == REFERENCE else contextlib.nullcontext()
        with switch:
            for s in range(0, len(prompts), cfg.batch_size):
                batch = prompts[s : s + cfg.batch_size]
                outs = generate_batch(lm, [p.prompt for p in batch], "full" if row == REFERENCE else row, gen)
                for p, ids in zip(batch, outs):
                    text = lm.tokenizer.decode(ids, skip_special_tokens=True).strip()
                    records.append(score_answer(p, row, ids, text, stops))
                if progress is not None:
                    progress(len(records), total)
    return records


# -- the summary -----------------------------------------------------------------------------------------------------
def summarise(records: list[dict], *, n_boot: int = 2000) -> dict:
    """Per row: the EOS share, the all-checks share and the mean share of each answer's checks passed (``parts``),
    each with a 95 % bootstrap interval over prompts, the pooled share of single checks passed and the mean answer
    length; per template and row the two shares; and the acceptance verdict (anchor vs full, on the two shares).
    """
    rows: dict[str, list[dict]] = {}
    for r in records:
        rows.setdefault(r["row"], []).append(r)
    table = []
    for row, rs in rows.items():
        checks = [c["pass"] for r in rs for c in r["checks"]]
        table.append({
            "row": row,
            "n": len(rs),
            "eos": bootstrap_interval([float(r["eos"]) for r in rs], n_boot=n_boot).to_dict(),
            "all_pass": bootstrap_interval([float(r["all_pass"]) for r in rs], n_boot=n_boot).to_dict(),
            "parts": bootstrap_interval([_parts(r) for r in rs], n_boot=n_boot).to_dict(),
            "checks_passed": sum(checks) / len(checks) if checks else 0.0,
            "mean_new_tokens": sum(r["new_tokens"] for r in rs) / len(rs),
        })  # fmt: skip
    by_template: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        by_template.setdefault((r["template"], r["row"]), []).append(r)
    templates = [
        {"template": t, "row": row, "n": len(rs), "eos": _share(rs, "eos"), "all_pass": _share(rs, "all_pass")}
        for (t, row), rs in by_template.items()
    ]
    return {"rows": table, "by_template": templates, "acceptance": acceptance(table, paired(records, n_boot=n_boot))}


def _parts(record: dict) -> float:
    """The share of one answer's checks that pass."""
    return sum(c["pass"] for c in record["checks"]) / len(record["checks"]) if record["checks"] else 0.0


def _share(rs: list[dict], key: str) -> float:
    return sum(bool(r[key]) for r in rs) / len(rs)


def paired(records: list[dict], *, n_boot: int = 2000) -> dict[str, dict]:
    """Anchor minus full per prompt (the same prompts), for each share: the mean difference and its 95 % bootstrap
    interval over prompts (``{}`` without both rows)."""
    by = {(r["row"], r["id"]): r for r in records}
    ids = [r["id"] for r in records if r["row"] == "full" and ("anchor", r["id"]) in by]
    if not ids:
        return {}
    return {
        key: bootstrap_interval(
            [float(by["anchor", i][key]) - float(by["full", i][key]) for i in ids], n_boot=n_boot
        ).to_dict()
        for key in ("eos", "all_pass")
    }


def acceptance(table: list[dict], differences: dict | None = None, target: float = TARGET) -> dict | None:
    """``anchor >= target x full`` on each share, up to float rounding (None without both rows); with
    ``differences`` (:func:`paired`), each share's anchor - full interval as well."""
    by = {r["row"]: r for r in table}
    if "anchor" not in by or "full" not in by:
        return None
    out = {"target": target}
    for key in ("eos", "all_pass"):
        a, f = by["anchor"][key]["mean"], by["full"][key]["mean"]
        out[key] = {"anchor": a, "full": f, "ratio": a / f if f else None, "holds": a >= target * f - 1e-9}
        if differences and key in differences:
            out[key]["anchor_minus_full"] = differences[key]
    out["holds"] = out["eos"]["holds"] and out["all_pass"]["holds"]
    return out
