"""The wrong-answer breakdown of the word-problem evaluation (examples/word_problems/errors.py)."""

from __future__ import annotations

import pytest

from examples.word_problems import errors as E
from examples.word_problems import problems as P


@pytest.fixture(scope="module")
def problems():
    return P.make_split(400, seed=3, held_out=True)


def _first(problems, op):
    return next(p for p in problems if f" {op} " in p.solution.split(". ", 1)[1])


def test_a_right_solution_is_no_error(problems):
    assert all(E.classify(p, p.solution) is None for p in problems)
    assert E.breakdown(problems, [p.solution for p in problems]) == {c: 0 for c in E.CATEGORIES}


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_a_false_column_is_found_by_its_operation(problems, op):
    p = _first(problems, op)
    head, rest = p.solution.split(". ", 1)
    # break the first column of this operation: its result (a quotient for division) goes up by one
    for m in E._COMPUTATION.finditer(rest):
        if E._holds(m)[0] == op:
            bad = m.group(9) if op == "/" else m.group(6)
            start = m.start(9) if op == "/" else m.start(6)
            rest = rest[:start] + str(int(bad) + 1) + rest[start + len(bad):]
            break
    text = head + ". " + rest.replace(f"The answer is {p.answer}.", f"The answer is {p.answer + 1}.")
    assert E.classify(p, text) == f"column {op}"


def test_split_product_columns_are_checked(problems):
    p = _first(problems, "*")
    split = P.split_products(p.solution)
    assert E.classify(p, split) is None
    wrong = split.replace(f"The answer is {p.answer}.", f"The answer is {p.answer + 10}.")
    assert E.classify(p, wrong) == "other"  # every column holds, the answer does not
    fact = next(m for m in E._COMPUTATION.finditer(split) if m.group(2) == "*" and not m.group(4))
    broken = split[:fact.start(6)] + str(int(fact.group(6)) + 1) + split[fact.end(6):]
    assert E.classify(p, broken.replace(f"The answer is {p.answer}.", "The answer is 0.")) == "column *"


def test_no_answer_and_restated_wrong(problems):
    p = problems[0]
    assert E.classify(p, p.solution.rsplit("The answer", 1)[0]) == "no answer"
    assert E.classify(p, "") == "no answer"
    head, rest = p.solution.split(". ", 1)
    n = P.restated_numbers(head)[0]
    text = head.replace(n, str(int(n) + 1), 1) + ". " + rest.replace(f"is {p.answer}.", f"is {p.answer + 1}.")
    assert E.classify(p, text) == "restated wrong"
    counts = E.breakdown([p, p, p], [text, "", p.solution])
    assert counts["restated wrong"] == 1 and counts["no answer"] == 1 and sum(counts.values()) == 2
