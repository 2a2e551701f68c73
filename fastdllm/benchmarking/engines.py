"""Decoding engines behind ``fastdllm bench`` rows, and the timed loop that runs one row.

An engine turns a batch of prompt token ids into ``Sample``s (generated ids, forward passes,
text). ``FastdllmEngine`` is ``LLM.generate`` in one mode (block diffusion at a threshold, or
AR); ``fastdllm.benchmarking.hf.TransformersEngine`` is transformers' greedy ``generate``.
``measure`` warms an engine up once, then times it over all prompts, ``batch`` at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch

WARMUP_TOKENS = 64  # enough for the warm-up to run whole blocks and AR steps, short enough to be cheap


@dataclass
class Sample:
    token_ids: list[int]   # generated ids, ending with the stop token when one was produced
    nfe: int               # forward passes this prompt took part in
    text: str


class Engine(Protocol):
    device: torch.device

    def generate(self, batch: list[list[int]], max_new_tokens: int) -> list[Sample]: ...


class FastdllmEngine:
    """``LLM.generate`` greedily in one mode: ``"diffusion"`` (at ``threshold``) or ``"ar"``."""

    def __init__(self, llm, mode: str, threshold: float | None = None):
        self.llm, self.mode, self.threshold = llm, mode, threshold
        self.device = llm.model.device

    def options(self, max_new_tokens: int) -> dict:
        opts = dict(mode=self.mode, max_new_tokens=max_new_tokens, temperature=0.0)
        if self.mode == "diffusion":
            opts["threshold"] = self.threshold
        return opts

    def generate(self, batch: list[list[int]], max_new_tokens: int) -> list[Sample]:
        results = self.llm.generate(batch, **self.options(max_new_tokens))
        return [Sample(list(r.token_ids), r.stats.nfe, r.text) for r in results]


def decode_text(tokenizer, ids: list[int]) -> str:
    """Text of generated ids, decoded as ``LLM.generate`` decodes its results (special tokens dropped)."""
    if tokenizer is None:
        return ""
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(engine: Engine, prompts: list[list[int]], batch: int, max_new_tokens: int, desc: str = "",
            progress: bool = True) -> tuple[list[Sample], float]:
    """Warm ``engine`` up once, then decode ``prompts`` ``batch`` at a time; the samples and the seconds spent.

    Only the ``generate`` calls are timed (not the progress bar or the scoring).
    """
    from tqdm.auto import tqdm

    engine.generate(prompts[:batch], min(max_new_tokens, WARMUP_TOKENS))
    samples: list[Sample] = []
    seconds = 0.0
    with tqdm(total=len(prompts), desc=desc, unit="prompt", leave=False, disable=not progress) as bar:
        for i in range(0, len(prompts), batch):
            synchronize(engine.device)
            t0 = time.perf_counter()
            samples += engine.generate(prompts[i:i + batch], max_new_tokens)
            synchronize(engine.device)
            seconds += time.perf_counter() - t0
            bar.update(len(prompts[i:i + batch]))
    return samples, seconds
