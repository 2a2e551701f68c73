"""How far is each quantised path's next-token distribution from float32's? KL on masked blocks.

The default word-problem model reads training-style inputs: ``--problems`` problems from the
training distribution (a seed of their own, none of them evaluation problems), chat prompt plus
worked solution, one 32-token block of the solution masked at ``--mask-rate`` as block diffusion
sees it mid-decoding. One forward per input under the block-causal mask, float32 against each
path; at every masked position (token shift: the output one to the left) the KL divergence of
the path's distribution from float32's, and whether the top token agrees. Quicker and less noisy
than decoding whole problems (``bench_quant_accuracy.py``), which is what the 1-point bar is about.

    python benchmarks/bench_quant_kl.py [--paths int8,int4,int4-gptq] [--problems 96] [--seed 202]
    python benchmarks/bench_quant_kl.py --model smollm2 --paths int8,int8-a8,int4,int4-a8

``int8-a8`` (any path with ``-a8``): the int8 layers take int8 activations (``fastdllm.quant.
set_activations``). ``--model``: another model; one without a mask token (an AR model such as
``smollm2``) reads ``TEXTS`` (plain English prose, code and arithmetic) and is scored at every
position of a causal forward.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fastdllm  # noqa: E402
from examples.word_problems import problems as P  # noqa: E402
from examples.word_problems.build import encode  # noqa: E402
from fastdllm.errors import FastDLLMError  # noqa: E402
from fastdllm.quant import A8_SUFFIX, load_path, parse_quantized_list  # noqa: E402
from fastdllm.engine.reference import dense_forward  # noqa: E402


def masked_inputs(tok, mask_id: int, block: int, n: int, seed: int, rate: float) -> list[list[int]]:
    """Prompt + solution ids with one block of the solution partly masked, per problem."""
    rng = random.Random(seed)
    out = []
    for p in P.make_split(n, seed, held_out=False):
        prompt, answer = encode(tok, p)
        ids = prompt + answer
        start = rng.choice([b for b in range(0, len(ids), block) if b + block > len(prompt)])
        out.append([mask_id if start <= i < start + block and i >= len(prompt) and rng.random() < rate else t
                    for i, t in enumerate(ids)])
    return out


@torch.no_grad()
def masked_logprobs(model, inputs: list[list[int]], mask_id: int, block: int) -> list[torch.Tensor | None]:
    """Per input, the log-probabilities predicting its masked positions (token shift) [masked, V], or None."""
    out = []
    for ids in inputs:
        rows = torch.tensor([i - 1 for i in range(1, len(ids)) if ids[i] == mask_id], dtype=torch.long)
        out.append(dense_forward(model, ids, block)[0].float().log_softmax(-1)[rows] if len(rows) else None)
    return out


def divergence_from(reference: list[torch.Tensor | None], model, inputs: list[list[int]], mask_id: int,
                    block: int) -> dict:
    """KL and top-1 agreement of ``model`` against ``masked_logprobs`` of the reference on the same inputs."""
    return kl_rows(reference, masked_logprobs(model, inputs, mask_id, block))


def divergence(ref, model, inputs: list[list[int]], mask_id: int, block: int) -> dict:
    return divergence_from(masked_logprobs(ref, inputs, mask_id, block), model, inputs, mask_id, block)


TEXTS = [
    "The history of the Roman Empire spans many centuries, beginning with the founding of the city and ending "
    "with the fall of Constantinople in 1453, when the Ottoman army breached the walls after a long siege.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "print([fibonacci(i) for i in range(10)])\n",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make glucose "
    "and oxygen. It happens in the chloroplasts, which contain the green pigment chlorophyll.",
    "Q: If a train travels 60 miles per hour for 3 hours, how far does it go? A: It travels 180 miles, because "
    "distance equals speed times time. Q: And in 5 hours? A: 300 miles.",
    "My favourite recipe is a simple tomato soup: roast tomatoes with garlic and onions, blend them with stock, "
    "and season with salt, pepper and fresh basil. Serve it hot with crusty bread.",
    "Dear hiring manager, I am writing to apply for the position of software engineer at your company. I have "
    "five years of experience building web services in Python and Go.",
]


@torch.no_grad()
def causal_logprobs(model, inputs: list[list[int]]) -> list[torch.Tensor]:
    """Per text, the next-token log-probabilities at every position of one causal forward [T, V]."""
    return [dense_forward(model, ids, None)[0].float().log_softmax(-1) for ids in inputs]


def kl_rows(reference: list[torch.Tensor | None], other: list[torch.Tensor | None]) -> dict:
    kl = agree = n = 0.0
    for a, b in zip(reference, other):
        if a is None:
            continue
        kl += float((a.exp() * (a - b)).sum())
        agree += float((a.argmax(-1) == b.argmax(-1)).sum())
        n += a.shape[0]
    return {"positions": int(n), "kl": kl / n, "top1_agreement": agree / n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paths", default="int8,int4,int4-gptq")
    ap.add_argument("--model", default=None, help="default: the embedded word-problem model")
    ap.add_argument("--problems", type=int, default=96)
    ap.add_argument("--seed", type=int, default=202, help="seed of the problems and the masks")
    ap.add_argument("--mask-rate", type=float, default=0.6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quant_kl.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:  # a bad path fails here, not after the float32 model is loaded
        paths = args.paths.split(",")
        parse_quantized_list(",".join(p.removesuffix(A8_SUFFIX) for p in paths))
    except FastDLLMError as e:
        ap.error(f"--paths: {e}")
    ref = fastdllm.load(args.model, dtype="float32", quantize=None)
    block = ref.config.bd_size or 32
    causal = ref.mask_token_id is None
    if causal:
        inputs = [ref.tokenizer.encode(t) for t in TEXTS]
        reference = causal_logprobs(ref.model, inputs)
    else:
        inputs = masked_inputs(ref.tokenizer, ref.mask_token_id, block, args.problems, args.seed, args.mask_rate)
        reference = masked_logprobs(ref.model, inputs, ref.mask_token_id, block)  # once, for every path
    rows = []
    for path in paths:
        llm = load_path(path, args.model, dtype="float32")
        got = (kl_rows(reference, causal_logprobs(llm.model, inputs)) if causal
               else divergence_from(reference, llm.model, inputs, ref.mask_token_id, block))
        rows.append({"path": path, **got})
        r = rows[-1]
        print(f"{path:10s} KL {r['kl']:.5f}  top-1 agreement {100 * r['top1_agreement']:.1f}%  "
              f"({r['positions']} positions)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model or "word-problems",
                                          "inputs": f"{len(TEXTS)} texts, every position" if causal else "masked blocks",
                                          "problems": args.problems, "seed": args.seed, "mask_rate": args.mask_rate,
                                          "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
