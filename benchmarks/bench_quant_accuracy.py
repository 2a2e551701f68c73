"""Does a quantised path cost the default model accuracy? Paired answers on more problems than one draw.

Decodes the shipped 500 held-out word problems and ``--fresh`` more problems in held-out phrasings
(drawn with another seed, none of the 500) with each path (float32, int8, int4, int4-gptq; int8-a8: int8 with int8 activations), block diffusion
at the model's own block sizes, greedy, threshold 0.9. Batches of ``--batch-size`` give the same
tokens as one problem at a time (tested batch invariance), only faster. Since every path decodes
the same problems, the table counts per path how many answers it turned wrong and right against
float32, and a two-sided sign test on those changes says whether the difference is more than the
noise of greedy decoding (a flipped token sends a whole solution another way).

    python benchmarks/bench_quant_accuracy.py --threads 2 [--fresh 1000] [--paths int8,int4]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.word_problems import build as B  # noqa: E402
from examples.word_problems import problems as P  # noqa: E402
from fastdllm.models import load_heldout_problems  # noqa: E402
from fastdllm.errors import FastDLLMError  # noqa: E402
from fastdllm.quant import A8_SUFFIX, load_path, parse_quantized_list  # noqa: E402


fresh_problems = P.held_out_except  # (n, avoid, seed): the extra problems, none of the shipped 500


def decode(llm, problems: list[P.Problem], batch: int, threshold: float, max_new_tokens: int, desc: str) -> dict:
    opts = dict(max_new_tokens=max_new_tokens, threshold=threshold, temperature=0.0)
    results, seconds = B.decode_problems(llm, problems, opts, batch, desc=desc)
    tokens = sum(r.stats.generated_tokens for r in results)
    nfe = sum(r.stats.nfe for r in results)
    right = [P.is_correct(p, r.text) for p, r in zip(problems, results)]
    return {"right": right, "accuracy": sum(right) / len(right), "tpf": tokens / max(nfe, 1), "seconds": seconds}


def sign_test(lost: int, gained: int) -> float:
    """Two-sided exact binomial p-value of ``lost`` against ``gained`` changes at even odds."""
    n, k = lost + gained, max(lost, gained)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a block-diffusion word-problem model (default: the embedded one)")
    ap.add_argument("--paths", default="int8,int4,int4-gptq", help="quantised paths compared with float32")
    ap.add_argument("--fresh", type=int, default=1000, help="extra held-out-phrasing problems (0: the 500 only)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the extra problems (the shipped ones used 0)")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--max-new-tokens", type=int, default=320)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/quant_accuracy.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:  # a bad path fails here, not after the float32 model is loaded
        paths = args.paths.split(",")
        parse_quantized_list(",".join(p.removesuffix(A8_SUFFIX) for p in paths))
    except FastDLLMError as e:
        ap.error(f"--paths: {e}")
    shipped = [P.Problem(**p) for p in load_heldout_problems()]
    sets = {"shipped 500": shipped}
    if args.fresh:
        sets[f"fresh {args.fresh}"] = fresh_problems(args.fresh, {p.question for p in shipped}, args.seed)

    runs: dict[str, dict[str, dict]] = {}
    for path in ["float32", *paths]:
        llm = load_path(path, args.model)
        runs[path] = {name: decode(llm, probs, args.batch_size, args.threshold, args.max_new_tokens, f"{path} {name}")
                      for name, probs in sets.items()}

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"block diffusion at {args.threshold}, greedy: accuracy per path, changes against float32")
    for col in ["path", *[f"{n} (TPF)" for n in sets], "all", "lost / gained", "points", "sign test p"]:
        table.add_column(col, justify="left" if col == "path" else "right")
    rows = []
    base = [r for name in sets for r in runs["float32"][name]["right"]]
    for path in runs:
        mine = [r for name in sets for r in runs[path][name]["right"]]
        lost = sum(1 for a, b in zip(base, mine) if a and not b)
        gained = sum(1 for a, b in zip(base, mine) if b and not a)
        row = {"path": path, "sets": {n: {k: v for k, v in runs[path][n].items() if k != "right"} for n in sets},
               "accuracy_all": sum(mine) / len(mine), "lost": lost, "gained": gained,
               "points": 100 * (gained - lost) / len(mine), "sign_test_p": sign_test(lost, gained),
               "right": {n: runs[path][n]["right"] for n in sets}}
        rows.append(row)
        cells = [f"{100 * runs[path][n]['accuracy']:.1f}% ({runs[path][n]['tpf']:.2f})" for n in sets]
        same = path == "float32"
        table.add_row(path, *cells, f"{100 * row['accuracy_all']:.1f}%", "-" if same else f"{lost} / {gained}",
                      "-" if same else f"{row['points']:+.1f}", "-" if same else f"{row['sign_test_p']:.3f}")
    Console().print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "problems": {n: len(v) for n, v in sets.items()},
                               "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
