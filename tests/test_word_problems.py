"""The word-problem generator behind the default model (examples/word_problems): kinds, splits, solutions."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from examples.word_problems import arithmetic
from examples.word_problems import problems as P
from fastdllm.models import extract_answer

EQUATION = re.compile(r"so (\d+) ([-+*/]) (\d+) = (\d+)")  # the result of each worked operation
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


@pytest.fixture(scope="module")
def train():
    return P.make_split(3000, seed=0, held_out=False)


@pytest.fixture(scope="module")
def held():
    return P.make_split(600, seed=0, held_out=True)


def test_kinds_and_sentence_forms():
    assert len(P.KINDS) >= 15
    assert len({k.name for k in P.KINDS}) == len(P.KINDS)
    for k in P.KINDS:
        for forms in (*k.facts, k.questions, k.one_sentence):
            assert len(forms) >= 3 and len(set(forms)) == len(forms), k.name  # 2+ for training, 1 held out


def test_splits_are_deterministic_distinct_and_disjoint(train, held):
    assert P.make_split(600, seed=0, held_out=True) == held
    assert P.make_split(50, seed=1, held_out=True) != held[:50]
    assert len({p.question for p in train}) == len(train)
    assert not {p.question for p in train} & {p.question for p in held}
    assert all(p.held_out for p in held) and not any(p.held_out for p in train)
    # no held-out phrasing (template) is ever a training phrasing
    assert not {p.template for p in train} & {p.template for p in held}
    # every kind shows up in both splits, with several phrasings
    assert set(Counter(p.kind for p in held)) == set(Counter(p.kind for p in train)) == set(P.KIND_BY_NAME)
    assert len({p.template for p in train}) > 10 * len(P.KINDS)


def _wordings(problem) -> list[tuple[str, int]]:
    """(sentence form, wording index) pairs a problem used, read from its phrasing id."""
    if problem.phrasing.startswith("one-sentence"):
        return [("one-sentence", int(problem.phrasing.split()[1]))]
    out = []
    for part in problem.phrasing.split():
        if part.startswith("f"):
            slot, idx = part[1:].split(".")
            out.append((f"fact {slot}", int(idx)))
        elif part.startswith("q"):
            out.append(("question", int(part[1:])))
    return out


def _reserved(kind: P.Kind, form: str) -> int:
    forms = {"one-sentence": kind.one_sentence, "question": kind.questions,
             **{f"fact {i}": f for i, f in enumerate(kind.facts)}}
    return len(forms[form]) - 1


def test_reserved_wordings_never_appear_in_training(train, held):
    """Training problems never use a reserved (held-out) wording; every held-out problem uses at least one,
    and no reserved wording is a copy of a training wording."""
    for kind in P.KINDS:
        for forms in (*kind.facts, kind.questions, kind.one_sentence):
            assert forms[-1] not in forms[:-1]
    for p in train:
        kind = P.KIND_BY_NAME[p.kind]
        assert all(i < _reserved(kind, form) for form, i in _wordings(p)), p
    for p in held:
        kind = P.KIND_BY_NAME[p.kind]
        assert any(i == _reserved(kind, form) for form, i in _wordings(p)), p
        # the question text really holds a reserved sentence: re-rendering is not needed, the fixed words tell
        assert p.question not in {q.question for q in train}


def test_unseen_numbers_are_training_phrasings_with_held_out_numbers(train, held):
    """The phrasings check: training wordings only, numbers on the held-out side, never a training
    or held-out problem, deterministic."""
    probe = P.unseen_numbers(300, seed=0)
    assert probe == P.unseen_numbers(300, seed=0) and probe != P.unseen_numbers(300, seed=1)
    assert len({p.question for p in probe}) == len(probe) and not any(p.held_out for p in probe)
    for p in probe:
        kind = P.KIND_BY_NAME[p.kind]
        assert all(i < _reserved(kind, form) for form, i in _wordings(p)), p
        assert P._numbers_held_out(p)
    assert not {p.question for p in probe} & ({p.question for p in train} | {p.question for p in held})
    assert set(Counter(p.kind for p in probe)) == set(P.KIND_BY_NAME)
    split = P.unseen_numbers(20, seed=0, products="split")
    assert [p.question for p in split] == [p.question for p in probe[:20]]
    assert any(s.solution != p.solution for s, p in zip(split, probe))
    with pytest.raises(ValueError, match="products"):
        P.unseen_numbers(2, products="columns")


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
        for line in re.findall(r"(?:^|\. )((?:\d+ [-+*/] \d+ (?:[-+] \d+ )?= \d+(?: r \d+)?, )+so [^.]*)", p.solution):
            a, op, b, c = EQUATION.findall(line)[-1]
            assert arithmetic.steps(int(a), op, int(b)) == line  # the worked steps of each operation
        numbers = [int(x) for x in re.findall(r"\d+", p.question)]
        assert max(numbers) <= 1000, p.question


def test_split_products_changes_only_the_multiplication_columns(train):
    split = P.make_split(3000, seed=0, held_out=False, products="split")
    assert [(p.question, p.answer, p.kind, p.phrasing) for p in split] == \
        [(p.question, p.answer, p.kind, p.phrasing) for p in train]
    changed = 0
    for f, s in zip(train, split):
        assert s.solution == arithmetic.split_products(f.solution)
        assert not re.search(r"\d \* \d \+ \d =", s.solution)
        changed += s.solution != f.solution
        assert EQUATION.findall(s.solution) == EQUATION.findall(f.solution)
    assert changed > len(train) // 10  # multiplication is common
    with pytest.raises(ValueError, match="products must be one of"):
        P.make_split(3, products="joined")


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


@pytest.mark.parametrize("a, op, b", [(245, "+", 38), (999, "+", 1), (5, "+", 7), (623, "-", 278), (1000, "-", 283),
                                      (100, "-", 1), (7, "-", 7), (7, "*", 78), (9, "*", 0), (2, "*", 999),
                                      (546, "/", 7), (714, "/", 7), (8, "/", 8), (1000, "/", 8)])
def test_column_arithmetic(a, op, b):
    text = arithmetic.steps(a, op, b)
    want = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a // b}[op]()
    assert text.endswith(f"so {a} {op} {b} = {want}")
    steps = text.split(", so ")[0].split(", ")
    if op == "+":  # one column per digit of the longer operand, each a one-digit sum plus a carry
        assert len(steps) == max(len(str(a)), len(str(b)))
        digits = [int(s.split(" = ")[1]) % 10 for s in steps]
        assert int(str(int(steps[-1].split(" = ")[1])) + "".join(map(str, reversed(digits[:-1])))) == want
    if op == "-":
        assert all(0 <= int(s.split(" = ")[1]) <= 9 for s in steps)
        assert int("".join(s.split(" = ")[1] for s in reversed(steps))) == want
    if op == "/":
        assert int("".join(s.split(" = ")[1].split(" r ")[0] for s in steps)) == want


@pytest.mark.parametrize("n,k", [(7, 78), (9, 99), (1, 305), (0, 47), (8, 5), (6, 1000)])
def test_split_products_writes_each_column_as_a_table_fact_and_a_carry(n, k):
    fused = arithmetic.steps(n, "*", k)
    split = arithmetic.split_products(fused)
    assert split.endswith(f"so {n} * {k} = {n * k}") and fused.endswith(f"so {n} * {k} = {n * k}")
    columns = split.split(", so ")[0].split(", ")
    assert len(columns) == 2 * len(str(k))
    carry = 0
    for fact, add, d in zip(columns[::2], columns[1::2], reversed(str(k))):
        assert fact == f"{n} * {d} = {n * int(d)}"
        assert add == f"{n * int(d)} + {carry} = {n * int(d) + carry}"
        carry = (n * int(d) + carry) // 10
    # the other operations' columns are left alone
    text = arithmetic.steps(245, "+", 38) + ". " + fused + ". " + arithmetic.steps(623, "-", 278)
    assert arithmetic.split_products(text) == (arithmetic.steps(245, "+", 38) + ". " + split + ". "
                                               + arithmetic.steps(623, "-", 278))


def test_split_products_rejects_a_wrong_column():
    with pytest.raises(ValueError, match="not a multiplication column"):
        arithmetic.split_products("7 * 8 + 0 = 57")


def test_column_arithmetic_rejects_what_it_cannot_write():
    with pytest.raises(ValueError):
        arithmetic.sub_steps(3, 5)
    with pytest.raises(ValueError):
        arithmetic.mul_steps(12, 5)
    with pytest.raises(ValueError):
        arithmetic.div_steps(10, 3)
