"""Grade-school arithmetic word problems with worked solutions (GSM8K in miniature).

Every problem comes from one of ``KINDS`` (adding, taking away, giving away, buying with
change, sharing, groups of, rates, ages, distances, comparisons, two- to four-step
combinations...). A kind draws its numbers (every intermediate result a whole number between
0 and about 1000), then writes the question from interchangeable sentence forms: each fact of
the story and the question has several wordings, the question may come first, or the whole
problem may be one question-first sentence. Names, objects, verbs and tense vary, and now and
then a distractor sentence with an irrelevant number is added. The solution restates the
problem, works out every operation column by column (``arithmetic.py``) and ends with the
answer line ``The answer is N.``::

    Q: Ava had 245 shells. She found 38 more at the beach. How many shells does Ava have now?
    A: Ava has 245 shells and gets 38 more. 5 + 8 + 0 = 13, 4 + 3 + 1 = 8, 2 + 0 + 0 = 2,
       so 245 + 38 = 283. The answer is 283.

**Held-out phrasings.** The last wording of every sentence form (each fact, the question, the
one-sentence form) is reserved for evaluation: training problems never use one. A held-out
problem uses the reserved wording in at least one of its sentences (each independently with
probability one half), or the reserved one-sentence form, so its phrasing (its template, the
sequence of wordings) never occurs in training and it holds at least one sentence form the
model never saw. Held-out problems also differ from every training problem in their numbers
(a hash of kind and numbers decides the split). The evaluation thus measures generalisation,
not recall. ``unseen_numbers`` gives the opposite check: training phrasings, held-out numbers.

Pure Python and deterministic: ``make_split(n, seed, held_out)`` gives the same problems
every time.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

from fastdllm.models import extract_answer

from examples.word_problems.arithmetic import split_products, steps

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
# things one pays for
ITEMS = [("book", "books"), ("toy", "toys"), ("lamp", "lamps"), ("pair of shoes", "pairs of shoes"),
         ("game", "games"), ("jacket", "jackets"), ("kite", "kites"), ("watch", "watches"), ("ticket", "tickets"),
         ("backpack", "backpacks"), ("pen", "pens"), ("notebook", "notebooks"), ("hat", "hats"), ("plant", "plants"),
         ("mug", "mugs"), ("scarf", "scarves"), ("puzzle", "puzzles"), ("ball", "balls")]
CONTAINERS = [("box", "boxes"), ("bag", "bags"), ("pack", "packs"), ("basket", "baskets"), ("jar", "jars"),
              ("crate", "crates"), ("tray", "trays"), ("bucket", "buckets"), ("shelf", "shelves")]
PLACES = ["at the park", "at school", "at the beach", "at the market", "in the garden", "at the fair",
          "on the way home", "at the library", "in the attic"]
COLOURS = ["red", "blue", "green", "yellow", "white", "purple"]
# verbs, (present, past), third person singular
V_GET = [("buys", "bought"), ("finds", "found"), ("gets", "got"), ("collects", "collected"),
         ("receives", "received"), ("wins", "won"), ("picks up", "picked up")]
V_LOSE = [("loses", "lost"), ("uses", "used"), ("breaks", "broke"), ("drops", "dropped"), ("sells", "sold"),
          ("throws away", "threw away")]
V_GIVE = [("gives", "gave"), ("hands", "handed"), ("sends", "sent"), ("passes", "passed")]
# (verb, base form, what, per, plural of per)
JOBS = [("earns", "earn", "dollars", "hour", "hours"), ("reads", "read", "pages", "day", "days"),
        ("bakes", "bake", "cookies", "day", "days"), ("saves", "save", "dollars", "week", "weeks"),
        ("paints", "paint", "pictures", "month", "months"), ("writes", "write", "lines", "minute", "minutes"),
        ("folds", "fold", "paper cranes", "hour", "hours")]
VEHICLES = [("train", "km"), ("car", "km"), ("bus", "km"), ("boat", "miles"), ("truck", "miles"),
            ("cyclist", "km"), ("plane", "miles")]


# ---- a problem ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    kind: str
    phrasing: str          # which wording each sentence used, e.g. "f1.2 f0.0 q3" or "one-sentence 1"
    question: str
    solution: str          # worked solution, ending with "The answer is N."
    answer: int
    held_out: bool = False

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


# ---- stories --------------------------------------------------------------------------------------

class Story(dict):
    """Slot values for the sentence forms: ``{name}``, ``{He}``, ``{his}``, numbers, objects, verbs..."""

    def __missing__(self, key):  # pragma: no cover - a typo in a template
        raise KeyError(f"template slot {{{key}}} is not set")


def person(rng: random.Random, avoid: str = "") -> dict:
    girl = rng.random() < 0.5
    name = rng.choice([n for n in (GIRLS if girl else BOYS) if n != avoid])
    return {"name": name, "he": "she" if girl else "he", "He": "She" if girl else "He",
            "him": "her" if girl else "him", "his": "her" if girl else "his", "His": "Her" if girl else "His"}


def story(rng: random.Random, past: bool, numbers: dict) -> Story:
    p1 = person(rng)
    p2 = person(rng, avoid=p1["name"])
    (thing, things), (item, items), (box, boxes) = rng.choice(THINGS), rng.choice(ITEMS), rng.choice(CONTAINERS)
    job, job_base, unit_objs, unit, units = rng.choice(JOBS)
    vehicle, dist = rng.choice(VEHICLES)
    pick = lambda verbs: rng.choice(verbs)[1 if past else 0]  # noqa: E731
    s = Story(**p1, **{k + "2": v for k, v in p2.items()}, obj=thing, objs=things, item=item, items=items, box=box,
              boxes=boxes, place=rng.choice(PLACES), colour=rng.choice(COLOURS), get=pick(V_GET),
              lose=pick(V_LOSE), give=pick(V_GIVE), has="had" if past else "has", does="did" if past else "does",
              is_="was" if past else "is", are="were" if past else "are", job=job, job_base=job_base,
              unit_objs=unit_objs, unit=unit, units=units, vehicle=vehicle, dist=dist)
    s.update(numbers)
    return s


def distractor(rng: random.Random, s: Story) -> str:
    """An irrelevant sentence with a number (never asked about)."""
    d = rng.randint(2, 60)
    return rng.choice([
        f"{s['name2']} has {d} {rng.choice(THINGS)[1]} at home.",
        f"The {s['box']} is {d} centimeters tall.",
        f"It is {d} minutes past noon.",
        f"{s['His']} house has {rng.randint(2, 9)} windows.",
        f"{s['name']} lives {d} meters from {s['name2']}.",
    ])


# ---- kinds ----------------------------------------------------------------------------------------

Numbers = Callable[[random.Random], dict]
Solution = Callable[[Story], str]


@dataclass(frozen=True)
class Kind:
    """A kind of problem and its sentence forms; the last wording of each form is held out."""

    name: str
    numbers: Numbers                          # rng -> numbers, including "answer"
    facts: tuple[tuple[str, ...], ...]        # the story's sentences, each with its wordings
    questions: tuple[str, ...]                # the question's wordings
    one_sentence: tuple[str, ...]             # the whole problem as one question-first sentence
    solution: Solution
    past: bool = False                        # the facts may be told in the past tense
    things: bool = True                       # distractor sentences make sense
    shuffle_facts: bool = False               # the facts can come in any order

    def render(self, rng: random.Random, held_out: bool, distractor_rate: float) -> Problem:
        nums = self.numbers(rng)
        s = story(rng, self.past and rng.random() < 0.4, nums)
        if rng.random() < 0.2:  # the one-sentence form
            k = len(self.one_sentence) - 1 if held_out else rng.randrange(len(self.one_sentence) - 1)
            sentences, phrasing = [_fill(self.one_sentence[k], s)], f"one-sentence {k}"
        else:
            forms = [*self.facts, self.questions]
            if held_out:  # the reserved wording in a random non-empty subset of the sentences
                reserved = [rng.random() < 0.5 for _ in forms]
                if not any(reserved):
                    reserved[rng.randrange(len(forms))] = True
                picks = [len(f) - 1 if r else rng.randrange(len(f) - 1) for f, r in zip(forms, reserved)]
            else:
                picks = [rng.randrange(len(f) - 1) for f in forms]
            order = list(range(len(self.facts)))
            if self.shuffle_facts:
                rng.shuffle(order)
            sentences = [_fill(self.facts[i][picks[i]], s) for i in order]
            question = _fill(self.questions[picks[-1]], s)
            question_first = rng.random() < 0.15
            sentences = [question, *sentences] if question_first else [*sentences, question]
            phrasing = " ".join([f"f{i}.{picks[i]}" for i in order] + [f"q{picks[-1]}"] + (["Q1"] if question_first
                                                                                            else []))
        if self.things and rng.random() < distractor_rate:
            sentences.insert(rng.randint(0, len(sentences) - 1), distractor(rng, s))
        solution = self.solution(s)
        assert solution.endswith(f"The answer is {nums['answer']}."), (self.name, solution)
        return Problem(self.name, phrasing, " ".join(sentences), solution, nums["answer"], held_out)


def _fill(template: str, s: Story) -> str:
    text = re.sub(r"\s+", " ", template.format_map(s)).strip()
    return text[0].upper() + text[1:]


def work(*computations: tuple[int, str, int]) -> str:
    """The worked computations, one sentence each."""
    return " ".join(_fill(steps(a, op, b), Story()) + "." for a, op, b in computations)


def answer(n: int) -> str:
    return f"The answer is {n}."


# ---- number draws (every intermediate result a whole number in [0, ~1000]) --------------------------

def _size(rng) -> int:
    """An operand: mostly two or three digits, sometimes one."""
    r = rng.random()
    return rng.randint(2, 9) if r < 0.1 else rng.randint(10, 99) if r < 0.5 else rng.randint(100, 600)


def num_add(rng):
    a, b = _size(rng), _size(rng)
    return {"a": a, "b": b, "answer": a + b}


def num_sub(rng):
    a = rng.randint(12, 999)
    b = rng.randint(1, a - 1)
    return {"a": a, "b": b, "answer": a - b}


def num_mul(rng):
    n, k = rng.randint(2, 9), rng.randint(2, 99)
    return {"n": n, "k": k, "answer": n * k}


def num_div(rng):
    n, q = rng.randint(2, 9), rng.randint(2, 99)
    return {"n": n, "total": n * q, "answer": q}


def num_change(rng):
    price = rng.randint(3, 400)
    paid = rng.choice([p for p in (5, 10, 20, 50, 100, 200, 500, 1000) if p > price])
    return {"price": price, "paid": paid, "answer": paid - price}


def num_buy_many(rng):
    n, price = rng.randint(2, 9), rng.randint(2, 60)
    cost = n * price
    paid = rng.choice([p for p in (10, 20, 50, 100, 200, 500, 1000) if p > cost])
    return {"n": n, "price": price, "cost": cost, "paid": paid, "answer": paid - cost}


def num_ages(rng):
    a, b, c = rng.randint(5, 60), rng.randint(2, 30), rng.randint(2, 20)
    return {"a": a, "b": b, "c": c, "older": a + b, "answer": a + b + c}


def num_trip(rng):
    total = rng.randint(120, 990)
    d1 = rng.randint(10, total // 2)
    d2 = rng.randint(10, total - d1 - 1)
    return {"total": total, "d1": d1, "d2": d2, "done": d1 + d2, "answer": total - d1 - d2}


def num_fewer_together(rng):
    a = rng.randint(20, 480)
    b = rng.randint(1, a - 1)
    return {"a": a, "b": b, "other": a - b, "answer": 2 * a - b}


def num_three(rng):
    a, b, c = rng.randint(2, 300), rng.randint(2, 300), rng.randint(2, 300)
    return {"a": a, "b": b, "c": c, "ab": a + b, "answer": a + b + c}


def num_together(rng):
    a, other = rng.randint(5, 500), rng.randint(5, 480)
    return {"a": a, "total": a + other, "answer": other}


def num_buy_give(rng):
    a, n, k = rng.randint(10, 400), rng.randint(2, 9), rng.randint(2, 50)
    have = a + n * k
    c = rng.randint(1, have - 1)
    return {"a": a, "n": n, "k": k, "bought": n * k, "have": have, "c": c, "answer": have - c}


def num_four(rng):
    a, b = rng.randint(10, 300), rng.randint(2, 200)
    c = rng.randint(1, a + b - 1)
    n, k = rng.randint(2, 9), rng.randint(2, 40)
    return {"a": a, "b": b, "ab": a + b, "c": c, "left": a + b - c, "n": n, "k": k, "bought": n * k,
            "answer": a + b - c + n * k}


def num_half(rng):
    half = rng.randint(3, 450)
    return {"a": 2 * half, "answer": half}


def num_share_left(rng):
    n, q = rng.randint(2, 9), rng.randint(2, 80)
    a = n * q + rng.randint(1, min(300, 1000 - n * q))
    return {"a": a, "n": n, "q": q, "shared": n * q, "answer": a - n * q}


def num_rate_total(rng):
    p, t = rng.randint(2, 99), rng.randint(2, 9)
    extra = rng.randint(1, 200)
    return {"p": p, "t": t, "made": p * t, "extra": extra, "answer": p * t + extra}


# ---- the kinds --------------------------------------------------------------------------------------

KINDS: tuple[Kind, ...] = (
    Kind("add", num_add,
         facts=(("{name} {has} {a} {objs}.", "At first {name} {has} {a} {objs}.", "{name} owns {a} {objs}.",
                 "{name} starts with {a} {objs}.", "There {are} {a} {objs} in {name}'s {box}.",
                 "{name} keeps {a} {objs} in a drawer.",
                 "{name} has a collection of {a} {objs}."),
                ("{He} {get} {b} more {objs} {place}.", "Then {he} {get} {b} more.",
                 "{name2} gives {him} {b} more {objs}.", "{He} {get} another {b} {objs}.",
                 "Later {he} {get} {b} more {objs}.", "After that {name2} hands {him} {b} {objs}.",
                 "Then {b} more {objs} are added to {his} collection.")),
         questions=("How many {objs} {does} {name} have now?", "How many {objs} {does} {he} have in all?",
                    "How many {objs} does {name} have altogether?", "What is the total number of {objs} now?",
                    "How many {objs} does {he} have now?", "Find how many {objs} {name} has now.",
                    "What number of {objs} does {name} have at the end?"),
         one_sentence=("How many {objs} does {name} have if {he} had {a} and {get} {b} more?",
                       "After getting {b} more {objs}, how many does {name} have if {he} started with {a}?",
                       "If {name} has {a} {objs} and gets {b} more, how many {objs} does {he} have now?",
                       "If {b} more {objs} are added to the {a} {objs} {name} owns, what number of {objs} does "
                       "{name} have?"),
         solution=lambda s: f"{s['name']} has {s['a']} {s['objs']} and gets {s['b']} more. "
                            f"{work((s['a'], '+', s['b']))} {answer(s['answer'])}",
         past=True),

    Kind("take_away", num_sub,
         facts=(("{name} {has} {a} {objs}.", "There {are} {a} {objs} in {name}'s {box}.",
                 "{name} starts with {a} {objs}.", "{name} owns {a} {objs}.", "At first {name} {has} {a} {objs}.",
                 "{name} keeps {a} {objs} in a drawer.",
                 "{name} has a collection of {a} {objs}."),
                ("{He} {lose} {b} of them.", "Then {he} {lose} {b} {objs} {place}.", "{b} of the {objs} get lost.",
                 "{He} {lose} {b}.", "Later {he} {lose} {b} {objs}.", "Sadly, {b} of them are gone.",
                 "Then {b} of those {objs} are gone.")),
         questions=("How many {objs} {does} {name} have left?", "How many {objs} are left?",
                    "How many {objs} does {name} still have?", "How many {objs} remain?",
                    "How many {objs} does {he} have left?", "Find how many {objs} {name} still has.",
                    "What number of {objs} does {name} have at the end?"),
         one_sentence=("How many {objs} does {name} have left if {he} had {a} and {lose} {b}?",
                       "If {name} {lose} {b} of {his} {a} {objs}, how many are left?",
                       "After losing {b} of {his} {a} {objs}, how many {objs} does {name} still have?",
                       "If {name} starts with {a} {objs} and {b} of them are gone, what number of {objs} does "
                       "{name} have at the end?"),
         solution=lambda s: f"{s['name']} has {s['a']} {s['objs']} and loses {s['b']}. "
                            f"{work((s['a'], '-', s['b']))} {answer(s['answer'])}",
         past=True),

    Kind("give_away", num_sub,
         facts=(("{name} {has} {a} {objs}.", "{name} starts with {a} {objs}.", "{name} owns {a} {objs}.",
                 "There {are} {a} {objs} in {name}'s {box}.", "At first {name} {has} {a} {objs}.",
                 "{name} keeps {a} {objs} in a drawer.",
                 "{name} has a collection of {a} {objs}."),
                ("{He} {give} {b} of them to {name2}.", "{He} {give} {name2} {b} {objs}.",
                 "{name2} gets {b} {objs} from {him}.", "Then {he} {give} {b} {objs} to {his} friend {name2}.",
                 "Later {he} {give} {b} {objs} to {name2}.", "After that {name2} receives {b} of them.",
                 "Then {name2} receives {b} of those {objs} from {him}.")),
         questions=("How many {objs} {does} {name} have now?", "How many {objs} does {name} have left?",
                    "How many {objs} does {name} keep?", "How many {objs} does {he} have after that?",
                    "How many {objs} does {he} have left?", "Find how many {objs} {name} keeps.",
                    "What number of {objs} does {name} have at the end?"),
         one_sentence=("If {name} has {a} {objs} and gives {name2} {b} of them, how many does {name} have left?",
                       "How many {objs} does {name} keep after giving {b} of {his} {a} {objs} to {name2}?",
                       "After giving {b} {objs} to {name2}, how many {objs} does {name} have if {he} had {a}?",
                       "If {name2} receives {b} of the {a} {objs} {name} owns, what number of {objs} does {name} "
                       "have at the end?"),
         solution=lambda s: f"{s['name']} has {s['a']} {s['objs']} and gives {s['b']} to {s['name2']}. "
                            f"{work((s['a'], '-', s['b']))} {answer(s['answer'])}",
         past=True),

    Kind("change", num_change,
         facts=(("{name} buys a {item} that costs ${price}.", "A {item} costs ${price}.",
                 "{name} wants a {item} for ${price}.", "The price of a {item} is ${price}.",
                 "{name} picks a {item} that costs ${price}.", "At the shop, a {item} costs ${price}.",
                 "At the store, {name} wants a {item} with a price of ${price}."),
                ("{name} pays with ${paid}.", "{name} gives the shopkeeper ${paid}.", "{name} hands over ${paid}.",
                 "{name} pays with a ${paid} bill.", "{name} gives the cashier ${paid}.", "To pay, {name} uses ${paid}.",
                 "{name} has ${paid} and hands it to the cashier.")),
         questions=("How much change does {name} get?", "How many dollars of change does {name} get back?",
                    "How much money does {name} get back?", "What is {name}'s change?",
                    "How much change does {he} get?", "How many dollars does {name} get back?",
                    "What amount of money should the cashier give back?"),
         one_sentence=("How much change does {name} get if {he} pays ${paid} for a {item} that costs ${price}?",
                       "If a {item} costs ${price} and {name} pays ${paid}, how much change does {he} get?",
                       "When {name} pays ${paid} for a {item} that costs ${price}, what is {his} change?",
                       "If {name} hands the cashier ${paid} for a {item} with a price of ${price}, what amount of "
                       "money should the cashier give back?"),
         solution=lambda s: f"{s['name']} pays ${s['paid']} for a {s['item']} that costs ${s['price']}. "
                            f"{work((s['paid'], '-', s['price']))} {answer(s['answer'])}",
         things=False),

    Kind("buy_many", num_buy_many,
         facts=(("{name} buys {n} {items}.", "{name} needs {n} {items}.", "{name} takes {n} {items} to the counter.",
                 "{name} wants {n} {items}.", "At the store, {name} picks {n} {items}.", "{name} gets {n} {items}.",
                 "{name} wants to buy {n} {items} at the shop."),
                ("Each {item} costs ${price}.", "They cost ${price} each.", "One {item} is ${price}.",
                 "The {items} are ${price} each.", "Every {item} costs ${price}.", "The price of one {item} is ${price}.",
                 "Each one has a price of ${price}."),
                ("{He} pays with ${paid}.", "{He} gives the cashier ${paid}.", "{He} has ${paid}.",
                 "{He} pays with a ${paid} bill.", "{He} hands over ${paid}.", "To pay, {he} uses ${paid}.",
                 "{He} gives the shopkeeper a ${paid} bill.")),
         questions=("How much change does {he} get?", "How much money does {name} have left?",
                    "How many dollars does {name} get back?", "What is {his} change?",
                    "How much change does {name} get?", "How much money does {he} get back?",
                    "What amount of money should the shopkeeper give back?"),
         one_sentence=("How much change does {name} get if {he} buys {n} {items} at ${price} each and pays ${paid}?",
                       "If {items} cost ${price} each and {name} buys {n} with ${paid}, how much money is left?",
                       "When {name} pays ${paid} for {n} {items} that cost ${price} each, what is {his} change?",
                       "If every {item} costs ${price} and {name} hands over ${paid} for {n} of them, what amount of "
                       "money should the shopkeeper give back?"),
         solution=lambda s: f"{s['name']} buys {s['n']} {s['items']} at ${s['price']} each and pays ${s['paid']}. "
                            f"{work((s['n'], '*', s['price']), (s['paid'], '-', s['cost']))} {answer(s['answer'])}",
         things=False),

    Kind("share", num_div,
         facts=(("{name} has {total} {objs}.", "There are {total} {objs}.", "{name} brings {total} {objs}.",
                 "{name} bakes {total} {objs}.", "A pile of {total} {objs} is on the table.",
                 "{name} keeps {total} {objs} in a drawer.",
                 "{name} has a collection of {total} {objs}."),
                ("{He} shares them equally among {n} friends.", "{n} friends share them equally.",
                 "{name} splits them equally between {n} friends.", "They are shared equally by {n} friends.",
                 "{He} gives them out equally to {n} friends.", "{n} friends get the same number of them.",
                 "{He} splits them into {n} equal shares for {his} friends.")),
         questions=("How many {objs} does each friend get?", "How many {objs} are in each share?",
                    "How many {objs} does one friend get?", "How many {objs} does every friend get?",
                    "How many {objs} does each one get?", "Find how many {objs} each friend gets.",
                    "What number of {objs} does each friend get?"),
         one_sentence=("How many {objs} does each friend get if {n} friends share {total} {objs} equally?",
                       "If {total} {objs} are split equally among {n} friends, how many does each get?",
                       "When {name} shares {total} {objs} equally between {n} friends, how many {objs} does each "
                       "friend get?",
                       "If {name} splits {total} {objs} into {n} equal shares, what number of {objs} is in each "
                       "share?"),
         solution=lambda s: f"{s['total']} {s['objs']} are shared by {s['n']}. "
                            f"{work((s['total'], '/', s['n']))} {answer(s['answer'])}"),

    Kind("groups", num_mul,
         facts=(("{name} has {n} {boxes}.", "{name} buys {n} {boxes}.", "There are {n} {boxes}.",
                 "{name} fills {n} {boxes}.", "{name} gets {n} {boxes}.", "On the shelf there are {n} {boxes}.",
                 "{name} keeps {n} {boxes} in the attic."),
                ("Each {box} holds {k} {objs}.", "There are {k} {objs} in each {box}.",
                 "Every {box} has {k} {objs}.", "Each {box} has {k} {objs} inside.",
                 "Each one holds {k} {objs}.", "In every {box} there are {k} {objs}.",
                 "Every one of them holds {k} {objs}.")),
         questions=("How many {objs} are there in total?", "How many {objs} does {name} have?",
                    "How many {objs} are there altogether?", "How many {objs} are in all the {boxes}?",
                    "How many {objs} are there in all?", "Find the total number of {objs}.",
                    "What number of {objs} is in the {boxes} altogether?"),
         one_sentence=("How many {objs} are there in {n} {boxes} if every {box} has {k} {objs}?",
                       "If each {box} holds {k} {objs}, how many {objs} are in {n} {boxes}?",
                       "When {name} fills {n} {boxes} with {k} {objs} each, how many {objs} are there in total?",
                       "If every one of {n} {boxes} holds {k} {objs}, what number of {objs} is in the {boxes} "
                       "altogether?"),
         solution=lambda s: f"There are {s['n']} {s['boxes']} with {s['k']} {s['objs']} each. "
                            f"{work((s['n'], '*', s['k']))} {answer(s['answer'])}",
         shuffle_facts=True),

    Kind("rate", num_mul,
         facts=(("{name} {job} {k} {unit_objs} every {unit}.", "Every {unit}, {name} {job} {k} {unit_objs}.",
                 "{name} {job} {k} {unit_objs} each {unit}.", "In one {unit}, {name} {job} {k} {unit_objs}.",
                 "{name} {job} {k} {unit_objs} per {unit}.", "Each {unit} {name} {job} {k} {unit_objs}.",
                 "{name} always {job_base}s {k} {unit_objs} in one {unit}."),
                ("{He} does this for {n} {units}.", "{He} keeps going for {n} {units}.",
                 "This goes on for {n} {units}.", "{He} works for {n} {units}.", "{He} does it for {n} {units}.",
                 "{He} keeps this up for {n} {units}.",
                 "This goes on for {n} {units} in a row.")),
         questions=("How many {unit_objs} does {he} {job_base} in total?", "How many {unit_objs} is that in all?",
                    "How many {unit_objs} does {name} {job_base} altogether?", "What is the total?",
                    "How many {unit_objs} does {name} {job_base} in all?", "Find the total number of {unit_objs}.",
                    "What number of {unit_objs} does {name} {job_base} at the end?"),
         one_sentence=("How many {unit_objs} does {name} {job_base} in {n} {units} if {he} {job} {k} each {unit}?",
                       "If {name} {job} {k} {unit_objs} every {unit}, how many does {he} {job_base} in {n} {units}?",
                       "When {name} {job} {k} {unit_objs} per {unit} for {n} {units}, what is the total?",
                       "If {name} keeps going for {n} {units} and {job} {k} {unit_objs} in one {unit}, what number "
                       "of {unit_objs} does {he} {job_base} at the end?"),
         solution=lambda s: f"{s['name']} {s['job']} {s['k']} {s['unit_objs']} each {s['unit']} for {s['n']} "
                            f"{s['units']}. {work((s['n'], '*', s['k']))} {answer(s['answer'])}",
         things=False),

    Kind("speed", num_mul,
         facts=(("A {vehicle} travels {k} {dist} every hour.", "A {vehicle} goes {k} {dist} each hour.",
                 "A {vehicle} moves at {k} {dist} per hour.", "In one hour a {vehicle} covers {k} {dist}.",
                 "A {vehicle} drives {k} {dist} each hour.", "Every hour a {vehicle} goes {k} {dist}.",
                 "The speed of a {vehicle} is {k} {dist} per hour."),
                ("It travels for {n} hours.", "It keeps going for {n} hours.", "The trip lasts {n} hours.",
                 "It drives for {n} hours.", "It goes on for {n} hours.", "It moves for {n} hours.",
                 "It keeps this up for {n} hours in a row.")),
         questions=("How far does it travel?", "How many {dist} does it go?", "How many {dist} does it cover?",
                    "How far does it go in that time?", "How many {dist} does it travel in all?",
                    "Find how far it goes.", "What distance does the {vehicle} cover in total?"),
         one_sentence=("How many {dist} does a {vehicle} travel in {n} hours if it goes {k} {dist} every hour?",
                       "If a {vehicle} moves {k} {dist} each hour, how far does it go in {n} hours?",
                       "When a {vehicle} drives for {n} hours at {k} {dist} per hour, how many {dist} does it cover?",
                       "If the speed of a {vehicle} is {k} {dist} per hour, what distance does it cover in {n} "
                       "hours?"),
         solution=lambda s: f"The {s['vehicle']} goes {s['k']} {s['dist']} each hour for {s['n']} hours. "
                            f"{work((s['n'], '*', s['k']))} {answer(s['answer'])}",
         things=False),

    Kind("ages", num_ages,
         facts=(("{name} is {a} years old.", "{name} is {a}.", "{name}'s age is {a}.", "{name} just turned {a}.",
                 "{name} is {a} years old now.", "Today {name} is {a} years old.",
                 "The age of {name} is {a} years."),
                ("{name2} is {b} years older than {name}.", "{name2} is {b} years older.",
                 "{name2} was born {b} years before {name}.", "{name2} is older than {name} by {b} years.",
                 "{name2} is {b} years older than {him}.", "{his} friend {name2} is {b} years older.",
                 "{name2} is the older one, by {b} years.")),
         questions=("How old will {name2} be in {c} years?", "What will {name2}'s age be in {c} years?",
                    "How old will {name2} be {c} years from now?", "In {c} years, how old will {name2} be?",
                    "How old is {name2} going to be in {c} years?", "Find {name2}'s age in {c} years.",
                    "What age will {name2} have after {c} more years?"),
         one_sentence=("How old will {name2} be in {c} years if {name} is {a} and {name2} is {b} years older?",
                       "If {name} is {a} years old and {name2} is {b} years older, what will {name2}'s age be in "
                       "{c} years?",
                       "When {name} is {a} and {name2} is {b} years older, how old will {name2} be {c} years from "
                       "now?",
                       "If the age of {name} is {a} years and {name2} is the older one by {b} years, what age will "
                       "{name2} have after {c} more years?"),
         solution=lambda s: f"{s['name2']} is {s['b']} years older than {s['name']}, who is {s['a']}. "
                            f"{work((s['a'], '+', s['b']), (s['older'], '+', s['c']))} {answer(s['answer'])}",
         things=False),

    Kind("trip", num_trip,
         facts=(("A trip is {total} km long.", "{name} must travel {total} km.", "The road to the city is {total} km.",
                 "{name} plans a {total} km trip.", "The trip to the lake is {total} km long.",
                 "{name} has to go {total} km.",
                 "The whole way to the city is {total} km long."),
                ("{name} drives {d1} km in the morning.", "{He} covers {d1} km on the first day.",
                 "{name} drives {d1} km first.", "First {he} goes {d1} km.", "{He} drives {d1} km before lunch.",
                 "In the morning {he} covers {d1} km.",
                 "Before lunch {name} has done {d1} km."),
                ("Then {he} drives {d2} km more.", "{He} covers {d2} km on the second day.",
                 "After that {he} goes {d2} km.", "In the afternoon {he} drives {d2} km.",
                 "Later {he} goes {d2} km more.", "Then {he} covers another {d2} km.",
                 "After lunch another {d2} km are done.")),
         questions=("How many km are left?", "How many km does {he} still have to go?",
                    "How far is {name} from the end now?", "How many km of the trip remain?",
                    "How many km are still left?", "Find how many km are left.",
                    "What distance does {name} still have to go?"),
         one_sentence=("How many km are left on a {total} km trip after {name} drives {d1} km and then {d2} km?",
                       "If {name} drives {d1} km and then {d2} km of a {total} km trip, how many km remain?",
                       "When {name} covers {d1} km and then {d2} km of {his} {total} km trip, how many km are left?",
                       "If the whole way is {total} km and {name} has done {d1} km and then another {d2} km, what "
                       "distance does {he} still have to go?"),
         solution=lambda s: f"{s['name']} drives {s['d1']} km and {s['d2']} km of {s['total']} km. "
                            f"{work((s['d1'], '+', s['d2']), (s['total'], '-', s['done']))} {answer(s['answer'])}",
         things=False),

    Kind("more_than", num_sub,
         facts=(("{name} has {a} {objs}.", "{name} collected {a} {objs}.", "{name} owns {a} {objs}.",
                 "There are {a} {objs} in {name}'s {box}.", "{name} keeps {a} {objs} in a drawer.",
                 "{name} counts {a} {objs}.",
                 "{name} has a collection of {a} {objs}."),
                ("{name2} has {b} {objs}.", "{name2} collected {b}.", "{name2} owns only {b}.",
                 "{name2} has {b} of them.", "{name2} keeps {b} {objs}.", "{name2} counts {b}.",
                 "The collection of {name2} has only {b} {objs}.")),
         questions=("How many more {objs} does {name} have than {name2}?", "How many more does {name} have?",
                    "How many more {objs} did {name} collect than {name2}?",
                    "By how many {objs} does {name} have more?", "How many more {objs} does {name} have?",
                    "Find how many more {objs} {name} has.",
                    "What is the difference between the number of {objs} of {name} and {name2}?"),
         one_sentence=("How many more {objs} does {name} have than {name2} if {name} has {a} and {name2} has {b}?",
                       "If {name} has {a} {objs} and {name2} has {b}, how many more does {name} have?",
                       "When {name} owns {a} {objs} and {name2} owns {b}, how many more {objs} does {name} have?",
                       "If {name} counts {a} {objs} and {name2} counts {b}, what is the difference between the two "
                       "numbers?"),
         solution=lambda s: f"{s['name']} has {s['a']} and {s['name2']} has {s['b']}. "
                            f"{work((s['a'], '-', s['b']))} {answer(s['answer'])}",
         shuffle_facts=True),

    Kind("fewer_together", num_fewer_together,
         facts=(("{name} has {a} {objs}.", "{name} picked {a} {objs}.", "{name} owns {a} {objs}.",
                 "There are {a} {objs} in {name}'s {box}.", "{name} keeps {a} {objs} in a drawer.",
                 "{name} counts {a} {objs}.",
                 "{name} has a collection of {a} {objs}."),
                ("{name2} has {b} fewer {objs} than {name}.", "{name2} has {b} fewer.",
                 "{name2} picked {b} fewer {objs}.", "{name2} has {b} less than that.",
                 "{name2} owns {b} fewer {objs}.", "{name2} counts {b} fewer.",
                 "The collection of {name2} has {b} fewer {objs}.")),
         questions=("How many {objs} do they have together?", "How many {objs} do they have in all?",
                    "How many {objs} do {name} and {name2} have altogether?", "What is the total for both of them?",
                    "How many {objs} do the two have together?", "Find how many {objs} they have in all.",
                    "What number of {objs} do {name} and {name2} have in total?"),
         one_sentence=("How many {objs} do {name} and {name2} have together if {name} has {a} and {name2} has {b} "
                       "fewer?",
                       "If {name} has {a} {objs} and {name2} has {b} fewer, how many do they have in all?",
                       "When {name} owns {a} {objs} and {name2} owns {b} fewer, how many {objs} do they have "
                       "together?",
                       "If {name} counts {a} {objs} and {name2} counts {b} fewer, what number of {objs} do the two "
                       "have in total?"),
         solution=lambda s: f"{s['name']} has {s['a']} and {s['name2']} has {s['b']} fewer. "
                            f"{work((s['a'], '-', s['b']), (s['a'], '+', s['other']))} {answer(s['answer'])}"),

    Kind("times", num_mul,
         facts=(("{name} has {k} {objs}.", "{name} made {k} {objs}.", "{name} owns {k} {objs}.",
                 "There are {k} {objs} in {name}'s {box}.", "{name} keeps {k} {objs} in a drawer.",
                 "{name} counts {k} {objs}.",
                 "{name} has a collection of {k} {objs}."),
                ("{name2} has {n} times as many {objs}.", "{name2} has {n} times as many.",
                 "{name2} made {n} times as many.", "{name2} has {n} times that number.",
                 "{name2} owns {n} times as many {objs}.", "{name2} counts {n} times as many.",
                 "The collection of {name2} is {n} times as big.")),
         questions=("How many {objs} does {name2} have?", "How many {objs} did {name2} make?",
                    "How many does {name2} have?", "Find how many {objs} {name2} has.",
                    "How many {objs} does {name2} own?", "How many {objs} are there in {name2}'s collection?",
                    "What number of {objs} does {name2} have?"),
         one_sentence=("How many {objs} does {name2} have if {name2} has {n} times the {k} {objs} that {name} has?",
                       "If {name} has {k} {objs} and {name2} has {n} times as many, how many does {name2} have?",
                       "When {name} owns {k} {objs} and {name2} owns {n} times as many, how many {objs} does "
                       "{name2} own?",
                       "If {name} counts {k} {objs} and the collection of {name2} is {n} times as big, what number "
                       "of {objs} does {name2} have?"),
         solution=lambda s: f"{s['name2']} has {s['n']} times {s['k']}. {work((s['n'], '*', s['k']))} "
                            f"{answer(s['answer'])}"),

    Kind("three_colours", num_three,
         facts=(("{name} has {a} red {objs}.", "There are {a} red {objs}.", "{name} counts {a} green {objs}.",
                 "{a} of {name}'s {objs} are white.", "First there are {a} blue {objs}.",
                 "{name} owns {a} yellow {objs}.",
                 "In {name}'s collection there are {a} purple {objs}."),
                ("{He} also has {b} blue {objs}.", "There are {b} blue ones.", "{He} counts {b} yellow ones.",
                 "{b} more are purple.", "Then there are {b} red {objs}.", "{He} also owns {b} green ones.",
                 "Next to them there are {b} white {objs}."),
                ("And {he} has {c} green {objs}.", "There are {c} yellow ones too.", "{He} counts {c} blue ones.",
                 "The last {c} are red.", "And there are {c} white {objs}.", "{He} also owns {c} purple ones.",
                 "At the end there are {c} blue {objs}.")),
         questions=("How many {objs} does {name} have?", "How many {objs} are there in all?",
                    "How many {objs} are there altogether?", "What is the total number of {objs}?",
                    "How many {objs} are there in total?", "Find the total number of {objs}.",
                    "What number of {objs} is there when you put them all together?"),
         one_sentence=("How many {objs} are there altogether if there are {a} red, {b} blue and {c} green ones?",
                       "If {name} has {a} white {objs}, {b} purple {objs} and {c} red {objs}, how many {objs} "
                       "does {he} have?",
                       "When there are {a} yellow, {b} green and {c} blue {objs}, how many {objs} are there in all?",
                       "If {name} owns {a} green, {b} red and {c} blue {objs}, what number of {objs} does {he} have "
                       "when you put them all together?"),
         solution=lambda s: f"There are {s['a']}, {s['b']} and {s['c']} {s['objs']}. "
                            f"{work((s['a'], '+', s['b']), (s['ab'], '+', s['c']))} {answer(s['answer'])}"),

    Kind("together", num_together,
         facts=(("{name} and {name2} have {total} {objs} together.", "Together, {name} and {name2} own {total} {objs}.",
                 "{name} and {name2} have {total} {objs} in all.",
                 "There are {total} {objs} shared by {name} and {name2}.",
                 "{name} and {name2} own {total} {objs} altogether.", "The two friends have {total} {objs} together.",
                 "In all, {name} and {name2} keep {total} {objs}."),
                ("{name} has {a}.", "{name} owns {a} of them.", "{a} belong to {name}.", "{name} has {a} {objs}.",
                 "{name} keeps {a} of them.", "Of these, {a} are {name}'s.",
                 "Of them, {name} owns {a}.")),
         questions=("How many {objs} does {name2} have?", "How many does {name2} own?",
                    "How many belong to {name2}?", "How many {objs} are {name2}'s?",
                    "How many {objs} does {name2} keep?", "Find how many {objs} {name2} has.",
                    "What number of {objs} belongs to {name2}?"),
         one_sentence=("How many {objs} does {name2} have if {name2} and {name} have {total} in total and {name} has "
                       "{a}?",
                       "If {name} and {name2} have {total} {objs} together and {name} has {a}, how many does "
                       "{name2} have?",
                       "When {name} and {name2} own {total} {objs} altogether and {a} are {name}'s, how many belong "
                       "to {name2}?",
                       "If the two friends keep {total} {objs} in all and {name} owns {a}, what number of {objs} "
                       "belongs to {name2}?"),
         solution=lambda s: f"Together they have {s['total']} and {s['name']} has {s['a']}. "
                            f"{work((s['total'], '-', s['a']))} {answer(s['answer'])}",
         shuffle_facts=True),

    Kind("buy_give", num_buy_give,
         facts=(
                ("{name} has {a} {objs}.", "{name} starts with {a} {objs}.", "{name} owns {a} {objs}.",
                 "There are {a} {objs} in {name}'s room.", "{name} keeps {a} {objs} in a drawer.",
                 "At first {name} has {a} {objs}.",
                 "{name} has a collection of {a} {objs}."),
                ("{He} buys {n} {boxes} with {k} {objs} in each.", "{He} gets {n} {boxes} of {k} {objs}.",
                 "Then {he} buys {n} more {boxes}, each with {k} {objs}.", "{He} adds {n} {boxes} of {k} {objs}.",
                 "Then {he} gets {n} {boxes} that hold {k} {objs} each.", "{He} buys {n} {boxes} of {k}.",
                 "Then {n} {boxes} arrive, and every one of them holds {k} {objs}."),
                ("Then {he} gives {c} {objs} to {name2}.", "{He} gives away {c}.", "Later {he} gives {c} to {name2}.",
                 "After that {name2} gets {c} {objs} from {him}.", "Then {he} hands {c} {objs} to {name2}.",
                 "In the end {he} gives {c} of them away.",
                 "After that {name2} receives {c} of the {objs}.")),
         questions=("How many {objs} does {name} have now?", "How many {objs} does {he} have now?",
                    "How many {objs} are left?", "How many {objs} does {name} have left?",
                    "How many {objs} does {he} have left?", "Find how many {objs} {name} has now.",
                    "What number of {objs} does {name} have at the end?"),
         one_sentence=("How many {objs} does {name} have if {he} had {a}, bought {n} {boxes} of {k} and gave {c} "
                       "away?",
                       "If {name} has {a} {objs}, buys {n} {boxes} of {k} and gives {c} to {name2}, how many "
                       "{objs} are left?",
                       "When {name} starts with {a} {objs}, gets {n} {boxes} of {k} and gives away {c}, how many "
                       "{objs} does {he} have left?",
                       "If {name} keeps {a} {objs}, then {n} {boxes} of {k} arrive and {name2} receives {c} of the "
                       "{objs}, what number of {objs} does {name} have at the end?"),
         solution=lambda s: f"{s['name']} has {s['a']} {s['objs']}, buys {s['n']} {s['boxes']} of {s['k']} and gives "
                            f"away {s['c']}. "
                            f"{work((s['n'], '*', s['k']), (s['a'], '+', s['bought']), (s['have'], '-', s['c']))} "
                            f"{answer(s['answer'])}"),

    Kind("four_steps", num_four,
         facts=(("{name} has {a} {objs}.", "{name} starts with {a} {objs}.", "{name} owns {a} {objs}.",
                 "First {name} has {a} {objs}.", "{name} keeps {a} {objs} in a drawer.",
                 "At first {name} has {a} {objs}.",
                 "{name} has a collection of {a} {objs}."),
                ("{He} finds {b} more.", "{He} gets {b} more {objs}.", "Then {he} picks up {b} more.",
                 "{He} collects another {b}.", "Then {he} finds {b} more {objs}.", "Later {he} gets {b} more.",
                 "Then {b} more {objs} are added to {his} collection."),
                ("{He} loses {c}.", "Then {he} drops {c} {objs}.", "{He} loses {c} of them.", "Next {he} uses {c}.",
                 "Later {he} loses {c} {objs}.", "Then {he} breaks {c} of them.",
                 "Sadly, {c} of those {objs} are gone."),
                ("Then {he} buys {n} {boxes} with {k} {objs} each.", "{He} buys {n} {boxes} of {k}.",
                 "Last, {he} gets {n} {boxes} holding {k} {objs} each.",
                 "After that {he} buys {n} {boxes} of {k} {objs}.", "Then {he} gets {n} {boxes} of {k} {objs}.",
                 "In the end {he} adds {n} {boxes} of {k}.",
                 "Then {n} {boxes} arrive, and every one of them holds {k} {objs}.")),
         questions=("How many {objs} does {he} have now?", "How many {objs} does {name} have in the end?",
                    "How many {objs} does {name} have?", "How many {objs} does {he} end with?",
                    "How many {objs} does {name} have now?", "Find how many {objs} {name} has in the end.",
                    "What number of {objs} does {name} have at the end?"),
         one_sentence=("How many {objs} does {name} end with if {he} begins with {a}, gets {b}, loses {c}, and buys "
                       "{n} {boxes} of {k}?",
                       "If {name} has {a} {objs}, finds {b}, loses {c} and then buys {n} {boxes} of {k}, how many "
                       "{objs} does {he} have?",
                       "When {name} starts with {a} {objs}, picks up {b}, drops {c} and gets {n} {boxes} of {k}, how "
                       "many {objs} does {he} have in the end?",
                       "If {name} owns {a} {objs}, gets {b} more, breaks {c} of them and then {n} {boxes} of {k} "
                       "arrive, what number of {objs} does {he} have at the end?"),
         solution=lambda s: f"{s['name']} has {s['a']}, gets {s['b']}, loses {s['c']} and buys {s['n']} {s['boxes']} "
                            f"of {s['k']}. "
                            f"{work((s['a'], '+', s['b']), (s['ab'], '-', s['c']), (s['n'], '*', s['k']), (s['left'], '+', s['bought']))} "
                            f"{answer(s['answer'])}"),

    Kind("half", num_half,
         facts=(("{name} {has} {a} {objs}.", "{name} starts with {a} {objs}.", "{name} owns {a} {objs}.",
                 "There {are} {a} {objs} in {name}'s {box}.", "{name} keeps {a} {objs} in a drawer.",
                 "At first {name} {has} {a} {objs}.",
                 "{name} has a collection of {a} {objs}."),
                ("{He} {give} half of them to {name2}.", "{He} {give} half of them away.",
                 "Half of them go to {name2}.", "{He} {give} {name2} half of the {objs}.",
                 "{He} {lose} half of them.", "Then {he} {give} half of them to {his} friend.",
                 "Then {name2} receives half of those {objs}.")),
         questions=("How many {objs} {does} {name} have left?", "How many {objs} {does} {he} keep?",
                    "How many {objs} are left?", "How many {objs} does {name} still have?",
                    "How many {objs} does {he} have left?", "Find how many {objs} {name} keeps.",
                    "What number of {objs} does {name} have at the end?"),
         one_sentence=("How many {objs} are left if {name} has {a} {objs} and gives half of them away?",
                       "If {name} splits {a} {objs} into two equal piles, how many {objs} are in each pile?",
                       "When {name} gives half of {his} {a} {objs} to {name2}, how many {objs} does {he} keep?",
                       "If {name2} receives half of the {a} {objs} {name} owns, what number of {objs} does {name} "
                       "have at the end?"),
         solution=lambda s: f"Half of {s['a']} {s['objs']} is {s['a']} / 2. {work((s['a'], '/', 2))} "
                            f"{answer(s['answer'])}",
         past=True),

    Kind("share_left", num_share_left,
         facts=(("{name} has {a} {objs}.", "There are {a} {objs}.", "{name} starts with {a} {objs}.",
                 "{name} owns {a} {objs}.", "{name} keeps {a} {objs} in a drawer.", "At first {name} has {a} {objs}.",
                 "{name} has a collection of {a} {objs}."),
                ("{He} gives {q} {objs} to each of {n} friends.", "{n} friends each get {q} {objs}.",
                 "{n} children each take {q}.", "{He} gives each of {his} {n} cousins {q} {objs}.",
                 "{He} hands {q} {objs} to each of {n} children.", "Each of {n} friends gets {q} of them.",
                 "Then {n} friends each receive {q} of those {objs}.")),
         questions=("How many {objs} does {he} have left?", "How many {objs} are left?",
                    "How many {objs} are left for {name}?", "How many {objs} does {name} still have?",
                    "How many {objs} does {name} have left?", "Find how many {objs} {name} keeps.",
                    "What number of {objs} does {name} have at the end?"),
         one_sentence=("How many {objs} are left if {name} starts with {a} and gives {q} to each of {n} friends?",
                       "If {n} children each take {q} of {name}'s {a} {objs}, how many {objs} are left?",
                       "When {name} has {a} {objs} and gives {q} to each of {n} cousins, how many {objs} does {he} "
                       "have left?",
                       "If {name} owns {a} {objs} and each of {n} friends receives {q} of them, what number of {objs} "
                       "does {name} have at the end?"),
         solution=lambda s: f"{s['name']} has {s['a']} {s['objs']} and gives {s['q']} to each of {s['n']}. "
                            f"{work((s['n'], '*', s['q']), (s['a'], '-', s['shared']))} {answer(s['answer'])}"),

    Kind("rate_total", num_rate_total,
         facts=(("{name} {job} {p} {unit_objs} each {unit} for {t} {units}.",
                 "For {t} {units}, {name} {job} {p} {unit_objs} every {unit}.",
                 "Every {unit} {name} {job} {p} {unit_objs}, for {t} {units}.",
                 "{name} {job} {p} {unit_objs} per {unit}, {t} {units} in a row.",
                 "{name} {job} {p} {unit_objs} every {unit} for {t} {units}.",
                 "In each of {t} {units}, {name} {job} {p} {unit_objs}.",
                 "For {t} {units} in a row, {name} always {job_base}s {p} {unit_objs} in one {unit}."),
                ("Then {he} {job} {extra} more.", "After that {he} {job} {extra} extra.",
                 "On top of that {he} {job} {extra} more {unit_objs}.", "Later {he} {job} another {extra}.",
                 "Then {he} {job} {extra} more {unit_objs}.", "After that {he} {job} another {extra} {unit_objs}.",
                 "At the end {extra} more {unit_objs} are added.")),
         questions=("How many {unit_objs} does {he} {job_base} in all?", "What is the total?",
                    "How many {unit_objs} is that?", "How many {unit_objs} does {name} {job_base} altogether?",
                    "How many {unit_objs} does {name} {job_base} in total?", "Find the total number of {unit_objs}.",
                    "What number of {unit_objs} does {name} {job_base} at the end?"),
         one_sentence=("How many {unit_objs} does {name} {job_base} if {he} {job} {p} per {unit} for {t} {units} "
                       "plus {extra} more?",
                       "If {name} {job} {p} {unit_objs} every {unit} for {t} {units} and then {extra} more, what "
                       "is the total?",
                       "When {name} {job} {p} {unit_objs} each {unit} for {t} {units} and {extra} extra, how many "
                       "{unit_objs} is that?",
                       "If {name} always {job_base}s {p} {unit_objs} in one {unit} for {t} {units} in a row and "
                       "then {extra} more, what number of {unit_objs} does {he} {job_base} at the end?"),
         solution=lambda s: f"{s['name']} {s['job']} {s['p']} {s['unit_objs']} each {s['unit']} for {s['t']} "
                            f"{s['units']} and {s['extra']} more. "
                            f"{work((s['t'], '*', s['p']), (s['made'], '+', s['extra']))} {answer(s['answer'])}",
         things=False),
)

KIND_BY_NAME = {k.name: k for k in KINDS}


# ---- splits -----------------------------------------------------------------------------------------

HELD_OUT_NUMBERS_MODULUS = 8   # held-out problems: (kind, numbers) hash == 0 mod this


def restated_numbers(solution: str) -> list[str]:
    """The numbers of a solution's first sentence, the one that restates the problem."""
    return re.findall(r"\d+", solution.split(". ", 1)[0])


def _numbers_held_out(problem: Problem) -> bool:
    key = problem.kind + ":" + ",".join(restated_numbers(problem.solution))
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") % HELD_OUT_NUMBERS_MODULUS == 0


def _stream(seed: int, held_out: bool, distractor_rate: float, numbers_held_out: bool | None = None
            ) -> Iterator[Problem]:
    rng = random.Random(seed)
    numbers_held_out = held_out if numbers_held_out is None else numbers_held_out
    while True:
        p = rng.choice(KINDS).render(rng, held_out, distractor_rate)
        if _numbers_held_out(p) == numbers_held_out:
            yield p


PRODUCTS = ("fused", "split")


def make_split(n: int, seed: int = 0, held_out: bool = False, distractor_rate: float = 0.2,
               products: str = "fused") -> list[Problem]:
    """``n`` distinct problems of the training (``held_out=False``) or held-out split.

    ``products="split"`` writes the multiplication columns of the solutions as a table fact and
    a carry's addition (``arithmetic.split_products``); the problems themselves do not change.
    """
    return _distinct(_stream(seed * 2 + int(held_out), held_out, distractor_rate), n, products)


def unseen_numbers(n: int, seed: int = 0, distractor_rate: float = 0.2, products: str = "fused") -> list[Problem]:
    """``n`` distinct problems in *training* phrasings whose numbers are on the held-out side of the
    split, so that none of them is a training problem.

    Beside the held-out split they tell apart the two things a held-out problem asks of a model:
    reading a wording it never saw, and doing the arithmetic. (They are marked ``held_out=False``:
    their phrasings are the training ones.)
    """
    return _distinct(_stream(seed * 2 + 1 + 10 ** 6, False, distractor_rate, numbers_held_out=True), n, products)


def _distinct(stream: Iterator[Problem], n: int, products: str) -> list[Problem]:
    if products not in PRODUCTS:
        raise ValueError(f"products must be one of {PRODUCTS}, got {products!r}")
    seen: set[str] = set()
    out = []
    for p in stream:
        if p.question not in seen:
            seen.add(p.question)
            out.append(p if products == "fused" else replace(p, solution=split_products(p.solution)))
            if len(out) == n:
                return out
    raise AssertionError("unreachable")


def held_out_except(n: int, avoid: set[str], seed: int) -> list[Problem]:
    """The first ``n`` held-out-phrasing problems of seed ``seed`` whose questions are not in ``avoid``
    (problems apart from an evaluation set: a validation split, more test problems)."""
    return [p for p in make_split(n + len(avoid), seed=seed, held_out=True) if p.question not in avoid][:n]


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
