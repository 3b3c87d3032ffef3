"""Memory items: a fact stated once, filler text, then a question whose answer is the fact (docs/evaluation.md).

The same machinery builds the recall benchmark (``anllm eval recall``) and the adapter's memory training data, from
two disjoint sets of templates: :data:`EVAL_TEMPLATES` are never trained on (``tests/test_recall.py`` checks that no
statement or question wording is shared). Everything is drawn from a seeded ``random.Random``, so a seed fixes the
items; nothing is downloaded.

An item is plain text: ``context`` (facts and filler, or chat turns), ``question`` and ``answer``. How it is
turned into tokens (chat template or not) is the caller's choice (:func:`anllm.evaluation.recall.render`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from anllm.config import AnLLMError

# -- value pools (shared: values are random draws, the wording of templates is what is held out) ------------------
FIRST_NAMES = (
    "Alice", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ingrid", "Jonas", "Kavya", "Liam",
    "Marta", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Samir", "Tomas", "Ursula", "Victor", "Wendy", "Yusuf",
    "Zoe", "Amara", "Boris", "Clara", "Diego", "Esther", "Felix", "Hana", "Ivan", "Julia", "Kenji", "Lena",
)  # fmt: skip
SURNAMES = (
    "Abbott", "Baker", "Castillo", "Dubois", "Eriksen", "Fischer", "Garcia", "Hughes", "Ivanova", "Jensen",
    "Kowalski", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrov", "Quinn", "Rossi", "Schmidt", "Tanaka",
)  # fmt: skip
CITIES = (
    "Lisbon", "Oslo", "Krakow", "Nairobi", "Montreal", "Osaka", "Valencia", "Tallinn", "Lyon", "Porto", "Dublin",
    "Bergen", "Seville", "Hamburg", "Quito", "Adelaide", "Bologna", "Ghent", "Tbilisi", "Zagreb", "Lima", "Kyoto",
)  # fmt: skip
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey", "brown", "pink", "silver")
ANIMALS = ("fox", "owl", "otter", "badger", "heron", "lynx", "beaver", "falcon", "tortoise", "hedgehog", "raven")
OBJECTS = ("lamp", "kettle", "compass", "violin", "ladder", "umbrella", "telescope", "clock", "anchor", "key")
FOODS = ("lentil soup", "apple pie", "rice pudding", "fish stew", "onion tart", "plum cake", "bean salad")
MATERIALS = ("oak", "copper", "glass", "marble", "linen", "bronze", "cedar", "granite", "wool", "clay")
JOBS = ("baker", "pilot", "nurse", "carpenter", "librarian", "chemist", "gardener", "plumber", "tailor", "surveyor")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")  # fmt: skip
PLACES = ("attic", "cellar", "garage", "barn", "library", "kitchen", "workshop", "greenhouse", "boathouse", "shed")


def _values(rng: random.Random) -> dict[str, str]:
    """One random value per slot name; templates use the slots they need."""
    return {
        "name": rng.choice(FIRST_NAMES),
        "name2": rng.choice(FIRST_NAMES),
        "surname": rng.choice(SURNAMES),
        "city": rng.choice(CITIES),
        "colour": rng.choice(COLOURS),
        "animal": rng.choice(ANIMALS),
        "object": rng.choice(OBJECTS),
        "food": rng.choice(FOODS),
        "material": rng.choice(MATERIALS),
        "job": rng.choice(JOBS),
        "day": rng.choice(DAYS),
        "month": rng.choice(MONTHS),
        "place": rng.choice(PLACES),
        "num4": str(rng.randint(1000, 9999)),
        "num3": str(rng.randint(100, 999)),
        "num2": str(rng.randint(12, 97)),
        "year": str(rng.randint(1820, 1990)),
        "room": f"{rng.randint(1, 9)}{rng.randint(0, 4)}{rng.randint(1, 9)}",
    }


@dataclass(frozen=True)
class Template:
    """A fact sentence and a question about it; ``answer`` names the slot that answers the question."""

    kind: str  # number, name, place, attribute, time
    statement: str  # e.g. "The code for the {colour} door is {num4}."
    question: str  # e.g. "What is the code for the {colour} door?"
    answer: str  # slot name, e.g. "num4"

    def fill(self, values: dict[str, str]) -> tuple[str, str, str]:
        """(statement, question, answer) with ``values`` substituted."""
        return self.statement.format(**values), self.question.format(**values), values[self.answer]


def _t(kind: str, statement: str, question: str, answer: str) -> Template:
    return Template(kind, statement, question, answer)


# Held out: the benchmark's templates. Never used for training.
EVAL_TEMPLATES: tuple[Template, ...] = (
    _t("number", "The code for the {colour} door is {num4}.", "What is the code for the {colour} door?", "num4"),
    _t("number", "{name} keeps exactly {num3} stamps in a tin box.", "How many stamps does {name} keep?", "num3"),
    _t("number", "The lighthouse on the cape was built in {year}.", "In which year was the lighthouse built?", "year"),
    _t("number", "Our hotel room number is {room}.", "What is our hotel room number?", "room"),
    _t("name", "The {animal} in the story was called {name}.", "What was the {animal} in the story called?", "name"),
    _t(
        "name", "The new harbour master is named {name} {surname}.", "What is the harbour master's surname?", "surname"
    ),  # fmt: skip
    _t("place", "My cousin {name} moved to {city} last spring.", "Which city did {name} move to?", "city"),
    _t("place", "The old map was hidden in the {place}.", "Where was the old map hidden?", "place"),
    _t(
        "attribute", "The bicycle that {name} rides is painted {colour}.", "What colour is {name}'s bicycle?", "colour"
    ),  # fmt: skip
    _t(
        "attribute",
        "The statue in the square is made of {material}.",
        "What is the statue in the square made of?",
        "material",
    ),  # fmt: skip
    _t("attribute", "{name} works as a {job} at the station.", "What does {name} work as?", "job"),
    _t("time", "The choir always rehearses on {day}.", "On which day does the choir rehearse?", "day"),
)

# Used to train the default adapter. Wording disjoint from EVAL_TEMPLATES.
TRAIN_TEMPLATES: tuple[Template, ...] = (
    _t(
        "number",
        "The safe in the {place} opens with the combination {num4}.",
        "Which combination opens the safe in the {place}?",
        "num4",
    ),  # fmt: skip
    _t("number", "Flight {num3} leaves from gate {num2}.", "From which gate does flight {num3} leave?", "num2"),
    _t("number", "{name} was born in {year}.", "In what year was {name} born?", "year"),
    _t("number", "The bakery sold {num3} loaves on {day}.", "How many loaves did the bakery sell on {day}?", "num3"),
    _t("number", "Locker {num2} belongs to {name}.", "Which locker belongs to {name}?", "num2"),
    _t(
        "number",
        "The password for the {colour} laptop is {num4}.",
        "What is the password for the {colour} laptop?",
        "num4",
    ),  # fmt: skip
    _t(
        "number", "The bridge over the river is {num3} metres long.", "How long is the bridge over the river?", "num3"
    ),  # fmt: skip
    _t("number", "{name} lives at number {num2} on {surname} Street.", "At what number does {name} live?", "num2"),
    _t(
        "number",
        "The ticket for seat {num2} cost {num3} crowns.",
        "How much did the ticket for seat {num2} cost?",
        "num3",
    ),  # fmt: skip
    _t("number", "Remember this number: {num4}.", "Which number were you asked to remember?", "num4"),
    _t("number", "The museum opened its doors in {year}.", "When did the museum open?", "year"),
    _t(
        "number",
        "Parcel {num4} is addressed to {name} {surname}.",
        "Which parcel is addressed to {name} {surname}?",
        "num4",
    ),  # fmt: skip
    _t("name", "The captain of the ship was {name} {surname}.", "Who was the captain of the ship?", "surname"),
    _t(
        "name", "A {job} named {name} found the lost {object}.", "What was the name of the {job} who found it?", "name"
    ),  # fmt: skip
    _t("name", "{name2}'s best friend is {name}.", "Who is {name2}'s best friend?", "name"),
    _t("name", "The {colour} boat belongs to {name}.", "Whom does the {colour} boat belong to?", "name"),
    _t("name", "Our {animal} is named {name}.", "What is our {animal}'s name?", "name"),
    _t("name", "The letter was signed by {name} {surname}.", "Who signed the letter?", "surname"),
    _t("name", "The prize went to a student called {name}.", "Which student won the prize?", "name"),
    _t("place", "The conference will take place in {city}.", "Where will the conference take place?", "city"),
    _t("place", "{name} grew up in {city}.", "Where did {name} grow up?", "city"),
    _t("place", "The spare keys are kept in the {place}.", "Where are the spare keys kept?", "place"),
    _t("place", "We met {name} for the first time in {city}.", "In which city did we first meet {name}?", "city"),
    _t("place", "The {object} was left in the {place}.", "Where was the {object} left?", "place"),
    _t("place", "The train to {city} departs at dawn.", "Where does the dawn train go?", "city"),
    _t("place", "{name} hid the treasure in the {place}.", "Where did {name} hide the treasure?", "place"),
    _t("attribute", "{name}'s favourite dish is {food}.", "What is {name}'s favourite dish?", "food"),
    _t(
        "attribute", "The front gate of the farm is {colour}.", "What colour is the front gate of the farm?", "colour"
    ),  # fmt: skip
    _t(
        "attribute",
        "The table in the hall is made of {material}.",
        "What is the table in the hall made of?",
        "material",
    ),  # fmt: skip
    _t("attribute", "{name} {surname} is a {job}.", "What is {name} {surname}'s job?", "job"),
    _t("attribute", "The mascot of the team is a {animal}.", "What animal is the team's mascot?", "animal"),
    _t(
        "attribute",
        "In the shop window stood a {colour} {object}.",
        "What colour was the {object} in the window?",
        "colour",
    ),  # fmt: skip
    _t("attribute", "For the party, {name} baked {food}.", "What did {name} bake for the party?", "food"),
    _t("attribute", "The old chest is lined with {material}.", "What is the old chest lined with?", "material"),
    _t(
        "attribute", "The inventor's first machine was a {object}.", "What was the inventor's first machine?", "object"
    ),  # fmt: skip
    _t("attribute", "{name} wore a {colour} scarf to the concert.", "What colour was {name}'s scarf?", "colour"),
    _t("time", "The market is held every {day}.", "On what day is the market held?", "day"),
    _t("time", "{name}'s birthday is in {month}.", "In which month is {name}'s birthday?", "month"),
    _t("time", "The festival takes place each {month}.", "When does the festival take place?", "month"),
    _t("time", "The library closes early on {day}.", "Which day does the library close early?", "day"),
    _t("time", "The exam has been moved to {day}.", "To which day has the exam been moved?", "day"),
)

CHAT_OPENERS_EVAL = ("Please keep this in mind: ", "A quick note before we start: ")
CHAT_OPENERS_TRAIN = ("Remember this for later: ", "Note this down: ", "Just so you know, ", "Keep in mind that ",
                      "For the record, ", "Here is something important: ")  # fmt: skip
FAMILIES = ("single", "multi", "chat", "fewshot", "fewshot-recall")

# -- the acceptance harness's held-out forms (anllm/evaluation/acceptance.py): never trained on either -------------
PHRASES = (
    "under the loose floorboard", "behind the grandfather clock", "inside the blue teapot", "beneath the stone bench",
    "on top of the wardrobe", "in the pocket of the grey coat", "between two dictionaries", "at the bottom of the well",
)  # fmt: skip
TITLES = ("The Quiet Harbour", "Winter Orchard", "A Map of Salt", "The Glass Meridian", "Northern Lanterns",
          "The Copper Tide", "Seven Paper Boats", "The Last Ferryman")  # fmt: skip
STREETS = ("Alder Lane", "Mill Road", "Quarry Street", "Rowan Avenue", "Harbour Walk", "Chapel Row", "Ferry Lane")
INSTRUMENTS = ("cello", "oboe", "harp", "trumpet", "accordion", "clarinet", "banjo", "viola")
UNITS = ("kilograms", "litres", "metres", "kilometres")


def _form_values(rng: random.Random) -> dict[str, str]:
    """The extra slots of :data:`FORM_TEMPLATES` (dates, decimals, times, codes, phrases, titles)."""
    return {
        "date": f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1890, 2020)}",
        "decimal": f"{rng.randint(1, 40)}.{rng.randint(10, 95)}",
        "clock": f"{rng.randint(5, 11)}:{rng.choice(('05', '15', '20', '35', '40', '50'))}",
        "code": f"{rng.choice('BDFHKMRTVX')}{rng.choice('ACEGLNPSWZ')}-{rng.randint(1000, 9999)}",
        "phrase": rng.choice(PHRASES),
        "city2": rng.choice(CITIES),
        "title": rng.choice(TITLES),
        "street": rng.choice(STREETS),
        "instrument": rng.choice(INSTRUMENTS),
        "amount": f"{rng.randint(13, 480)} {rng.choice(UNITS)}",
        "person": f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}",
    }


@dataclass(frozen=True)
class FormTemplate:
    """A statement with one or several facts; ``asks`` = (question, answer slot) pairs, paraphrases included, of
    which one is drawn per item. Answers take many forms: names, dates, decimals, times, codes, phrases, titles."""

    kind: str
    statement: str
    asks: tuple[tuple[str, str], ...]
    pool: str = "form"  # whose extra slots fill it: "form" (the acceptance harness's values) or "train"

    def __post_init__(self) -> None:
        if not self.asks:
            raise AnLLMError(f"FormTemplate {self.statement!r} asks nothing")
        if self.pool not in ("form", "train"):
            raise AnLLMError(f"FormTemplate {self.statement!r}: pool must be 'form' or 'train', got {self.pool!r}")

    @property
    def questions(self) -> tuple[str, ...]:
        return tuple(q for q, _ in self.asks)

    def fill(self, values: dict[str, str], pick: int = 0) -> tuple[str, str, str]:
        """(statement, question ``pick``, its answer) with ``values`` substituted."""
        question, slot = self.asks[pick]
        return self.statement.format(**values), question.format(**values), values[slot]


def _f(kind: str, statement: str, *asks: tuple[str, str]) -> FormTemplate:
    return FormTemplate(kind, statement, tuple(asks))


# Held out from every training template (tests/test_recall.py): the acceptance harness's items.
FORM_TEMPLATES: tuple[FormTemplate, ...] = (
    _f("date", "The treaty between the two valleys was signed on {date}.",
       ("On what date was the treaty between the valleys signed?", "date"),
       ("When exactly did the two valleys sign their treaty?", "date")),
    _f("name", "The night watchman at the observatory is {person}.",
       ("Who is the observatory's night watchman?", "person"),
       ("Name the person who keeps watch at the observatory at night.", "person")),
    _f("decimal", "The recipe calls for {decimal} grams of saffron.",
       ("How many grams of saffron does the recipe need?", "decimal"),
       ("What amount of saffron, in grams, goes into the recipe?", "decimal")),
    _f("time", "The ferry to {city} casts off at {clock} sharp.",
       ("At what time does the ferry to {city} cast off?", "clock"),
       ("When does the {city} ferry leave the pier?", "clock")),
    _f("code", "The archive box for the {colour} folders is labelled {code}.",
       ("What label is on the archive box for the {colour} folders?", "code"),
       ("Which label marks the box that holds the {colour} folders?", "code")),
    _f("phrase", "Grandmother kept the spare ring {phrase}.",
       ("Where did grandmother keep the spare ring?", "phrase"),
       ("In what spot was the spare ring kept?", "phrase")),
    _f("title", "The novel that {name} is writing is called {title}.",
       ("What is the title of the novel {name} is writing?", "title"),
       ("What did {name} call the novel in progress?", "title")),
    _f("multi", "{name} plays the {instrument} and lives on {street}.",
       ("Which instrument does {name} play?", "instrument"),
       ("On which street does {name} live?", "street"),
       ("What is the name of the street where {name} lives?", "street")),
    _f("multi", "The expedition left {city} on {date} carrying {amount} of rope.",
       ("From which city did the expedition set out?", "city"),
       ("On what date did the expedition leave?", "date"),
       ("How much rope did the expedition carry?", "amount")),
    _f("multi", "Doctor {surname} sees patients in room {room} every {day}.",
       ("In which room does Doctor {surname} see patients?", "room"),
       ("On which weekday does Doctor {surname} see patients?", "day")),
    _f("number", "The orchard produced {num4} crates of pears this autumn.",
       ("How many crates of pears did the orchard produce?", "num4"),
       ("What was this autumn's pear harvest, in crates?", "num4")),
    _f("place", "The choir's summer concert moved from {city} to {city2}.",
       ("To which city was the summer concert moved?", "city2"),
       ("Where will the choir's summer concert now be held?", "city2")),
    _f("attribute", "The lantern above the tavern door is made of {material} and painted {colour}.",
       ("What material is the tavern's lantern made of?", "material"),
       ("What colour is the lantern above the tavern door?", "colour")),
    _f("name", "The {animal} that lives in the bell tower answers to {name}.",
       ("What name does the {animal} in the bell tower answer to?", "name"),
       ("How is the bell tower's {animal} called?", "name")),
)  # fmt: skip
ACCEPTANCE_OPENERS = ("Before we go on, one detail to hold on to: ", "Here is a fact I will ask about later: ")

# -- the second training set (issue 27): answers of many forms, paraphrased questions, several facts per statement --
# Own value pools (none of the acceptance harness's phrases, titles, streets or instruments) and own wording: no
# statement or question shares five words in a row with EVAL_TEMPLATES or FORM_TEMPLATES (tests/test_recall.py).
TRAIN_SPOTS = (
    "under the doormat", "behind the bookcase", "inside the flour jar", "in the glovebox of the van",
    "beneath the kitchen sink", "on the highest shelf of the pantry", "inside an old boot", "taped under the desk",
    "in the hollow oak by the gate", "behind the loose brick in the chimney",
)  # fmt: skip
TRAIN_TITLES = ("Letters from Ashford", "The Salt Road", "A Harvest of Clocks", "Midnight at the Foundry",
                "The Orchard Keeper", "Tin Soldiers Marching", "Rivers Without Names", "The Lantern Maker")  # fmt: skip
TRAIN_CODENAMES = ("Blue Heron", "Silent Otter", "Iron Meadow", "Paper Moon", "Red Kestrel", "Glass Falcon",
                   "Quiet Thunder", "Amber Fox")  # fmt: skip
TRAIN_SHIPS = ("Morning Star", "Sea Lark", "Northern Belle", "Grey Gull", "Windward", "Saint Brendan", "Pelican")
TRAIN_WORDS = ("marigold", "thunderbird", "buttercup", "peppermint", "snowdrop", "kingfisher", "juniper", "tangerine",
               "bluebell", "sandpiper")  # fmt: skip
TRAIN_COMPANIES = ("Larkspur Textiles", "Hollow Pine Works", "Bright Anvil Foods", "Seven Rivers Freight",
                   "Kestrel Optics", "Millbank Printing")  # fmt: skip
TRAIN_ROADS = ("Birch Crescent", "Tanner's Way", "Old Post Road", "Willow Close", "Station Hill", "Market Gate")
TRAIN_SPORTS = ("chess", "rowing", "fencing", "archery", "badminton", "curling", "judo", "table tennis")
TRAIN_UNITS = ("miles", "feet", "yards", "furlongs")  # lengths
_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"


def _train_form_values(rng: random.Random) -> dict[str, str]:
    """The extra slots of :data:`TRAIN_FORM_TEMPLATES` (dates in three formats, prices, serials, versions, ...)."""
    y, m, d = rng.randint(1900, 2030), rng.randint(1, 12), rng.randint(1, 28)
    return {
        "isodate": f"{y}-{m:02d}-{d:02d}",
        "usdate": f"{MONTHS[m - 1]} {d}, {y}",
        "daymonth": f"{d} {MONTHS[m - 1]}",
        "price": f"{rng.randint(2, 950)}.{rng.choice(('00', '25', '50', '75', '99'))}",
        "percent": f"{rng.randint(2, 98)} percent",
        "serial": "".join(rng.choice(_LETTERS) for _ in range(3)) + f"-{rng.randint(100, 999)}",
        "plate": f"{rng.choice(_LETTERS)}{rng.choice(_LETTERS)}{rng.randint(10, 99)} "
        + "".join(rng.choice(_LETTERS) for _ in range(3)),
        "version": f"{rng.randint(1, 9)}.{rng.randint(0, 19)}.{rng.randint(0, 9)}",
        "phone": f"0{rng.randint(100, 999)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
        "time24": f"{rng.randint(0, 23):02d}:{rng.choice(('00', '10', '25', '30', '45', '55'))}",
        "temp": f"{rng.randint(-15, 38)} degrees",
        "length": f"{rng.randint(2, 900)} {rng.choice(TRAIN_UNITS)}",
        "cargo": f"{rng.randint(3, 900)} tonnes",
        "num5": str(rng.randint(10000, 99999)),
        "spot": rng.choice(TRAIN_SPOTS),
        "book": rng.choice(TRAIN_TITLES),
        "codename": rng.choice(TRAIN_CODENAMES),
        "ship": rng.choice(TRAIN_SHIPS),
        "word": rng.choice(TRAIN_WORDS),
        "passcode": f"{rng.choice(TRAIN_WORDS)}{rng.randint(10, 99)}",
        "company": rng.choice(TRAIN_COMPANIES),
        "road": rng.choice(TRAIN_ROADS),
        "sport": rng.choice(TRAIN_SPORTS),
        "fullname": f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}",
        "city3": rng.choice(CITIES),
    }


def _tf(kind: str, statement: str, *asks: tuple[str, str]) -> FormTemplate:
    return FormTemplate(kind, statement, tuple(asks), pool="train")


# Used to train the v2 adapter (configs/smollm2-memory-adapter-v2.yaml), together with TRAIN_TEMPLATES.
TRAIN_FORM_TEMPLATES: tuple[FormTemplate, ...] = (
    # dates, in three formats
    _tf("date", "According to the ledger, the shipment reached the depot on {isodate}.",
        ("On which date did the shipment reach the depot?", "isodate"),
        ("When, according to the ledger, did the shipment arrive?", "isodate")),
    _tf("date", "{name} signed the lease for the flat on {usdate}.",
        ("When did {name} sign the lease?", "usdate"),
        ("On what day was the lease for the flat signed by {name}?", "usdate")),
    _tf("date", "Every year the village fair starts on {daymonth}.",
        ("What day does the village fair begin?", "daymonth"),
        ("What is the opening date of the yearly village fair?", "daymonth")),
    _tf("date", "The warranty on the washing machine runs out on {isodate}.",
        ("When does the washing machine's warranty expire?", "isodate"),
        ("Until what date is the washing machine covered?", "isodate")),
    _tf("date", "The last entry in the captain's log is dated {usdate}.",
        ("What date does the final log entry carry?", "usdate"),
        ("When was the captain's last log entry written?", "usdate")),
    # names
    _tf("name", "The parcel was collected by a courier named {fullname}.",
        ("Who collected the parcel?", "fullname"),
        ("Which courier picked up the parcel?", "fullname")),
    _tf("name", "The referee for Saturday's match will be {fullname}.",
        ("Who is refereeing the match on Saturday?", "fullname"),
        ("Name the referee of Saturday's game.", "fullname")),
    _tf("name", "Our new neighbour's dog answers only to the name {word}.",
        ("What is the neighbour's dog called?", "word"),
        ("Which name does the new neighbour's dog respond to?", "word")),
    _tf("name", "The fishing boat moored at the north pier is the {ship}.",
        ("What is the boat at the north pier called?", "ship"),
        ("Which vessel is tied up at the north pier?", "ship")),
    _tf("name", "The research programme was given the code name {codename}.",
        ("What code name was the research programme given?", "codename"),
        ("Under which code name does the programme run?", "codename")),
    _tf("name", "The contract for the new roof went to {company}.",
        ("Which firm won the roofing contract?", "company"),
        ("Who was awarded the contract for the new roof?", "company")),
    # numbers
    _tf("number", "The invoice from the plumber came to {price} euros.",
        ("How many euros did the plumber charge?", "price"),
        ("What was the total on the plumber's invoice, in euros?", "price")),
    _tf("number", "Turnout at the local election reached {percent}.",
        ("What was the turnout at the local election?", "percent"),
        ("How high was voter turnout in the local election?", "percent")),
    _tf("number", "At dawn the thermometer on the balcony showed {temp}.",
        ("What temperature did the balcony thermometer show at dawn?", "temp"),
        ("How cold or warm was it on the balcony at dawn?", "temp")),
    _tf("number", "The hiking trail around the lake is {length} long.",
        ("How long is the trail around the lake?", "length"),
        ("What length is the lakeside hiking trail?", "length")),
    _tf("number", "The customer account of {name} {surname} has the number {num5}.",
        ("What is the account number of {name} {surname}?", "num5"),
        ("Which customer number belongs to {name} {surname}?", "num5")),
    _tf("number", "The dentist's practice can be reached on {phone}.",
        ("What is the phone number of the dentist's practice?", "phone"),
        ("On which number can the dentist be called?", "phone")),
    # codes
    _tf("code", "The serial number stamped on the radio reads {serial}.",
        ("What serial number is stamped on the radio?", "serial"),
        ("Which serial does the radio carry?", "serial")),
    _tf("code", "The rental van has the registration plate {plate}.",
        ("What is the registration of the rental van?", "plate"),
        ("Which number plate is on the van we rented?", "plate")),
    _tf("code", "The office server runs release {version} of the software.",
        ("Which release of the software does the office server run?", "version"),
        ("What version is installed on the office server?", "version")),
    _tf("code", "The wifi password in the cafe is {passcode}.",
        ("What is the cafe's wifi password?", "passcode"),
        ("Which password opens the cafe's wireless network?", "passcode")),
    # times
    _tf("time", "The night bus to {city} leaves the square at {time24}.",
        ("What time does the night bus to {city} depart?", "time24"),
        ("When does the night bus for {city} leave?", "time24")),
    _tf("time", "Visiting hours at the clinic end at {time24} on weekdays.",
        ("When do weekday visiting hours at the clinic end?", "time24"),
        ("Until what time can patients at the clinic receive visitors on weekdays?", "time24")),
    # phrases and places
    _tf("phrase", "Dad always hides the chocolate {spot}.",
        ("Where does Dad hide the chocolate?", "spot"),
        ("In which hiding place does Dad keep the chocolate?", "spot")),
    _tf("phrase", "The detective found the missing letter {spot}.",
        ("Where did the detective find the missing letter?", "spot"),
        ("In what place did the missing letter turn up?", "spot")),
    _tf("place", "The company's new headquarters will be built in {city3}.",
        ("In which city will the new headquarters be built?", "city3"),
        ("Where is the company putting its new head office?", "city3")),
    _tf("place", "Our team's away match this season is in {city}.",
        ("Where is the team playing its away match?", "city"),
        ("In what city will the away game be held?", "city")),
    # titles and attributes
    _tf("title", "The book club chose {book} for its next meeting.",
        ("Which book did the club choose for its next meeting?", "book"),
        ("What will the book club read next?", "book")),
    _tf("title", "{name}'s first play, {book}, ran for three weeks.",
        ("What was the title of {name}'s first play?", "book"),
        ("Which play did {name} write first?", "book")),
    _tf("attribute", "On weekends {name} coaches the junior {sport} team.",
        ("Which sport does {name} coach at the weekend?", "sport"),
        ("What junior team does {name} train on weekends?", "sport")),
    _tf("attribute", "The kitchen floor in the cottage is laid with {material} tiles.",
        ("What are the cottage's kitchen tiles made of?", "material"),
        ("Which material was used for the floor tiles of the cottage kitchen?", "material")),
    # several facts in one statement
    _tf("multi", "{name} rents the flat on {road} and pays {price} euros a month.",
        ("On which road does {name} rent a flat?", "road"),
        ("How much rent does {name} pay each month, in euros?", "price")),
    _tf("multi", "The {ship} sailed from {city} on {usdate} with {cargo} of cargo.",
        ("From which port did the {ship} sail?", "city"),
        ("When did the {ship} set sail?", "usdate"),
        ("How much cargo was the {ship} carrying?", "cargo")),
    _tf("multi", "Project {codename} is led by {fullname} and must finish by {isodate}.",
        ("Who leads project {codename}?", "fullname"),
        ("What is the deadline of project {codename}?", "isodate")),
    _tf("multi", "{company} moved its warehouse to {city3} and hired {num3} new staff.",
        ("Where did {company} move its warehouse?", "city3"),
        ("How many people did {company} take on?", "num3")),
    _tf("multi", "The blue notebook holds the phone number {phone} and the door code {num4}.",
        ("Which phone number is written in the blue notebook?", "phone"),
        ("What door code is noted in the blue notebook?", "num4")),
    _tf("multi", "At the auction a {material} chair sold for {price} euros to {fullname}.",
        ("Who bought the chair at the auction?", "fullname"),
        ("What price did the chair fetch, in euros?", "price"),
        ("What was the chair at the auction made of?", "material")),
    _tf("multi", "Sensor {serial} logged {temp} at {time24}.",
        ("What did sensor {serial} record?", "temp"),
        ("At what time did sensor {serial} take its reading?", "time24")),
    _tf("multi", "{name} {surname} teaches {sport} on {day} evenings in {city}.",
        ("Which sport does {name} {surname} teach?", "sport"),
        ("On which evening of the week are {name} {surname}'s classes?", "day"),
        ("In which city does {name} {surname} teach?", "city")),
)  # fmt: skip
TRAIN_TEMPLATES_V2: tuple[Template | FormTemplate, ...] = TRAIN_TEMPLATES + TRAIN_FORM_TEMPLATES
CHAT_OPENERS_TRAIN_V2 = CHAT_OPENERS_TRAIN + ("One thing to remember: ", "Write this down somewhere: ",
                                              "Please store this detail: ", "Quick fact for you: ")  # fmt: skip

_SENTENCE = re.compile(r"[^.!?]*[.!?]+[\"')\]]*\s*")


def filler_sentences(text: str) -> list[str]:
    """The sentences of a filler text (whitespace collapsed), at least 3 words each."""
    text = re.sub(r"\s+", " ", text).strip()
    out = [s.strip() for s in _SENTENCE.findall(text)]
    out = [s for s in out if len(s.split()) >= 3]
    if len(out) < 4:
        raise AnLLMError("the filler text has fewer than 4 sentences: give a longer prose file")
    return out


@dataclass(frozen=True)
class MemoryItem:
    """One recall item. ``turns`` (chat family) is a list of ``(role, text)`` with the question as the last user turn;
    otherwise the prompt is ``context`` followed by ``question``."""

    id: str
    family: str
    distance: int  # requested filler tokens between the asked fact and the question
    context: str
    question: str
    answer: str
    kind: str = ""
    template: int = -1  # index into the template set (-1: user item)
    turns: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    fact: str = ""  # the sentence stating the answer

    def to_dict(self) -> dict:
        return {**asdict(self), "turns": [list(t) for t in self.turns]}

    def messages(self) -> list[dict[str, str]]:
        """Chat messages ending with the question: the chat family's turns, else one user turn."""
        if self.turns:
            return [{"role": r, "content": x} for r, x in self.turns]
        return [{"role": "user", "content": f"{self.context}\n\n{self.question}".strip()}]

    def plain_prompt(self) -> str:
        """The prompt without a chat template: the context (turns as ``role: text`` lines), a blank line, then
        ``Question: ... Answer:`` (a question already ending in ``Answer:``, as few-shot items do, is kept as is)."""
        body = "\n".join(f"{r}: {x}" for r, x in self.turns[:-1]) if self.turns else self.context
        question = self.turns[-1][1] if self.turns else self.question
        tail = question if question.rstrip().endswith(("Answer:", "A:")) else f"Question: {question}\nAnswer:"
        return f"{body}\n\n{tail}".strip()


class _Filler:
    """Sentences of filler taken in order from a random start, until a token count is reached."""

    def __init__(self, sentences: list[str], count_tokens: Callable[[str], int], rng: random.Random):
        self.sents, self.count, self.rng = sentences, count_tokens, rng

    def take(self, n_tokens: int) -> str:
        if n_tokens <= 0:
            return ""
        i = self.rng.randrange(len(self.sents))
        out, total = [], 0
        while total < n_tokens:
            s = self.sents[i % len(self.sents)]
            out.append(s)
            total += self.count(" " + s)
            i += 1
        return " ".join(out)


def leaks(answer: str, question: str) -> bool:
    """True when ``answer`` appears as a word sequence in ``question`` (such an item tests nothing)."""
    return re.search(rf"(?<!\w){re.escape(answer.lower())}(?!\w)", question.lower()) is not None


def _fact(template: Template | FormTemplate, rng: random.Random) -> tuple[str, str, str]:
    while True:  # redraw until the answer is not in the question (e.g. a name asked about itself)
        if isinstance(template, FormTemplate):  # extra draws only here: the older templates' items are unchanged
            values = _values(rng)  # drawn first: the acceptance harness's items stay as they were
            values |= _train_form_values(rng) if template.pool == "train" else _form_values(rng)
            statement, question, answer = template.fill(values, rng.randrange(len(template.questions)))
        else:
            statement, question, answer = template.fill(_values(rng))
        if not leaks(answer, question):
            return statement, question, answer


def _distinct_facts(
    templates: tuple[Template | FormTemplate, ...], rng: random.Random, k: int
) -> list[tuple[int, str, str, str]]:
    """``k`` facts from different templates (so no two facts answer one question)."""
    idx = rng.sample(range(len(templates)), k)
    return [(i, *_fact(templates[i], rng)) for i in idx]


def make_items(
    *,
    seed: int,
    distances: tuple[int, ...],
    n_per_distance: int,
    filler: str | list[str],
    count_tokens: Callable[[str], int],
    families: tuple[str, ...] = ("single", "multi", "chat"),
    templates: tuple[Template | FormTemplate, ...] = EVAL_TEMPLATES,
    chat_openers: tuple[str, ...] = CHAT_OPENERS_EVAL,
    fewshot_items: list | None = None,
) -> list[MemoryItem]:
    """Recall items for every family x distance, ``n_per_distance`` each, reproducible from ``seed``.

    Args:
        filler: prose put between the fact and the question (a text, or its :func:`filler_sentences`).
        count_tokens: the model's token count of a string (distances are in these tokens).
        fewshot_items: :class:`anllm.evaluation.tasks.MCItem` list for the ``fewshot`` family (demonstrations
            compressed, the question at the end); required when ``fewshot`` is among ``families``.
    """
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise AnLLMError(f"unknown recall families {sorted(unknown)}; choose from {', '.join(FAMILIES)}")
    if n_per_distance < 1 or not distances or any(d < 0 for d in distances):
        raise AnLLMError("recall items need n >= 1 and distances >= 0")
    if "fewshot" in families and not fewshot_items:
        raise AnLLMError("the fewshot family needs multiple-choice items (the packaged toy task by default)")
    rng = random.Random(seed)
    sents = filler_sentences(filler) if isinstance(filler, str) else filler
    fill = _Filler(sents, count_tokens, rng)
    items = []
    for family in families:
        for d in distances:
            for j in range(n_per_distance):
                item_id = f"{family}-{d}-{j}"
                if family == "single":
                    items.append(_single(item_id, d, templates, rng, fill))
                elif family == "multi":
                    items.append(_multi(item_id, d, templates, rng, fill))
                elif family == "chat":
                    items.append(_chat(item_id, d, templates, rng, fill, chat_openers))
                elif family == "fewshot-recall":
                    items.append(_fewshot_recall(item_id, d, templates, rng, fill))
                else:
                    items.append(_fewshot(item_id, d, fewshot_items, rng, count_tokens))
    return items


def _single(item_id, d, templates, rng, fill) -> MemoryItem:
    (t, fact, question, answer), = _distinct_facts(templates, rng, 1)  # fmt: skip
    lead = fill.take(rng.choice((0, 0, 24, 48)))  # the fact is not always the first sentence
    context = " ".join(p for p in (lead, fact, fill.take(d)) if p)
    return MemoryItem(item_id, "single", d, context, question, answer, templates[t].kind, t, fact=fact)


def _multi(item_id, d, templates, rng, fill) -> MemoryItem:
    """Three or four facts; the asked one sits ``d`` filler tokens before the question, the others anywhere."""
    facts = _distinct_facts(templates, rng, rng.choice((3, 4)))
    asked = rng.randrange(len(facts))
    t, fact, question, answer = facts[asked]
    others = [f[1] for k, f in enumerate(facts) if k != asked]
    gap = fill.take(d)
    parts = gap.split(". ")
    pieces = [fact]
    for o in others:  # distractors go before the fact or inside the gap (kept in sentence order)
        if rng.random() < 0.5:
            pieces.insert(0, o)
        else:
            k = rng.randrange(len(parts) + 1)
            parts.insert(k, o.rstrip("."))
    context = " ".join(pieces) + " " + ". ".join(parts)
    return MemoryItem(item_id, "multi", d, context.strip(), question, answer, templates[t].kind, t, fact=fact)


def _chat(item_id, d, templates, rng, fill, openers) -> MemoryItem:
    """The fact in the first user turn; ordinary turns of about ``d`` tokens in all; the question last."""
    (t, fact, question, answer), = _distinct_facts(templates, rng, 1)  # fmt: skip
    turns: list[tuple[str, str]] = [("user", rng.choice(openers) + fact), ("assistant", "Noted. I will remember that.")]
    remaining = d
    while remaining > 0:
        n = min(remaining, rng.choice((40, 80, 120)))
        turns.append(("user", "Tell me something about this: " + fill.take(max(8, n // 4))))
        turns.append(("assistant", fill.take(n)))
        remaining -= n + max(8, n // 4)
    turns.append(("user", question))
    context = "\n".join(f"{r}: {x}" for r, x in turns[:-1])
    return MemoryItem(item_id, "chat", d, context, question, answer, templates[t].kind, t, tuple(turns), fact)


def _fewshot(item_id, d, mc_items, rng, count_tokens) -> MemoryItem:
    """Demonstrations (question + right answer) filling about ``d`` tokens, then a held-back question."""
    query = mc_items[rng.randrange(len(mc_items))]
    others = [m for m in mc_items if m is not query]
    demos, total = [], 0
    while total < d and others:
        m = others[rng.randrange(len(others))]
        demo = f"{m.contexts[m.label]} {m.choices[m.label]}"
        demos.append(demo)
        total += count_tokens(demo)
    context = "\n\n".join(demos)
    question = query.contexts[query.label]
    return MemoryItem(item_id, "fewshot", d, context, question, query.choices[query.label], "fewshot", -1)


def _fewshot_recall(item_id, d, templates, rng, fill) -> MemoryItem:
    """Several facts, ``d`` filler tokens, then worked questions about the other facts (question, answer) and last
    the question about the asked one: the few-shot format of the paper with the answers to recall in the context."""
    facts = _distinct_facts(templates, rng, rng.choice((3, 4)))
    asked = rng.randrange(len(facts))
    t, fact, question, answer = facts[asked]
    demos = "\n".join(f"Q: {q}\nA: {a}" for k, (_, _, q, a) in enumerate(facts) if k != asked)
    context = " ".join(f[1] for f in facts) + " " + fill.take(d) + "\n\n" + demos
    return MemoryItem(item_id, "fewshot-recall", d, context, f"Q: {question}\nA:", answer, templates[t].kind, t,
                      fact=fact)  # fmt: skip
