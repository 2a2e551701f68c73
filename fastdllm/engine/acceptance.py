"""Which of a sub-block's masked positions a forward accepts: the accept rules, written plainly.

A forward reads one row per masked position of the current sub-block, in position order, and
each row gets a token and a confidence. The rule decides which of them are kept:

- ``threshold`` (Fast-dLLM v2's rule, the default, what the released checkpoints decode with):
  every row more confident than the threshold, and always the most confident row.
- ``prefix``: the leftmost row (the masked position whose left context is all decoded: an
  autoregressive prediction), and the run of rows right after it, each more confident than the
  threshold. A row is never accepted across a position that stays masked.
- ``joint``: the leftmost row, and the longest run right after it whose confidences' product
  (the leftmost row's included) exceeds the threshold: the chance that the whole accepted span
  is right, if the rows were independent, stays above the threshold.

The two ordered rules exist because a row to the right of a masked position is predicted without
its left context: on the word-problem model, most of the answers that decoding one token a forward
gets right and threshold 0.9 gets wrong part at such a row (``examples/word_problems/acceptance.py``).
At threshold 1.0 ``prefix`` and ``joint`` decode left to right, one token a forward.

``accept`` is the naive reference (one segment, a Python loop); ``decision.StepDecision`` applies
the same rules to every segment of a packed step at once on the device, and the tests hold the two
to the same answer.
"""

from __future__ import annotations

import torch

RULES = ("threshold", "prefix", "joint")
DEFAULT_RULE = "threshold"
ORDERED = frozenset({"prefix", "joint"})


def accept(conf: torch.Tensor, threshold: float, rule: str = DEFAULT_RULE) -> torch.Tensor:
    """conf [n] (the rows of one sub-block, in position order) -> bool [n]: the rows kept."""
    if rule not in RULES:
        raise ValueError(f"unknown accept rule {rule!r}: expected one of {', '.join(RULES)}")
    n = conf.shape[0]
    out = torch.zeros(n, dtype=torch.bool)
    if n == 0:
        return out
    c = [float(v) for v in conf.double()]  # compared as Python floats, as the engine does in float64
    if rule == "threshold":
        for i, v in enumerate(c):
            out[i] = v > threshold
        out[int(conf.nan_to_num(nan=float("-inf")).argmax())] = True
        return out
    out[0] = True
    product = 1.0  # joint: the running product, left to right, in float64 (as the engine's cumprod)
    for i, v in enumerate(c):
        product *= v
        if not (v if rule == "prefix" else product) > threshold:
            break
        out[i] = True
    return out
