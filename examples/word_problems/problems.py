"""Grade-school arithmetic word problems with worked solutions (GSM8K in miniature).

Every problem comes from one of ``KINDS`` (adding, taking away, buying with change, sharing,
rates, ages, distances, comparisons, two- to four-step combinations...). A kind draws its
numbers (every intermediate result a whole number between 0 and about 1000), then renders
the question with one of its *phrasings* and a worked solution that always ends with the
answer line ``The answer is N.``::

    Q: Ava had 245 shells. She found 38 more at the beach. How many shells does Ava have now?
    A: Ava has 245 shells and gets 38 more. 245 + 38 = 283. The answer is 283.

Names, objects, verbs, tense and (for some phrasings) the sentence order vary; now and then a
distractor sentence with an irrelevant number is added. The last phrasing of every kind is
*held out*: it never appears in the training split, so the held-out split measures
generalisation to unseen wordings, not recall. Held-out problems also differ from every
training problem in their numbers (a hash of kind and numbers decides the split).

Pure Python and deterministic: ``make_split(n, seed, held_out)`` gives the same problems
every time.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from fastdllm.models import extract_answer


# ---- vocabulary of the stories ------------------------------------------------------------------

BOYS = ["Tom", "Liam", "Noah", "Omar", "Jack", "Leo", "Sam", "Ben", "Max", "Ravi", "Ethan", "Lucas", "Hugo",
        "Kenji", "Mateo", "Felix", "Oscar", "Ali", "Diego", "Ivan", "Finn", "Marco", "Theo", "Yusuf"]
GIRLS = ["Ava", "Mia", "Emma", "Zoe", "Lily", "Sara", "Nina", "Maya", "Rosa", "Amira", "Chloe", "Hana", "Ella",
         "Priya", "Lucy", "Grace", "Ines", "Julia", "Nora", "Tara", "Wendy", "Yara", "Olga", "Keiko"]
# (singular, plural)
THINGS = [("apple", "apples"), ("marble", "marbles"), ("sticker", "stickers"), ("book", "books"),
          ("pencil", "pencils"), ("cookie", "cookies"), ("card", "cards"), ("stamp", "stamps"),
          ("shell", "shells"), ("coin", "coins"), ("balloon", "balloons"), ("flower", "flowers"),
          ("egg", "eggs"), ("bead", "beads"), ("crayon", "crayons"), ("toy car", "toy cars"),
          ("orange", "oranges"), ("candy", "candies"), ("button", "buttons"), ("ribbon", "ribbons"),
          ("leaf", "leaves"), ("cupcake", "cupcakes"), ("comic", "comics"), ("rock", "rocks"),
          ("paper clip", "paper clips"), ("grape", "grapes"), ("puzzle piece", "puzzle pieces")]
CONTAINERS = [("box", "boxes"), ("bag", "bags"), ("pack", "packs"), ("basket", "baskets"), ("jar", "jars"),
              ("crate", "crates"), ("tray", "trays"), ("bucket", "buckets"), ("shelf", "shelves")]
PLACES = ["at the park", "at school", "at the beach", "at the market", "in the garden", "at the fair",
          "on the way home", "at the library", "in the attic"]
# verbs: (present, past) in the third person singular
V_GET = [("buys", "bought"), ("finds", "found"), ("gets", "got"), ("collects", "collected"),
         ("receives", "received"), ("wins", "won"), ("picks up", "picked up")]
V_LOSE = [("loses", "lost"), ("uses", "used"), ("breaks", "broke"), ("drops", "dropped"), ("sells", "sold"),
          ("throws away", "threw away")]
V_GIVE = [("gives", "gave"), ("hands", "handed"), ("sends", "sent"), ("passes", "passed")]
JOBS = [("earns", "earned", "dollars", "hour", "hours"), ("reads", "read", "pages", "day", "days"),
        ("bakes", "baked", "cookies", "day", "days"), ("saves", "saved", "dollars", "week", "weeks"),
        ("paints", "painted", "pictures", "month", "months"), ("writes", "wrote", "lines", "minute", "minutes"),
        ("folds", "folded", "paper cranes", "hour", "hours")]
VEHICLES = [("train", "km"), ("car", "km"), ("bus", "km"), ("boat", "miles"), ("truck", "miles"),
            ("cyclist", "km"), ("plane", "miles")]
# things one pays for: (singular, plural)
ITEMS = [("book", "books"), ("toy", "toys"), ("lamp", "lamps"), ("pair of shoes", "pairs of shoes"),
         ("game", "games"), ("jacket", "jackets"), ("kite", "kites"), ("watch", "watches"), ("ticket", "tickets"),
         ("backpack", "backpacks"), ("pen", "pens"), ("notebook", "notebooks"), ("hat", "hats"), ("plant", "plants"),
         ("mug", "mugs"), ("scarf", "scarves"), ("puzzle", "puzzles"), ("ball", "balls")]
COLOURS = ["red", "blue", "green", "yellow", "white", "purple"]


# ---- a problem ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    kind: str
    phrasing: int          # index of the phrasing within the kind
    question: str
    solution: str          # worked solution, ending with "The answer is N."
    answer: int

    @property
    def template(self) -> str:
        return f"{self.kind}/{self.phrasing}"

    def messages(self, with_answer: bool = True) -> list[dict]:
        msgs = [{"role": "user", "content": self.question}]
        if with_answer:
            msgs.append({"role": "assistant", "content": self.solution})
        return msgs

    def as_dict(self) -> dict:
        return asdict(self)


def is_correct(problem: Problem | dict, text: str) -> bool:
    answer = problem["answer"] if isinstance(problem, dict) else problem.answer
    return extract_answer(text) == answer


# ---- rendering helpers ------------------------------------------------------------------------------

class Story(dict):
    """Slot values for a phrasing: ``{name}``, ``{He}``, ``{his}``, numbers, objects, verbs..."""

    def __missing__(self, key):  # pragma: no cover - a typo in a template
        raise KeyError(f"template slot {{{key}}} is not set")


def person(rng: random.Random, avoid: Iterable[str] = ()) -> dict:
    girl = rng.random() < 0.5
    name = rng.choice([n for n in (GIRLS if girl else BOYS) if n not in set(avoid)])
    return {"name": name, "he": "she" if girl else "he", "He": "She" if girl else "He",
            "him": "her" if girl else "him", "his": "her" if girl else "his", "His": "Her" if girl else "His"}


def story(rng: random.Random, tense: str, **numbers) -> Story:
    """Two people, a thing, a container, verbs in ``tense`` ("present" or "past")."""
    p1 = person(rng)
    p2 = person(rng, avoid=[p1["name"]])
    thing, things = rng.choice(THINGS)
    item, items = rng.choice(ITEMS)
    box, boxes = rng.choice(CONTAINERS)
    past = tense == "past"
    pick = lambda verbs: rng.choice(verbs)[1 if past else 0]  # noqa: E731
    s = Story(**p1, **{k + "2": v for k, v in p2.items()}, obj=thing, objs=things, item=item, items=items, box=box, boxes=boxes,
              place=rng.choice(PLACES), colour=rng.choice(COLOURS), get=pick(V_GET), lose=pick(V_LOSE),
              give=pick(V_GIVE), has="had" if past else "has", does="did" if past else "does",
              is_="was" if past else "is")
    s.update({k: v for k, v in numbers.items()})
    return s


def distractor(rng: random.Random, s: Story) -> str:
    """An irrelevant sentence with a number (never asked about)."""
    d = rng.randint(2, 60)
    options = [
        f"{s['name2']} has {d} {rng.choice(THINGS)[1]} at home.",
        f"The {s['box']} is {d} centimeters tall.",
        f"It is {d} minutes past noon.",
        f"{s['His']} house has {rng.randint(2, 9)} windows.",
        f"{s['name']} lives {d} meters from {s['name2']}.",
    ]
    return rng.choice(options)


Numbers = Callable[[random.Random], dict]


@dataclass(frozen=True)
class Kind:
    name: str
    numbers: Numbers            # rng -> dict of numbers, including "answer"
    phrasings: tuple[str, ...]  # question templates; the last one is held out
    solution: str               # worked solution template
    tenses: tuple[str, ...] = ("present", "past")
    things: bool = True         # the story is about countable things (distractors make sense)

    def render(self, rng: random.Random, phrasing: int, with_distractor: bool) -> Problem:
        nums = self.numbers(rng)
        s = story(rng, rng.choice(self.tenses), **nums)
        question = _fill(self.phrasings[phrasing], s)
        if with_distractor and self.things:
            sentences = _sentences(question)
            at = rng.randint(0, len(sentences) - 1)  # anywhere before the last sentence
            sentences.insert(at, distractor(rng, s))
            question = " ".join(sentences)
        solution = _fill(self.solution, s)
        assert solution.endswith(f"The answer is {nums['answer']}."), (self.name, solution)
        return Problem(self.name, phrasing, question, solution, nums["answer"])


def _fill(template: str, s: Story) -> str:
    text = template.format_map(s)
    text = re.sub(r"\s+", " ", text).strip()
    return text[0].upper() + text[1:]


def _sentences(text: str) -> list[str]:
    return [p for p in re.split(r"(?<=[.?!])\s+", text) if p]


# ---- number draws (every intermediate result stays a whole number in [0, ~1000]) --------------------

def _n(rng, lo, hi):
    return rng.randint(lo, hi)


def _size(rng) -> int:
    """An operand: mostly two or three digits, sometimes one."""
    r = rng.random()
    return rng.randint(2, 9) if r < 0.1 else rng.randint(10, 99) if r < 0.5 else rng.randint(100, 600)


def num_add(rng):
    a, b = _size(rng), _size(rng)
    return {"a": a, "b": b, "answer": a + b}


def num_sub(rng):
    a = _n(rng, 12, 999)
    b = _n(rng, 1, a - 1)
    return {"a": a, "b": b, "answer": a - b}


def num_mul(rng):
    n, k = _n(rng, 2, 9), _n(rng, 2, 99)
    return {"n": n, "k": k, "answer": n * k}


def num_div(rng):
    n, q = _n(rng, 2, 9), _n(rng, 2, 99)
    return {"n": n, "total": n * q, "answer": q}


def num_change(rng):
    price = _n(rng, 3, 400)
    paid = rng.choice([p for p in (5, 10, 20, 50, 100, 200, 500, 1000) if p > price] or [1000])
    return {"price": price, "paid": paid, "answer": paid - price}


def num_buy_many(rng):
    n, price = _n(rng, 2, 9), _n(rng, 2, 60)
    cost = n * price
    paid = rng.choice([p for p in (10, 20, 50, 100, 200, 500, 1000) if p > cost])
    return {"n": n, "price": price, "cost": cost, "paid": paid, "answer": paid - cost}


def num_ages(rng):
    a, b, c = _n(rng, 5, 60), _n(rng, 2, 30), _n(rng, 2, 20)
    older = a + b
    return {"a": a, "b": b, "c": c, "older": older, "answer": older + c}


def num_trip(rng):
    total = _n(rng, 120, 990)
    d1 = _n(rng, 10, total // 2)
    d2 = _n(rng, 10, total - d1 - 1)
    done = d1 + d2
    return {"total": total, "d1": d1, "d2": d2, "done": done, "answer": total - done}


def num_fewer_together(rng):
    a = _n(rng, 20, 480)
    b = _n(rng, 1, a - 1)
    other = a - b
    return {"a": a, "b": b, "other": other, "answer": a + other}


def num_three(rng):
    a, b, c = _n(rng, 2, 300), _n(rng, 2, 300), _n(rng, 2, 300)
    ab = a + b
    return {"a": a, "b": b, "c": c, "ab": ab, "answer": ab + c}


def num_together(rng):
    a = _n(rng, 5, 500)
    other = _n(rng, 5, 480)
    return {"a": a, "total": a + other, "answer": other}


def num_buy_give(rng):
    a, n, k = _n(rng, 10, 400), _n(rng, 2, 9), _n(rng, 2, 50)
    bought = n * k
    have = a + bought
    c = _n(rng, 1, have - 1)
    return {"a": a, "n": n, "k": k, "bought": bought, "have": have, "c": c, "answer": have - c}


def num_four(rng):
    a, b = _n(rng, 10, 300), _n(rng, 2, 200)
    ab = a + b
    c = _n(rng, 1, ab - 1)
    left = ab - c
    n, k = _n(rng, 2, 9), _n(rng, 2, 40)
    bought = n * k
    return {"a": a, "b": b, "ab": ab, "c": c, "left": left, "n": n, "k": k, "bought": bought,
            "answer": left + bought}


def num_half(rng):
    half = _n(rng, 3, 450)
    return {"a": 2 * half, "answer": half}


def num_share_left(rng):
    n, q = _n(rng, 2, 9), _n(rng, 2, 80)
    shared = n * q
    a = shared + _n(rng, 1, 300)
    return {"a": a, "n": n, "q": q, "shared": shared, "answer": a - shared}


def num_rate_total(rng):
    p, t = _n(rng, 2, 99), _n(rng, 2, 9)
    made = p * t
    extra = _n(rng, 1, 200)
    return {"p": p, "t": t, "made": made, "extra": extra, "answer": made + extra}


def _job_slots(rng: random.Random) -> dict:
    job, _past, unit_objs, unit, units = rng.choice(JOBS)
    base = {"earns": "earn", "reads": "read", "bakes": "bake", "saves": "save", "paints": "paint",
            "writes": "write", "folds": "fold"}[job]
    vehicle, dist = rng.choice(VEHICLES)
    return {"job": job, "job_base": base, "unit_objs": unit_objs, "unit": unit, "units": units, "vehicle": vehicle,
            "dist": dist}


def _with_jobs(numbers: Numbers) -> Numbers:
    """Numbers plus the slots of the rate and speed stories (a job or a vehicle)."""
    return lambda rng: {**numbers(rng), **_job_slots(rng)}


# ---- the kinds --------------------------------------------------------------------------------------

KINDS: tuple[Kind, ...] = (
    Kind("add", num_add, (
        "{name} {has} {a} {objs}. {He} {get} {b} more {objs} {place}. How many {objs} {does} {name} have now?",
        "{name} {has} {a} {objs}, and then {he} {get} {b} more. How many {objs} {does} {he} have in all?",
        "There {is_} a pile of {a} {objs}. {name} {get} {b} more and adds them to the pile. "
        "How many {objs} are in the pile now?",
        "After {name} {get} {b} {objs} {place}, how many {objs} {does} {he} have if {he} started with {a}?",
        "{name} started the day with {a} {objs} and {get} another {b}. What is the total number of {objs} "
        "{he} has now?",
    ), "{name} has {a} {objs} and gets {b} more. {a} + {b} = {answer}. The answer is {answer}."),

    Kind("take_away", num_sub, (
        "{name} {has} {a} {objs}. {He} {lose} {b} of them. How many {objs} {does} {name} have left?",
        "There {is_} {a} {objs} in a {box}. {name} {lose} {b}. How many {objs} are left in the {box}?",
        "{name} {has} {a} {objs} {place}, but {he} {lose} {b} of them. How many are left?",
        "How many {objs} {does} {name} have left if {he} {has} {a} and {lose} {b}?",
        "{name} {lose} {b} of {his} {a} {objs}. Find how many {objs} {he} still has.",
    ), "{name} has {a} {objs} and loses {b}. {a} - {b} = {answer}. The answer is {answer}."),

    Kind("give_away", num_sub, (
        "{name} {has} {a} {objs}. {He} {give} {b} of them to {name2}. How many {objs} {does} {name} have now?",
        "{name} {give} {b} {objs} to {name2}. Before that, {name} {has} {a} {objs}. "
        "How many {objs} {does} {name} have left?",
        "{name} {has} {a} {objs} and {give} {b} to {his} friend {name2}. How many {objs} {does} {name} keep?",
        "If {name} {has} {a} {objs} and {give} {name2} {b} of them, how many {objs} {does} {name} have left?",
        "{name2} gets {b} {objs} from {name}, who {has} {a} {objs}. How many {objs} does {name} have after that?",
    ), "{name} has {a} {objs} and gives {b} to {name2}. {a} - {b} = {answer}. The answer is {answer}."),

    Kind("change", num_change, (
        "{name} buys a {item} that costs ${price}. {He} pays with ${paid}. How much change does {he} get?",
        "A {item} costs ${price}. {name} gives the shopkeeper ${paid}. How many dollars of change does "
        "{name} get back?",
        "{name} has ${paid}. {He} spends ${price} on a {item}. How much money does {he} have left?",
        "How much change does {name} get if {he} pays ${paid} for a {item} that costs ${price}?",
        "With ${paid} in {his} pocket, {name} buys a {item} for ${price}. How much money is left?",
    ), "{name} pays ${paid} for a {item} that costs ${price}. {paid} - {price} = {answer}. "
       "The answer is {answer}.", tenses=("present",), things=False),

    Kind("buy_many", num_buy_many, (
        "{name} buys {n} {items} at ${price} each. {He} pays with ${paid}. How much change does {he} get?",
        "Each {item} costs ${price}. {name} buys {n} of them and pays ${paid}. How much change does {he} get?",
        "{name} has ${paid}. {He} buys {n} {items} for ${price} each. How much money does {he} have left?",
        "How much money does {name} have left if {he} starts with ${paid} and buys {n} {items} that cost "
        "${price} each?",
        "At the shop, {items} cost ${price} each. {name} pays for {n} {items} with ${paid}. "
        "What is {his} change?",
    ), "{n} {items} cost {n} * {price} = {cost} dollars. {name} pays ${paid}. {paid} - {cost} = {answer}. "
       "The answer is {answer}.", tenses=("present",), things=False),

    Kind("share", num_div, (
        "{name} has {total} {objs}. {He} shares them equally among {n} friends. How many {objs} does "
        "each friend get?",
        "{total} {objs} are split equally into {n} {boxes}. How many {objs} are in each {box}?",
        "{name} wants to put {total} {objs} into {n} {boxes} with the same number in each. "
        "How many {objs} go in each {box}?",
        "How many {objs} does each child get if {n} children share {total} {objs} equally?",
        "There are {total} {objs} to share. {n} friends each get the same amount. How many {objs} "
        "does each friend get?",
    ), "{total} {objs} are shared by {n}. {total} / {n} = {answer}. The answer is {answer}.",
        tenses=("present",)),

    Kind("groups", num_mul, (
        "{name} has {n} {boxes}. Each {box} holds {k} {objs}. How many {objs} does {name} have in total?",
        "There are {k} {objs} in each {box}. {name} buys {n} {boxes}. How many {objs} does {he} buy?",
        "{name} fills {n} {boxes} with {k} {objs} each. How many {objs} did {he} use?",
        "How many {objs} are there in {n} {boxes} if every {box} has {k} {objs}?",
        "A shop sells {objs} in {boxes} of {k}. {name} takes home {n} {boxes}. How many {objs} is that?",
    ), "{n} {boxes} with {k} {objs} each. {n} * {k} = {answer}. The answer is {answer}.",
        tenses=("present",)),

    Kind("rate", _with_jobs(num_mul), (
        "{name} {job} {k} {unit_objs} every {unit}. How many {unit_objs} does {he} {job_base} in {n} {units}?",
        "Every {unit}, {name} {job} {k} {unit_objs}. How many {unit_objs} does {he} {job_base} after {n} {units}?",
        "In one {unit} {name} {job} {k} {unit_objs}. How many {unit_objs} in {n} {units}?",
        "How many {unit_objs} does {name} {job_base} in {n} {units} if {he} {job} {k} {unit_objs} each {unit}?",
        "{name} {job} {k} {unit_objs} per {unit} for {n} {units}. What is the total?",
    ), "{name} {job} {k} {unit_objs} each {unit} for {n} {units}. {n} * {k} = {answer}. "
       "The answer is {answer}.", tenses=("present",), things=False),

    Kind("speed", _with_jobs(num_mul), (
        "A {vehicle} travels {k} {dist} every hour. How far does it travel in {n} hours?",
        "In one hour a {vehicle} goes {k} {dist}. How many {dist} does it go in {n} hours?",
        "{name} rides in a {vehicle} for {n} hours at {k} {dist} per hour. How many {dist} does {he} travel?",
        "How many {dist} does a {vehicle} cover in {n} hours if it moves {k} {dist} each hour?",
        "Moving at {k} {dist} an hour, a {vehicle} drives for {n} hours. What distance does it cover?",
    ), "The {vehicle} goes {k} {dist} each hour for {n} hours. {n} * {k} = {answer}. The answer is {answer}.",
        tenses=("present",), things=False),

    Kind("ages", num_ages, (
        "{name} is {a} years old. {name2} is {b} years older than {name}. How old will {name2} be in {c} years?",
        "{name2} is {b} years older than {name}, who is {a}. How old will {name2} be {c} years from now?",
        "{name} is {a}. {His} friend {name2} is {b} years older. What will {name2}'s age be in {c} years?",
        "In {c} years, how old will {name2} be if {name2} is {b} years older than {name} and {name} is {a} "
        "years old?",
        "{name2} was born {b} years before {name}. {name} is {a} years old now. How old will {name2} be in "
        "{c} years?",
    ), "{name2} is {a} + {b} = {older} years old. In {c} years {name2} will be {older} + {c} = {answer}. "
       "The answer is {answer}.", tenses=("present",), things=False),

    Kind("trip", num_trip, (
        "A trip is {total} km long. {name} drives {d1} km in the morning and {d2} km in the afternoon. "
        "How many km are left?",
        "{name} must travel {total} km. {He} covers {d1} km on the first day and {d2} km on the second day. "
        "How many km does {he} still have to go?",
        "The road to the city is {total} km. A bus has gone {d1} km, then {d2} km more. How far is it from "
        "the city now?",
        "How many km are left on a {total} km trip after {name} drives {d1} km and then {d2} km?",
        "{name} walks {d1} km and then {d2} km of a {total} km hike. How many km of the hike are left?",
    ), "So far {d1} + {d2} = {done} km. {total} - {done} = {answer}. The answer is {answer}.",
        tenses=("present",), things=False),

    Kind("more_than", num_sub, (
        "{name} has {a} {objs}. {name2} has {b} {objs}. How many more {objs} does {name} have than {name2}?",
        "{name2} has {b} {objs} and {name} has {a}. How many more {objs} does {name} have?",
        "{name} collected {a} {objs} and {name2} collected {b}. How many more did {name} collect?",
        "How many more {objs} does {name} have than {name2}, if {name} has {a} and {name2} has {b}?",
        "{name} owns {a} {objs}, while {name2} owns only {b}. By how many {objs} does {name} have more?",
    ), "{name} has {a} and {name2} has {b}. {a} - {b} = {answer}. The answer is {answer}."),

    Kind("fewer_together", num_fewer_together, (
        "{name} has {a} {objs}. {name2} has {b} fewer {objs} than {name}. How many {objs} do they have "
        "together?",
        "{name2} has {b} fewer {objs} than {name}. {name} has {a}. How many {objs} do they have in all?",
        "{name} picked {a} {objs}. {name2} picked {b} fewer than {name}. How many {objs} did they pick "
        "altogether?",
        "How many {objs} do {name} and {name2} have together if {name} has {a} and {name2} has {b} fewer?",
        "{name} has {a} {objs}, and {name2} has {b} less than that. What is the total for both of them?",
    ), "{name2} has {a} - {b} = {other} {objs}. Together they have {a} + {other} = {answer}. "
       "The answer is {answer}.", tenses=("present",)),

    Kind("times", num_mul, (
        "{name} has {k} {objs}. {name2} has {n} times as many {objs}. How many {objs} does {name2} have?",
        "{name2} has {n} times as many {objs} as {name}. {name} has {k}. How many {objs} does {name2} have?",
        "{name} made {k} {objs}. {name2} made {n} times as many. How many {objs} did {name2} make?",
        "How many {objs} does {name2} have if {name2} has {n} times the {k} {objs} that {name} has?",
        "{name} has {k} {objs}, and {name2} has {n} times that number. Find how many {objs} {name2} has.",
    ), "{name2} has {n} times {k}. {n} * {k} = {answer}. The answer is {answer}.", tenses=("present",)),

    Kind("three_colours", num_three, (
        "{name} has {a} red {objs}, {b} blue {objs} and {c} green {objs}. How many {objs} does {he} have?",
        "In a {box} there are {a} red {objs}, {b} blue ones and {c} yellow ones. How many {objs} are in the "
        "{box}?",
        "{name} counts {a} {objs} on Monday, {b} on Tuesday and {c} on Wednesday. How many {objs} did {he} "
        "count in all?",
        "How many {objs} are there altogether if there are {a} white {objs}, {b} purple {objs} and {c} "
        "red {objs}?",
        "{name} sorted {his} {objs}: {a} are green, {b} are red and {c} are blue. What is the total number "
        "of {objs}?",
    ), "{a} + {b} = {ab}. {ab} + {c} = {answer}. The answer is {answer}.", tenses=("present",)),

    Kind("together", num_together, (
        "{name} and {name2} have {total} {objs} together. {name} has {a}. How many {objs} does {name2} have?",
        "Together, {name} and {name2} own {total} {objs}. If {name} owns {a}, how many does {name2} own?",
        "{name} has {a} {objs}. {name} and {name2} have {total} {objs} in all. How many {objs} does "
        "{name2} have?",
        "How many {objs} does {name2} have if {name2} and {name} have {total} in total and {name} has {a}?",
        "There are {total} {objs} shared between {name} and {name2}. {a} belong to {name}. How many belong "
        "to {name2}?",
    ), "{name2} has {total} - {a} = {answer}. The answer is {answer}.", tenses=("present",)),

    Kind("buy_give", num_buy_give, (
        "{name} has {a} {objs}. {He} buys {n} {boxes} with {k} {objs} in each. Then {he} gives {c} {objs} to "
        "{name2}. How many {objs} does {name} have now?",
        "{name} starts with {a} {objs}. {He} gets {n} {boxes} of {k} {objs}, and then {he} gives away {c}. "
        "How many {objs} does {he} have now?",
        "{name} had {a} {objs}. {He} bought {n} more {boxes}, each with {k} {objs}, and gave {c} to {name2}. "
        "How many {objs} does {name} have left?",
        "How many {objs} does {name} have if {he} had {a}, bought {n} {boxes} of {k} and gave {c} away?",
        "{name} adds {n} {boxes} of {k} {objs} to the {a} {objs} {he} has. Later {he} gives {c} {objs} to "
        "{name2}. How many {objs} are left?",
    ), "{n} {boxes} of {k} is {n} * {k} = {bought}. {name} then has {a} + {bought} = {have}. "
       "{He} gives away {c}, so {have} - {c} = {answer}. The answer is {answer}.", tenses=("present",)),

    Kind("four_steps", num_four, (
        "{name} has {a} {objs}. {He} finds {b} more. {He} loses {c}. Then {he} buys {n} {boxes} with {k} {objs} "
        "each. How many {objs} does {he} have now?",
        "{name} starts with {a} {objs} and gets {b} more. {He} then loses {c} {objs}. After that {he} buys "
        "{n} {boxes} of {k}. How many {objs} does {he} have?",
        "{name} had {a} {objs}. {He} found {b} {objs}, lost {c}, and then bought {n} {boxes} of {k} {objs}. "
        "How many {objs} does {name} have in the end?",
        "How many {objs} does {name} end with if {he} begins with {a}, gets {b}, loses {c}, and buys {n} "
        "{boxes} of {k}?",
        "First {name} has {a} {objs}. Next {he} picks up {b} more, then drops {c}. Last, {he} gets {n} "
        "{boxes} holding {k} {objs} each. How many {objs} does {he} have now?",
    ), "{a} + {b} = {ab}. {ab} - {c} = {left}. {n} {boxes} of {k} is {n} * {k} = {bought}. "
       "{left} + {bought} = {answer}. The answer is {answer}.", tenses=("present",)),

    Kind("half", num_half, (
        "{name} has {a} {objs}. {He} gives half of them to {name2}. How many {objs} does {name} have left?",
        "{name} {has} {a} {objs} and {give} half of them away. How many {objs} {does} {he} keep?",
        "Half of {name}'s {a} {objs} are {colour}. How many {colour} {objs} does {name} have?",
        "How many {objs} are left if {name} has {a} {objs} and uses half of them?",
        "{name} splits {a} {objs} into two equal piles. How many {objs} are in each pile?",
    ), "Half of {a} is {a} / 2 = {answer}. The answer is {answer}."),

    Kind("share_left", num_share_left, (
        "{name} has {a} {objs}. {He} gives {q} {objs} to each of {n} friends. How many {objs} does {he} have "
        "left?",
        "{name} has {a} {objs} and {n} friends. Each friend gets {q} {objs}. How many {objs} are left for "
        "{name}?",
        "There are {a} {objs}. {n} children each take {q}. How many {objs} are left?",
        "How many {objs} are left if {name} starts with {a} and gives {q} to each of {his} {n} cousins?",
        "{n} students each take {q} {objs} from a {box} of {a} {objs}. How many {objs} are still in the {box}?",
    ), "{n} friends get {q} each: {n} * {q} = {shared}. {a} - {shared} = {answer}. The answer is {answer}.",
        tenses=("present",)),

    Kind("rate_total", _with_jobs(num_rate_total), (
        "{name} {job} {p} {unit_objs} each {unit} for {t} {units}. Then {he} {job} {extra} more. How many "
        "{unit_objs} does {he} {job_base} in all?",
        "For {t} {units}, {name} {job} {p} {unit_objs} every {unit}. After that {he} {job} {extra} more. What "
        "is the total?",
        "Every {unit} {name} {job} {p} {unit_objs}. {He} does this for {t} {units} and then {job} {extra} extra. "
        "How many {unit_objs} is that?",
        "How many {unit_objs} does {name} {job_base} if {he} {job} {p} per {unit} for {t} {units} plus {extra} "
        "more?",
        "{name} {job} {extra} {unit_objs} on the first day. Then {he} {job} {p} {unit_objs} each {unit} for "
        "{t} {units}. How many {unit_objs} in total?",
    ), "{t} {units} of {p} is {t} * {p} = {made}. {made} + {extra} = {answer}. The answer is {answer}.",
        tenses=("present",), things=False),
)

KIND_BY_NAME = {k.name: k for k in KINDS}


# ---- splits -----------------------------------------------------------------------------------------

HELD_OUT_NUMBERS_MODULUS = 8   # held-out problems: (kind, numbers) hash == 0 mod this


def held_out_phrasing(kind: Kind) -> int:
    return len(kind.phrasings) - 1


def _numbers_held_out(problem: Problem) -> bool:
    key = problem.kind + ":" + ",".join(re.findall(r"\d+", problem.question))
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") % HELD_OUT_NUMBERS_MODULUS == 0


def _stream(seed: int, held_out: bool, distractor_rate: float) -> Iterator[Problem]:
    rng = random.Random(seed)
    while True:
        kind = rng.choice(KINDS)
        if held_out:
            phrasing = held_out_phrasing(kind)
        else:
            phrasing = rng.randrange(len(kind.phrasings) - 1)
        p = kind.render(rng, phrasing, rng.random() < distractor_rate)
        if _numbers_held_out(p) == held_out:
            yield p


def make_split(n: int, seed: int = 0, held_out: bool = False, distractor_rate: float = 0.2) -> list[Problem]:
    """``n`` distinct problems of the training (``held_out=False``) or held-out split.

    Training problems use every phrasing but the last of each kind; held-out problems use only
    the last one, and numbers no training problem can have.
    """
    seen: set[str] = set()
    out = []
    for p in _stream(seed * 2 + int(held_out), held_out, distractor_rate):
        if p.question in seen:
            continue
        seen.add(p.question)
        out.append(p)
        if len(out) == n:
            return out
    raise AssertionError("unreachable")


def write_jsonl(problems: Iterable[Problem], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p in problems:
            f.write(json.dumps(p.as_dict()) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[Problem]:
    with Path(path).open() as f:
        return [Problem(**json.loads(line)) for line in f if line.strip()]
