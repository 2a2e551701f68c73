"""examples/word_problems/fresh_validation.py: the fresh validation problems stay apart from the
evaluation's problems and from the ones the build's sweep chose on."""

from __future__ import annotations

from examples.word_problems import build as B
from examples.word_problems import fresh_validation as F
from examples.word_problems import problems as P


def test_fresh_problems_avoid_the_evaluation_and_the_sweep(tmp_path):
    held = P.make_split(40, 0, held_out=True)
    P.write_jsonl(held, tmp_path / "data" / "heldout.jsonl")
    fresh = F.fresh_problems(tmp_path, 60, 7)
    swept = B.validation_split(B.FULL.n_sweep, 0, held)
    questions = {p.question for p in fresh}
    assert len(fresh) == 60 and len(questions) == 60
    assert not questions & {p.question for p in held}
    assert not questions & {p.question for p in swept}
    assert F.fresh_problems(tmp_path, 60, 7) == fresh  # the seed fixes them
    assert {p.question for p in F.fresh_problems(tmp_path, 60, 8)} != questions
