"""examples/word_problems/fresh_validation.py: the fresh validation problems stay apart from the
evaluation's problems and from the ones the build's sweep chose on."""

from __future__ import annotations

import json

import pytest

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


def test_settings_parse_and_bad_ones_are_refused():
    assert F.parse_settings("32/joint/0.99,4/threshold/0.9") == ((32, "joint", 0.99), (4, "threshold", 0.9))
    for bad in ("32/joint", "32/joint/x", "3/joint/0.9", "32/greedy/0.9", "32/joint/1.5"):
        with pytest.raises(SystemExit, match="--settings"):
            F.parse_settings(bad)


def test_a_candidate_model_is_scored_without_the_parent(tmp_path, monkeypatch):
    import fastdllm

    P.write_jsonl(P.make_split(40, 0, held_out=True), tmp_path / "data" / "heldout.jsonl")
    loaded, calls = [], []
    monkeypatch.setattr(fastdllm, "load", lambda path: loaded.append(path) or path)
    monkeypatch.setattr(B, "evaluate", lambda llm, problems, mode, thr=None, **kw: calls.append(
        (llm, mode, thr, kw["acceptance"], kw["small_block_size"], len(problems))) or
        {"accuracy": 0.5, "tpf": 2.0, "tokens_per_s": 1.0})
    out = tmp_path / "fresh.json"
    assert F.main(["--run", str(tmp_path), "--n", "12", "--bd", str(tmp_path / "cand"), "--no-parent",
                   "--settings", "32/joint/1.0,4/threshold/0.9", "--out", str(out)]) == 0
    assert loaded == [str(tmp_path / "cand")]
    assert calls == [(str(tmp_path / "cand"), "diffusion", 1.0, "joint", 32, 12),
                     (str(tmp_path / "cand"), "diffusion", 0.9, "threshold", 4, 12)]
    d = json.loads(out.read_text())
    assert d["model"] == str(tmp_path / "cand") and [r["setting"] for r in d["rows"]] == [
        "sub-block 32, joint 1", "sub-block 4, threshold 0.9"]
