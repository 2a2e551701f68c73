"""Evaluation: log-likelihood scoring and the lm-evaluation-harness model (``--model fastdllm``)."""

from .scoring import score_continuations

__all__ = ["score_continuations"]
