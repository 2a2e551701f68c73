"""The word-problem generator behind the default model (examples/word_problems): kinds, splits, solutions."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from examples.word_problems import problems as P
from fastdllm.models import extract_answer

EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


@pytest.fixture(scope="module")
def train():
    return P.make_split(3000, seed=0, held_out=False)


@pytest.fixture(scope="module")
def held():
    return P.make_split(600, seed=0, held_out=True)


def test_kinds_and_phrasings():
    assert len(P.KINDS) >= 15
    assert len({k.name for k in P.KINDS}) == len(P.KINDS)
    for k in P.KINDS:
        assert len(k.phrasings) >= 4 and len(set(k.phrasings)) == len(k.phrasings), k.name
        assert k.solution.endswith("The answer is {answer}."), k.name


def test_splits_are_deterministic_distinct_and_disjoint(train, held):
    assert P.make_split(600, seed=0, held_out=True) == held
    assert P.make_split(50, seed=1, held_out=True) != held[:50]
    assert len({p.question for p in train}) == len(train)
    assert not {p.question for p in train} & {p.question for p in held}
    # held-out problems use only the held-out phrasing of their kind, training problems never do
    for p in held:
        assert p.phrasing == P.held_out_phrasing(P.KIND_BY_NAME[p.kind])
    for p in train:
        assert p.phrasing != P.held_out_phrasing(P.KIND_BY_NAME[p.kind])
    # every kind shows up in both splits
    assert set(Counter(p.kind for p in held)) == set(Counter(p.kind for p in train)) == set(P.KIND_BY_NAME)


def test_held_out_phrasings_never_appear_in_training(train):
    """The fixed words of every held-out template are absent from every training question."""
    def skeleton(template: str) -> str:
        return re.sub(r"\{[^}]+\}", "|", template)

    for kind in P.KINDS:
        held_words = [w.strip() for w in skeleton(kind.phrasings[P.held_out_phrasing(kind)]).split("|")]
        longest = max(held_words, key=len)  # the template's longest literal stretch
        for p in train:
            if p.kind == kind.name:
                assert longest not in p.question, (kind.name, longest, p.question)


def test_solutions_are_correct_arithmetic(train, held):
    for p in train + held:
        eqs = EQUATION.findall(p.solution)
        assert eqs, p.solution
        for a, op, b, c in eqs:
            assert OPS[op](int(a), int(b)) == int(c), (p.solution, a, op, b, c)
        assert p.solution.endswith(f"The answer is {p.answer}.")
        assert extract_answer(p.solution) == p.answer
        assert int(eqs[-1][3]) == p.answer  # the answer is the last computed number
        assert isinstance(p.answer, int) and 0 <= p.answer <= 1200
        numbers = [int(x) for x in re.findall(r"\d+", p.question)]
        assert max(numbers) <= 1000, p.question


def test_variety(train):
    questions = [p.question for p in train]
    names = set(re.findall(r"\b(" + "|".join(P.BOYS + P.GIRLS) + r")\b", " ".join(questions)))
    assert len(names) >= 30
    assert sum("had" in q.split() for q in questions) > 30  # past tense
    assert sum(q.startswith("How many") for q in questions) > 100  # question-first order
    # a distractor: a number in the question that the solution never uses
    distractors = sum(bool(set(re.findall(r"\d+", p.question)) - set(re.findall(r"\d+", p.solution))) for p in train)
    assert 0.05 < distractors / len(train) < 0.5


def test_extract_answer():
    assert extract_answer("3 + 4 = 7. The answer is 7.") == 7
    assert extract_answer("The answer is 3. no, The answer is 12.") == 12
    assert extract_answer("The answer is -5.") == -5
    assert extract_answer("The answer is 7") is None  # no full stop: not an answer line
    assert extract_answer("") is None and extract_answer(None) is None
    p = P.make_split(1, seed=3)[0]
    assert P.is_correct(p, p.solution) and not P.is_correct(p, p.solution.replace(str(p.answer) + ".", "0."))


def test_jsonl_round_trip(tmp_path, held):
    path = P.write_jsonl(held[:20], tmp_path / "h.jsonl")
    assert P.read_jsonl(path) == held[:20]
