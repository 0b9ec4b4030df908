"""The demo task: one- and two-step integer word problems in a small templated language.

Deterministic (seeded ``random.Random``), no dependencies beyond the standard library, so the
seeds, the eval suite and the demo teacher's training data are reproduced byte for byte by
``python data/demo/make_data.py``.

A problem is a short story (one or two people, objects, 1-2 events) and a question; the answer
is a chain of one or two one-operation steps, one per line, and a final ``Answer: N`` line::

    Mia has 4 shells. After that she finds 3 shells on the beach. Then she gives 2 shells to Leo.
    How many shells does Mia have now?

    4 + 3 = 7
    7 - 2 = 5
    Answer: 5

At most two steps: the demo student is a 2-layer model (its speed budget against the
teacher), and two-layer students trained on three-step chains stalled far below the teacher on
them (38% on the three-step problems of an earlier version of this task after 6,000 steps, while
91-96% on the one- and two-step ones), so three-step chains would measure the student's depth, not
the distillation.

Numbers stay small (every value 0..MAX_VALUE, changes 1..MAX_CHANGE, small products) so a
model of a few hundred thousand parameters can learn the arithmetic from a few thousand worked
examples, while a model that saw only 64 of them cannot: the stories come from many templates,
names, objects, verbs and connectives, so distinct problems are not near-duplicates of each other.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

MAX_VALUE = 10
MAX_CHANGE = 3

NAMES = [
    ("Mia", "she"), ("Leo", "he"), ("Ava", "she"), ("Sam", "he"), ("Zoe", "she"), ("Max", "he"),
    ("Ella", "she"), ("Noah", "he"), ("Lily", "she"), ("Omar", "he"), ("Nina", "she"), ("Ivan", "he"),
    ("Rosa", "she"), ("Hugo", "he"), ("Emma", "she"), ("Finn", "he"), ("Lucy", "she"), ("Jack", "he"),
    ("Sara", "she"), ("Ben", "he"), ("Kate", "she"), ("Tom", "he"), ("Anna", "she"), ("Ravi", "he"),
    ("Maya", "she"), ("Luis", "he"), ("Iris", "she"), ("Paul", "he"), ("Vera", "she"), ("Theo", "he"),
    ("Jade", "she"), ("Adam", "he"), ("Ruth", "she"), ("Kai", "he"), ("Nora", "she"), ("Eli", "he"),
    ("Hana", "she"), ("Owen", "he"), ("Tara", "she"), ("Dan", "he"),
]

# (singular, plural, where one finds them, what holds several of them)
OBJECTS = [
    ("apple", "apples", "under the tree", "basket"), ("shell", "shells", "on the beach", "jar"),
    ("stamp", "stamps", "in an old book", "album"), ("marble", "marbles", "in the yard", "bag"),
    ("pencil", "pencils", "in the classroom", "box"), ("card", "cards", "in the attic", "deck"),
    ("cookie", "cookies", "in the kitchen", "tin"), ("coin", "coins", "in the sofa", "purse"),
    ("flower", "flowers", "in the garden", "vase"), ("sticker", "stickers", "at school", "sheet"),
    ("book", "books", "at the library sale", "crate"), ("egg", "eggs", "in the barn", "carton"),
    ("ribbon", "ribbons", "in a drawer", "roll"), ("rock", "rocks", "by the river", "bucket"),
    ("candle", "candles", "in the cellar", "pack"), ("toy car", "toy cars", "under the bed", "crate"),
    ("leaf", "leaves", "in the park", "pile"), ("button", "buttons", "in the sewing kit", "cup"),
    ("orange", "oranges", "at the market", "sack"), ("feather", "feathers", "near the pond", "pouch"),
    ("balloon", "balloons", "at the fair", "bunch"), ("brick", "bricks", "behind the shed", "stack"),
    ("muffin", "muffins", "at the bakery", "tray"), ("bead", "beads", "on the floor", "string"),
    ("puzzle", "puzzles", "in the closet", "carton"), ("kite", "kites", "at the shop", "bundle"),
    ("lemon", "lemons", "in the orchard", "bowl"), ("crayon", "crayons", "in the art room", "case"),
    ("cupcake", "cupcakes", "at the party", "plate"), ("pebble", "pebbles", "on the path", "pail"),
]

# Priced items for the shopping template: (singular, plural).
ITEMS = [
    ("pen", "pens"), ("notebook", "notebooks"), ("ticket", "tickets"), ("sandwich", "sandwiches"),
    ("plant", "plants"), ("mug", "mugs"), ("comic", "comics"), ("bottle of juice", "bottles of juice"),
    ("scarf", "scarves"), ("ruler", "rulers"), ("toy boat", "toy boats"), ("pie", "pies"),
]
CURRENCIES = ["coins", "dollars", "tokens", "euros"]

CONNECTIVES = ["Then", "After that", "Later", "Next", "Soon after", "In the afternoon", "That evening",
               "On the way home", "The next day", "A bit later"]

# Events that change one person's count. {p} pronoun, {f} a friend, {o} object plural,
# {place} where the object is found, {y} the amount.
GAIN_EVENTS = [
    "{p} buys {y} more {o}", "{p} finds {y} {o} {place}", "{f} gives {obj} {y} {o}",
    "{p} gets {y} {o} from {f}", "{p} picks up {y} more {o}", "{p} wins {y} {o} in a game",
    "{p} receives {y} {o} as a gift", "{p} makes {y} new {o}", "{p} collects {y} {o} {place}",
    "{f} brings {obj} {y} extra {o}",
]
LOSS_EVENTS = [
    "{p} gives {y} {o} to {f}", "{p} loses {y} {o} {place}", "{p} sells {y} {o}",
    "{p} uses {y} of the {o}", "{f} takes {y} {o}", "{p} trades away {y} {o}",
    "{p} drops {y} {o} and cannot find them", "{p} shares {y} {o} with {f}",
    "{p} throws away {y} broken {o}", "{p} lends {y} {o} to {f}",
]
DOUBLE_EVENTS = [
    "{p} doubles the number of {o}", "the number of {o} {p} has doubles",
    "{f} gives {obj} as many {o} as {p} already has",
]
STARTS = [
    "{n} has {x} {o}.", "{n} had {x} {o} in a {c}.", "There are {x} {o} in {poss} {c}.",
    "{n} starts the day with {x} {o}.", "{n} owns {x} {o}.", "{n} keeps {x} {o} in a {c}.",
]
QUESTIONS_ONE = [
    "How many {o} does {n} have now?", "How many {o} does {n} have at the end?",
    "How many {o} are left with {n}?", "What is the number of {o} {n} has now?",
    "How many {o} does {n} end up with?", "Count the {o} {n} has in the end.",
]

OBJ_PRONOUN = {"she": "her", "he": "him"}
POSSESSIVE = {"she": "her", "he": "his"}


@dataclass(frozen=True)
class Problem:
    """One task instance: the user prompt, the worked response, and the final integer answer."""

    prompt: str
    response: str
    answer: int
    kind: str


def _plural(word: str) -> str:
    return word + "es" if word.endswith(("ch", "sh", "s", "x")) else word + "s"


def _event(template: str, amount: int, fill: dict[str, str], single: str) -> str:
    """Fill an event template; one object reads singular ("gives 1 apple")."""
    if amount == 1:
        template = re.sub(r"\{y\} ((?:more |extra |new |broken )?)\{o\}", r"{y} \1{o1}", template)
    return template.format(y=amount, o1=single, **fill)


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _two_people(rng: random.Random) -> tuple[tuple[str, str], tuple[str, str]]:
    first, second = rng.sample(NAMES, 2)
    return first, second


def _render_response(steps: list[tuple[int, str, int, int]], answer: int) -> str:
    lines = [f"{a} {op} {b} = {c}" for a, op, b, c in steps]
    lines.append(f"Answer: {answer}")
    return "\n".join(lines)


def _timeline(rng: random.Random) -> Problem:
    """One person, a starting count and 2-4 events (gain, loss, doubling)."""
    (name, pron), (friend, _) = _two_people(rng)
    single, plural, place, container = rng.choice(OBJECTS)
    value = rng.randint(2, 7)
    fill = {"n": name, "p": pron, "f": friend, "o": plural, "place": place, "c": container,
            "obj": OBJ_PRONOUN[pron], "poss": POSSESSIVE[pron] if rng.random() < 0.5 else f"{name}'s"}
    start = rng.choice(STARTS)
    if start.startswith("There are") and fill["poss"] != f"{name}'s":
        fill["poss"] = f"{name}'s"
    sentences = [start.format(x=value, **fill)]
    steps: list[tuple[int, str, int, int]] = []
    num_events = rng.choice([1, 2, 2])
    connectives = rng.sample(CONNECTIVES, num_events)
    for i in range(num_events):
        choices = []
        if value + 1 <= MAX_VALUE:
            choices += ["gain", "gain"]
        if value >= 2:
            choices += ["loss", "loss"]
        if 2 <= value * 2 <= MAX_VALUE and value >= 2:
            choices.append("double")
        kind = rng.choice(choices)
        if kind == "gain":
            amount = rng.randint(1, min(MAX_CHANGE, MAX_VALUE - value))
            event, new = rng.choice(GAIN_EVENTS), value + amount
            steps.append((value, "+", amount, new))
        elif kind == "loss":
            amount = rng.randint(1, min(MAX_CHANGE, value - 1))
            event, new = rng.choice(LOSS_EVENTS), value - amount
            steps.append((value, "-", amount, new))
        else:
            amount, event, new = 2, rng.choice(DOUBLE_EVENTS), value * 2
            steps.append((value, "*", 2, new))
        clause = _event(event, amount, fill, single)
        sentences.append(f"{connectives[i]} {clause}." if i else f"{_cap(clause)}." if rng.random() < 0.3
                         else f"{connectives[i]} {clause}.")
        value = new
    sentences.append(rng.choice(QUESTIONS_ONE).format(**fill))
    return Problem(" ".join(sentences), _render_response(steps, value), value, "timeline")


def _groups(rng: random.Random) -> Problem:
    """Equal groups (a multiplication), then one change."""
    (name, pron), (friend, _) = _two_people(rng)
    single, plural, place, container = rng.choice(OBJECTS)
    groups, size = rng.randint(2, 3), rng.randint(2, 3)
    value = groups * size
    fill = {"n": name, "p": pron, "f": friend, "o": plural, "place": place, "c": container,
            "obj": OBJ_PRONOUN[pron]}
    opening = rng.choice([
        "{n} has {g} {cs} with {s} {o} in each.", "{n} fills {g} {cs} with {s} {o} each.",
        "There are {g} {cs} and each one holds {s} {o}. They all belong to {n}.",
        "{n} packs {s} {o} into each of {g} {cs}.",
    ]).format(g=groups, s=size, cs=_plural(container), **fill)
    steps = [(groups, "*", size, value)]
    sentences = [opening]
    for connective in rng.sample(CONNECTIVES, 1):
        if value >= 2 and (value + 1 > MAX_VALUE or rng.random() < 0.5):
            amount = rng.randint(1, min(MAX_CHANGE, value - 1))
            event, new, op = rng.choice(LOSS_EVENTS), value - amount, "-"
        else:
            amount = rng.randint(1, min(MAX_CHANGE, MAX_VALUE - value))
            event, new, op = rng.choice(GAIN_EVENTS), value + amount, "+"
        sentences.append(f"{connective} {_event(event, amount, fill, single)}.")
        steps.append((value, op, amount, new))
        value = new
    sentences.append(rng.choice(QUESTIONS_ONE).format(**fill))
    return Problem(" ".join(sentences), _render_response(steps, value), value, "groups")


def _shopping(rng: random.Random) -> Problem:
    """Price times quantity, then the change from a payment."""
    name, pron = rng.choice(NAMES)
    single, plural = rng.choice(ITEMS)
    money = rng.choice(CURRENCIES)
    price, quantity = rng.randint(2, 3), rng.randint(2, 3)
    cost = price * quantity
    paid = rng.randint(cost + 1, min(MAX_VALUE, cost + MAX_CHANGE)) if cost < MAX_VALUE else cost
    article = "An" if single[0] in "aeiou" else "A"
    prompt = rng.choice([
        "{a} {s} costs {pr} {m}. {n} buys {q} {pl} and pays with {pd} {m}. How much change does {p} get?",
        "At the shop, one {s} is {pr} {m}. {n} takes {q} {pl} and hands over {pd} {m}. How many {m} does {p} get back?",
        "{n} pays {pd} {m} for {q} {pl} that cost {pr} {m} each. How many {m} of change should {p} receive?",
        "{n} has {pd} {m} and buys {q} {pl} at {pr} {m} each. How many {m} are left?",
    ]).format(a=article, s=single, pl=plural, pr=price, m=money, n=name, q=quantity, pd=paid, p=pron)
    steps = [(quantity, "*", price, cost), (paid, "-", cost, paid - cost)]
    return Problem(prompt, _render_response(steps, paid - cost), paid - cost, "shopping")


def _two_counts(rng: random.Random) -> Problem:
    """Two people: one count relative to the other, then a total or a difference."""
    (name, pron), (other, _) = _two_people(rng)
    _, plural, _, _ = rng.choice(OBJECTS)
    first = rng.randint(2, 5)
    if rng.random() < 0.5:
        delta = rng.randint(1, min(MAX_CHANGE, MAX_VALUE - 2 * first) if MAX_VALUE - 2 * first >= 1 else 1)
        second, rel, op = first + delta, rng.choice(["{d} more {o} than", "{d} {o} more than"]), "+"
    else:
        delta = rng.randint(1, min(MAX_CHANGE, first - 1))
        second, rel, op = first - delta, rng.choice(["{d} fewer {o} than", "{d} {o} less than"]), "-"
    rel = rel.format(d=delta, o=plural)
    total = first + second
    if total > MAX_VALUE:  # keep every value small; shrink to a difference question instead
        prompt = (f"{name} has {first} {plural}. {other} has {rel} {name}. "
                  f"How many {plural} does {other} have?")
        steps = [(first, op, delta, second)]
        return Problem(prompt, _render_response(steps, second), second, "two_counts")
    question = rng.choice([
        "How many {o} do they have together?", "How many {o} do {n} and {m} have in total?",
        "What is the total number of {o} the two of them have?",
    ]).format(o=plural, n=name, m=other)
    opening = rng.choice(["{n} has {x} {o}.", "{n} collected {x} {o}.", "{n} counts {x} {o} at home."])
    prompt = f"{opening.format(n=name, x=first, o=plural)} {other} has {rel} {name}. {question}"
    steps = [(first, op, delta, second), (first, "+", second, total)]
    return Problem(prompt, _render_response(steps, total), total, "two_counts")


def _exchange(rng: random.Random) -> Problem:
    """Two people, one gives some to the other; how many the giver or the receiver has now."""
    (name, pron), (other, _) = _two_people(rng)
    _, plural, _, _ = rng.choice(OBJECTS)
    a = rng.randint(2, 7)
    give = rng.randint(1, min(MAX_CHANGE, a - 1))
    b = rng.randint(1, MAX_VALUE - give)
    opening = rng.choice([
        "{n} has {a} {o} and {m} has {b} {o}. {n} gives {g} {o} to {m}.",
        "{m} owns {b} {o}, {n} owns {a}. Then {n} hands {g} of them to {m}.",
        "{n} starts with {a} {o} and {m} with {b}. {n} gives {m} {g} {o}.",
    ])
    if rng.random() < 0.5:
        question, steps, answer = "How many {o} does {m} have now?", [(b, "+", give, b + give)], b + give
    else:
        question, steps, answer = "How many {o} does {n} have left?", [(a, "-", give, a - give)], a - give
    prompt = f"{opening} {question}".format(n=name, m=other, a=a, b=b, g=give, o=plural)
    return Problem(prompt, _render_response(steps, answer), answer, "exchange")


KINDS = [(_timeline, 5), (_groups, 2), (_shopping, 1), (_two_counts, 1), (_exchange, 1)]


def make_problem(rng: random.Random) -> Problem:
    """One random problem; the kind mix is weighted towards the multi-event stories."""
    builders, weights = zip(*KINDS)
    return rng.choices(builders, weights=weights)[0](rng)


def check_problem(problem: Problem) -> None:
    """Re-derive the answer from the worked lines; raises AssertionError on any inconsistency."""
    lines = problem.response.split("\n")
    value = None
    for line in lines[:-1]:
        left, result = line.split(" = ")
        a, op, b = left.split(" ")
        a, b, result = int(a), int(b), int(result)
        assert {"+": a + b, "-": a - b, "*": a * b}[op] == result, line
        assert 0 <= result <= MAX_VALUE and 0 <= a <= MAX_VALUE and 0 <= b <= MAX_VALUE, line
        value = result
    assert lines[-1] == f"Answer: {problem.answer}" and value == problem.answer, problem


def problems(seed: int, count: int, exclude: set[str] = frozenset()) -> list[Problem]:
    """``count`` distinct problems from ``seed`` (prompts in ``exclude`` and repeats skipped)."""
    rng = random.Random(seed)
    seen, out = set(exclude), []
    while len(out) < count:
        problem = make_problem(rng)
        if problem.prompt in seen:
            continue
        check_problem(problem)
        seen.add(problem.prompt)
        out.append(problem)
    return out


_NAME_SET = {name for name, _ in NAMES}
_QUESTION_OBJECT = re.compile(r"(?:How many|number of|Count the) ((?:[a-z]+ )?[a-z]+?) (?:does|do|are|is|of|the|[A-Z][a-z]+ has)\b")


def is_coherent(prompt: str) -> bool:
    """A cheap well-formedness check of a written prompt (used to measure the demo teacher's
    prompt writing, never to filter): every person named in the question, and the thing it
    asks about, already appear in the story before it. Every generated problem passes."""
    sentences = re.split(r"(?<=[.?])\s+", prompt.strip())
    if len(sentences) < 2:
        return False
    story, question = " ".join(sentences[:-1]), sentences[-1]
    if any(word in _NAME_SET and word not in story for word in re.findall(r"[A-Z][a-z]+", question)):
        return False
    asked = _QUESTION_OBJECT.search(question)
    return asked is None or asked.group(1).split(" ")[-1] in story


def extract_answer(text: str) -> int | None:
    """The integer on the last ``Answer:`` line of a model's output, or None."""
    for line in reversed(text.strip().split("\n")):
        if line.startswith("Answer:"):
            try:
                return int(line[len("Answer:"):].strip())
            except ValueError:
                return None
    return None
