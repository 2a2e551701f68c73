"""One ``fastdllm bench`` row: an engine's samples on the prompt set, summed up and scored.

Accuracy is the share of prompts with an ``answer`` whose output's ``The answer is N.`` line
(``fastdllm.models.extract_answer``) gives that number; None when no prompt has an answer.
Tokens and NFE are summed over prompts (NFE: the forward passes each prompt took part in), so
TPF = tokens / NFE. The speed-up is tokens/s over fastdllm's AR row at the same batch size.
"""

from __future__ import annotations

from ..models import extract_answer
from .engines import Sample
from .prompts import BenchPrompt


def score(samples: list[Sample], prompts: list[BenchPrompt]) -> dict:
    """Accuracy over the prompts that have an answer, and each prompt's extracted answer."""
    extracted = [extract_answer(s.text) for s in samples]
    graded = [(e == p.answer) for e, p in zip(extracted, prompts) if p.answer is not None]
    return {"accuracy": sum(graded) / len(graded) if graded else None, "correct": sum(graded),
            "scored": len(graded), "extracted": extracted}


def make_row(*, engine: str, model: str, model_path: str, decoding: str, threshold: float | None, batch: int,
             samples: list[Sample], seconds: float, prompts: list[BenchPrompt]) -> dict:
    s = score(samples, prompts)
    tokens = sum(len(x.token_ids) for x in samples)
    nfe = sum(x.nfe for x in samples)
    return {
        "engine": engine, "model": model, "model_path": model_path, "decoding": decoding, "threshold": threshold,
        "batch": batch, "prompts": len(samples), "accuracy": s["accuracy"], "correct": s["correct"],
        "scored": s["scored"], "generated_tokens": tokens, "nfe": nfe, "tpf": tokens / nfe if nfe else 0.0,
        "seconds": seconds, "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
        "speedup_vs_ar": None, "same_tokens_as": None,
        "outputs": [{"token_ids": x.token_ids, "text": x.text, "nfe": x.nfe, "answer": e, "expected": p.answer,
                     "correct": None if p.answer is None else e == p.answer}
                    for x, e, p in zip(samples, s["extracted"], prompts)],
    }


def label(row: dict) -> str:
    """A short name for a row: ``fastdllm diffusion t=0.9 b=16``, ``transformers AR b=1``."""
    thr = f" t={row['threshold']:g}" if row["threshold"] is not None else ""
    decoding = "AR" if row["decoding"] == "ar" else row["decoding"]
    return f"{row['engine']} {decoding}{thr} b={row['batch']}"


def is_fastdllm_ar(row: dict) -> bool:
    return row["engine"] == "fastdllm" and row["decoding"] == "ar"


def add_speedups(rows: list[dict]) -> None:
    """Fill ``speedup_vs_ar``: tokens/s over fastdllm's AR row at the same batch size."""
    ar = {r["batch"]: r["tokens_per_second"] for r in rows if is_fastdllm_ar(r)}
    for r in rows:
        base = ar.get(r["batch"])
        r["speedup_vs_ar"] = r["tokens_per_second"] / base if base else None


def compare_tokens(row: dict, other: dict, up_to_shorter: bool = False) -> None:
    """Record in ``row`` on how many prompts its generated ids equal ``other``'s (a correctness cross-check).

    ``up_to_shorter``: compare the first min(len) ids only (the released generate decodes whole
    blocks, so an unstopped output's length is not ``max_new_tokens``).
    """
    def same(a: list[int], b: list[int]) -> bool:
        n = min(len(a), len(b)) if up_to_shorter else max(len(a), len(b))
        return a[:n] == b[:n] and (up_to_shorter or len(a) == len(b))

    count = sum(same(a["token_ids"], b["token_ids"]) for a, b in zip(row["outputs"], other["outputs"]))
    row["same_tokens_as"] = {"row": label(other), "prompts": count, "of": len(row["outputs"]),
                             "compared": "up to the shorter output" if up_to_shorter else "whole outputs"}
