"""Where parallel acceptance goes wrong: the problems block diffusion answers one token per forward
(threshold 1.0) but not at a lower threshold, and the token at which the two decodings part.

For each such problem, the first generated position where the two decodings differ is looked up
in the lower threshold's trace (``fastdllm.visualize.record``: the forward that decoded each
token), and classified by how that forward accepted it:

- ``alone``: the only token of its forward (the forced most-confident one);
- ``first``: the leftmost of several tokens accepted by the same forward;
- ``after, left filled``: accepted beside tokens to its left in the same forward, and every position
  to its left decoded by the end of that forward;
- ``after, left masked``: a position to its left was still masked after that forward (the token
  was predicted across a gap).

Tokens in the last two kinds were predicted while positions to their left were masks: wrong with a
confidence above the threshold. Prints the counts and examples; writes JSON.

    python examples/word_problems/acceptance.py [--model DIR] [--problems 100] [--threshold 0.9]
        [--out benchmarks/results/acceptance.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from examples.word_problems import problems as P  # noqa: E402

KINDS = ("alone", "first", "after, left filled", "after, left masked")


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The first index where ``a`` and ``b`` differ (a shorter one ends there), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def classify(step_of: list[int], d: int) -> str:
    """How the forward that decoded generated position ``d`` accepted it (``KINDS``), from the
    trace's ``step_of`` (the forward that decoded each generated position)."""
    s = step_of[d]
    same = [i for i, x in enumerate(step_of) if x == s]
    if len(same) == 1:
        return "alone"
    if d == same[0]:
        return "first"
    if any(step_of[i] > s for i in range(d)):
        return "after, left masked"
    return "after, left filled"


def analyse(llm, problems: list[P.Problem], threshold: float, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    from fastdllm.visualize import record

    outcome, kinds, examples, group = Counter(), Counter(), [], Counter()
    for p in tqdm(problems, desc=f"threshold 1.0 and {threshold}", unit="problem", disable=not progress):
        msgs = p.messages(with_answer=False)
        one, t_one = record(llm, msgs, threshold=1.0)
        par, t_par = record(llm, msgs, threshold=threshold)
        ok_one, ok_par = P.is_correct(p, one.text), P.is_correct(p, par.text)
        outcome[f"{'right' if ok_one else 'wrong'} at 1.0, {'right' if ok_par else 'wrong'} at {threshold}"] += 1
        if not ok_one or ok_par:
            continue
        d = first_divergence(t_one.token_ids, t_par.token_ids)
        if d is None or d >= len(t_par.token_ids):
            continue
        kind = classify(t_par.step_of, d)
        kinds[kind] += 1
        s = t_par.step_of[d]
        group[sum(1 for x in t_par.step_of if x == s)] += 1
        examples.append({"question": p.question, "kind": kind, "position": d,
                         "before": "".join(t_par.pieces[max(0, d - 12):d]),
                         "one_token_per_forward": t_one.pieces[d], "parallel": t_par.pieces[d],
                         "same_forward": [t_par.pieces[i] for i, x in enumerate(t_par.step_of) if x == s],
                         "text_one": one.text, "text_parallel": par.text})
    return {"outcomes": dict(outcome), "kinds": {k: kinds.get(k, 0) for k in KINDS},
            "tokens_in_that_forward": {str(k): v for k, v in sorted(group.items())}, "examples": examples}


def table(res: dict) -> str:
    n = sum(res["kinds"].values())
    lines = ["| how the first differing token was accepted | problems | share |", "|---|---|---|"]
    for k in KINDS:
        lines.append(f"| {k} | {res['kinds'][k]} | {res['kinds'][k] / n:.0%} |" if n else f"| {k} | 0 | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    import fastdllm

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a word-problem model directory (default: the embedded one)")
    ap.add_argument("--problems", type=int, default=100, help="the first N held-out problems the model ships")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=HERE.parents[1] / "benchmarks" / "results" / "acceptance.json")
    a = ap.parse_args(argv)
    if not 0.0 <= a.threshold < 1.0:
        ap.error("--threshold must be in [0, 1): it is compared with one token per forward (1.0)")
    if a.threads:
        torch.set_num_threads(a.threads)
    llm = fastdllm.load(a.model)
    held = llm.checkpoint.path / "heldout.jsonl"
    if not held.is_file():
        ap.error(f"{held} is missing: the model directory must hold its held-out problems")
    problems = P.read_jsonl(held)[:a.problems]
    res = analyse(llm, problems, a.threshold)
    print("\n".join(f"{k}: {v}" for k, v in res["outcomes"].items()))
    print(table(res))
    for e in res["examples"][:10]:
        print(f"  ...{e['before']!r} -> {e['parallel']!r} (one per forward: {e['one_token_per_forward']!r}); "
              f"same forward: {e['same_forward']}")
    record = {"command": "python examples/word_problems/acceptance.py " + " ".join(sys.argv[1:] if argv is None
                                                                                     else argv),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": str(llm.checkpoint.path),
              "problems": len(problems), "threshold": a.threshold, **res}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
