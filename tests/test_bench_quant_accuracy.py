"""benchmarks/bench_quant_accuracy.py's helpers: the extra problems it draws and its sign test."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_quant_accuracy", ROOT / "benchmarks" / "bench_quant_accuracy.py")
bqa = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bqa)


def test_sign_test_against_the_binomial_tails():
    assert bqa.sign_test(0, 0) == 1.0
    assert bqa.sign_test(5, 5) == 1.0  # even split: nothing to see
    assert bqa.sign_test(10, 0) == pytest.approx(2 / 2 ** 10)
    assert bqa.sign_test(0, 10) == bqa.sign_test(10, 0)  # two-sided
    # 8 of 10 one way: 2 * P(X >= 8), X ~ Binomial(10, 1/2)
    assert bqa.sign_test(8, 2) == pytest.approx(2 * (math.comb(10, 8) + math.comb(10, 9) + 1) / 1024)
    # a bigger imbalance is less likely, on the same number of changes
    assert bqa.sign_test(70, 30) < bqa.sign_test(60, 40) < bqa.sign_test(55, 45)


def test_fresh_problems_are_held_out_phrasings_and_avoid_the_given_questions():
    from examples.word_problems import problems as P

    avoid = {p.question for p in P.make_split(40, seed=7, held_out=True)[:20]}  # the first of the same stream
    fresh = bqa.fresh_problems(30, avoid, seed=7)
    assert len(fresh) == 30 and len({p.question for p in fresh}) == 30
    assert not avoid & {p.question for p in fresh}
    assert all(p.held_out for p in fresh)
    assert all(p.solution.endswith(f"The answer is {p.answer}.") for p in fresh)
