"""Where a worked solution goes wrong: a wrong answer sorted by its first mistake.

A solution restates the problem in its first sentence ("Ines has 5 times 65.") and then works
every operation column by column (``arithmetic.py``). A wrong answer is put in the first of:

- ``no answer``: no ``The answer is N.`` line;
- ``restated wrong``: the first sentence's numbers differ from the reference solution's (a number
  miscopied, the wrong kind of problem);
- ``column +`` / ``column -`` / ``column *`` / ``column /``: the first computation that is false
  as arithmetic (``8 * 3 + 0 = 28``, ``54 / 7 = 7 r 6``), by its operation;
- ``other``: every computation holds and still the answer is wrong (an operand copied wrong
  from one step to the next, a carry dropped, a step missing).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

from examples.word_problems.problems import Problem, restated_numbers
from fastdllm.models import extract_answer

CATEGORIES = ("no answer", "restated wrong", "column +", "column -", "column *", "column /", "other")

# "a op b = c", "a op b op c = d" (a column with its carry or borrow), and long division's "a / n = q r r"
_COMPUTATION = re.compile(r"(\d+) ([-+*]) (\d+)(?: ([-+]) (\d+))? = (\d+)|(\d+) / (\d+) = (\d+) r (\d+)")


def _holds(m: re.Match) -> tuple[str, bool]:
    if m.group(7) is not None:
        chunk, n, q, r = (int(m.group(i)) for i in (7, 8, 9, 10))
        return "/", q * n + r == chunk and r < n
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    if m.group(4):
        value += int(m.group(5)) if m.group(4) == "+" else -int(m.group(5))
    return op, value == int(m.group(6))


def classify(problem: Problem, text: str) -> str | None:
    """None for a right answer, else the category (``CATEGORIES``) of the first mistake."""
    got = extract_answer(text)
    if got == problem.answer:
        return None
    if got is None:
        return "no answer"
    if restated_numbers(text) != restated_numbers(problem.solution):
        return "restated wrong"
    for m in _COMPUTATION.finditer(text):
        op, ok = _holds(m)
        if not ok:
            return f"column {op}"
    return "other"


def breakdown(problems: Iterable[Problem], texts: Iterable[str]) -> dict[str, int]:
    """Wrong answers per category (every category present, zeros included)."""
    counts = Counter(c for p, t in zip(problems, texts) if (c := classify(p, t)) is not None)
    return {c: counts.get(c, 0) for c in CATEGORIES}
