"""examples/word_problems/acceptance.py: where parallel acceptance parts from one token per forward."""

from __future__ import annotations

import fastdllm
from examples.word_problems import acceptance as A
from examples.word_problems import problems as P


def test_first_divergence():
    assert A.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert A.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert A.first_divergence([1, 2], [1, 2, 3]) == 2  # the shorter one ends there
    assert A.first_divergence([], [4]) == 0


def test_classify_by_how_the_forward_accepted_the_token():
    # forwards: 1 decodes position 0 alone; 2 decodes 1, 2 and 4 (3 stays masked); 3 decodes 3
    step_of = [1, 2, 2, 3, 2]
    assert A.classify(step_of, 0) == "alone"
    assert A.classify(step_of, 1) == "first"
    assert A.classify(step_of, 2) == "after, left filled"
    assert A.classify(step_of, 4) == "after, left masked"  # position 3 was still a mask after forward 2
    assert A.classify(step_of, 3) == "alone"


def test_analyse_counts_every_problem_and_classifies_each_parting():
    llm = fastdllm.load()
    problems = P.read_jsonl(llm.checkpoint.path / "heldout.jsonl")[:6]
    res = A.analyse(llm, problems, 0.5, progress=False)  # a low threshold parts more often
    assert sum(res["outcomes"].values()) == len(problems)
    parted = res["outcomes"].get("right at 1.0, wrong at 0.5", 0)
    assert sum(res["kinds"].values()) == len(res["examples"]) <= parted
    for e in res["examples"]:
        assert e["kind"] in A.KINDS and e["parallel"] != e["one_token_per_forward"]
        assert e["parallel"] in e["same_forward"] and (e["kind"] == "alone") == (len(e["same_forward"]) == 1)
    assert "| alone |" in A.table(res)
