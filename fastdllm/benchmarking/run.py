"""``fastdllm bench``'s measurement: the same prompts through every engine, one row per setting.

Rows, at batch 1 and at ``batch_size`` (greedy, each engine warmed up once before it is timed):

- fastdllm block diffusion of the model, per threshold;
- fastdllm AR decoding of the AR parent (``ar_model``), else of the model's own weights;
- transformers' ``generate`` on the same weights as the AR row and the same token ids;
- the released Fast-dLLM v2 ``generate`` (``reference_code``; batch 1, per threshold).

Models are loaded one engine at a time and freed after their rows, so that a large model is
never held twice.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .engines import FastdllmEngine, Sample, decode_text, measure
from ..engine.options import FALLBACK_THRESHOLD, checkpoint_block_sizes
from .machine import machine_info
from .prompts import BenchPrompt
from .rows import add_speedups, compare_tokens, make_row

ENGINE_ORDER = {"fastdllm ar": 0, "transformers ar": 1, "fastdllm diffusion": 2, "reference diffusion": 3}


@dataclass
class BenchSettings:
    model: str
    prompts: list[BenchPrompt]
    prompts_source: str = ""
    thresholds: list[float] = field(default_factory=lambda: [FALLBACK_THRESHOLD])
    batch_size: int = 16
    max_new_tokens: int = 320          # the workload's length (longer than one answer needs), not a decode default
    ar_model: str | None = None        # the AR parent; None: AR decoding of the model's own weights
    transformers: bool = True
    reference_code: str | None = None  # directory with the released modeling.py / configuration.py
    reference_python: str = sys.executable
    dtype: str = "float32"
    device: str = "cpu"
    mask_token_id: int | None = None
    compile: bool | None = None
    steps_per_sync: int = 8            # AR forwards per read (``Engine.steps_per_sync``)
    chat: bool = True
    progress: bool = True

    @property
    def batch_sizes(self) -> list[int]:
        return [1] + ([self.batch_size] if self.batch_size > 1 else [])

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("prompts", "progress")}
        d["batch_sizes"] = self.batch_sizes
        return d


def run_bench(s: BenchSettings, log: Callable[[str], None] = print) -> dict:
    """Run every row; returns ``{"settings", "machine", "prompts", "notes", "rows"}`` (rows as in ``rows.py``)."""
    import fastdllm

    def load(model: str, mask_token_id: int | None = None):
        return fastdllm.load(model, dtype=s.dtype, device=s.device, mask_token_id=mask_token_id,
                             max_batch_size=max(s.batch_sizes), compile=s.compile, steps_per_sync=s.steps_per_sync)

    rows: list[dict] = []
    notes: list[str] = []
    if s.batch_size > len(s.prompts) > 1:
        notes.append(f"batch {s.batch_size} > {len(s.prompts)} prompts: the batched rows decode all "
                     f"{len(s.prompts)} at once")

    def row(engine: str, model: str, path, decoding: str, threshold, batch: int, samples: list[Sample],
            seconds: float) -> dict:
        r = make_row(engine=engine, model=model, model_path=str(path), decoding=decoding, threshold=threshold,
                     batch=batch, samples=samples, seconds=seconds, prompts=s.prompts)
        rows.append(r)
        return r

    def timed(engine, ids, batch: int, desc: str):
        return measure(engine, ids, batch, s.max_new_tokens, desc=desc, progress=s.progress)

    # --- AR: fastdllm, then transformers on the same weights and token ids
    log(f"loading {s.ar_model or s.model}" + (" (AR parent)" if s.ar_model else ""))
    ar_llm = load(s.ar_model) if s.ar_model else load(s.model, s.mask_token_id)
    ar_name = "AR parent" if s.ar_model else "model"
    ar_ids = [ar_llm.encode(p.prompt, chat=s.chat) for p in s.prompts]
    ar_rows = {}
    for b in s.batch_sizes:
        samples, sec = timed(FastdllmEngine(ar_llm, "ar"), ar_ids, b, f"fastdllm AR, batch {b}")
        ar_rows[b] = row("fastdllm", ar_name, ar_llm.checkpoint.path, "ar", None, b, samples, sec)
    if s.transformers:
        hf = _transformers_engine(ar_llm, s, notes, log)
        for b in s.batch_sizes if hf is not None else []:
            samples, sec = timed(hf, ar_ids, b, f"transformers generate, batch {b}")
            compare_tokens(row("transformers", ar_name, ar_llm.checkpoint.path, "ar", None, b, samples, sec),
                           ar_rows[b])
        hf = None
        _collect(s.device)

    # --- block diffusion (the AR LLM is reused when it holds the same weights)
    if s.ar_model:
        ar_llm = None
        _collect(s.device)
        log(f"loading {s.model}")
        llm = load(s.model, s.mask_token_id)
        ids = [llm.encode(p.prompt, chat=s.chat) for p in s.prompts]
    else:
        llm, ids = ar_llm, ar_ids
    diffusion_rows = {}
    if llm.mask_token_id is None:
        notes.append(f"no block-diffusion rows: {s.model} defines no mask token (not a block-diffusion checkpoint)")
    else:
        for b in s.batch_sizes:
            for t in s.thresholds:
                samples, sec = timed(FastdllmEngine(llm, "diffusion", t), ids, b,
                                     f"fastdllm diffusion t={t:g}, batch {b}")
                diffusion_rows[b, t] = row("fastdllm", "model", llm.checkpoint.path, "diffusion", t, b, samples, sec)

    # --- the released implementation, in its own interpreter
    if s.reference_code and llm.mask_token_id is not None:
        for t in s.thresholds:
            log(f"reference generate t={t:g} ({s.reference_python})")
            samples, sec, extra = _reference(llm, ids, t, s)
            r = row("reference", "model", llm.checkpoint.path, "diffusion", t, 1, samples, sec)
            r.update(extra)
            compare_tokens(r, diffusion_rows[1, t], up_to_shorter=True)
    llm = ar_llm = None
    _collect(s.device)

    # by batch, then engine; the sort is stable, so thresholds keep the order they were given in
    rows.sort(key=lambda r: (r["batch"], ENGINE_ORDER[f"{r['engine']} {r['decoding']}"]))
    add_speedups(rows)
    with_answers = sum(p.answer is not None for p in s.prompts)
    return {"settings": s.as_dict(), "machine": machine_info(s.device),
            "prompts": {"source": s.prompts_source, "count": len(s.prompts), "with_answers": with_answers},
            "notes": notes, "rows": rows}


def _transformers_engine(ar_llm, s: BenchSettings, notes: list[str], log):
    """transformers' generate on the AR LLM's checkpoint directory; None (with a note) when it has none."""
    from ..loading import parse_device, parse_dtype
    from .hf import TransformersEngine, load_transformers_model

    path = Path(ar_llm.checkpoint.path)
    if not (path / "config.json").is_file():
        notes.append(f"no transformers rows: {path} is not a checkpoint directory transformers can load")
        return None
    log(f"loading {path} with transformers")
    model = load_transformers_model(path, parse_dtype(s.dtype), parse_device(s.device))
    return TransformersEngine(model, ar_llm.tokenizer, ar_llm.eos_token_ids, mask_id=ar_llm.mask_token_id)


def _reference(llm, ids: list[list[int]], threshold: float, s: BenchSettings) -> tuple[list[Sample], float, dict]:
    """The released generate at ``threshold``, one prompt at a time; samples, seconds and row extras."""
    from .reference import release_skips_prompt, run_reference

    bs, sbs = checkpoint_block_sizes(llm.config.bd_size, llm.config.small_block_size)
    # the released generate decodes max_new_tokens // block_size whole blocks
    ref_max = -(-s.max_new_tokens // bs) * bs
    out = run_reference(ids, model_dir=llm.checkpoint.path, code_dir=s.reference_code, python=s.reference_python,
                        max_new_tokens=ref_max, threshold=threshold, block_size=bs, small_block_size=sbs,
                        mask_id=llm.mask_token_id, stop_token=llm.eos_token_ids[0], threads=torch.get_num_threads(),
                        dtype=s.dtype, device=s.device)
    samples = [Sample(r["tokens"], r["nfe"], decode_text(llm.tokenizer, r["tokens"])) for r in out["rows"]]
    extra = {"reference_env": {k: out.get(k) for k in ("transformers", "torch", "threads")},
             "reference_max_new_tokens": ref_max,
             # False for a fork that carries the sub-block cache across blocks (not the release)
             "reference_resets_block_cache": out.get("code_resets_block_cache"),
             # prompts the release decodes without reading (exactly one block long): expect other tokens there
             "prompts_release_ignores": sum(release_skips_prompt(len(p), bs) for p in ids)}
    return samples, sum(r["seconds"] for r in out["rows"]), extra


def _collect(device: str) -> None:
    """Give the memory of models dropped by the caller back (before the next one loads)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
