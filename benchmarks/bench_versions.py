"""Decoding speed of two fastdllm trees, side by side: did a change make decoding slower?

    mkdir /tmp/old && git archive OLD | tar -x -C /tmp/old
    python benchmarks/bench_versions.py --baseline /tmp/old --baseline-commit OLD [--model DIR] [--quantize none,int8]
        [--modes ar,diffusion] [--batch 1,16] [--problems 32] [--rounds 5] [--threads 2]
        [--out benchmarks/results/versions.json]

Each tree runs in processes of its own (``PYTHONPATH`` set to the tree, so any two versions
compare, whatever their internal layout: only ``fastdllm.load`` and ``LLM.generate`` are used).
Per round and configuration (quantisation x batch size x mode), both trees load the same
checkpoint (``--model``: this tree's default model unless given), decode one warm-up batch, then
decode ``--problems`` prompts (the default model's held-out questions) greedily ``--batch`` at a
time, timed with ``time.perf_counter``; the trees alternate, and which goes first swaps every
round, so a disturbance on a shared machine falls on both. Reported per configuration: the median
tokens/s of each tree over the rounds, the ratio this / baseline, and whether both produced the
same tokens (a like-for-like comparison needs the same tokens).

Prints a table and writes JSON (machine, load, commits, settings, every round). Meaningful only
on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastdllm.benchmarking.machine import cpu_name  # noqa: E402

DEFAULT_MODEL = ROOT / "fastdllm" / "models" / "word_problems"

# Runs inside each tree's process: load, warm up, decode, print one JSON line.
WORKER = r"""
import json, sys, time
import torch
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
import fastdllm
llm = fastdllm.load(a["model"], quantize=a["quantize"], max_batch_size=max(a["batch"], 8))
kw = dict(mode=a["mode"], max_new_tokens=a["max_new_tokens"])
if a["mode"] == "diffusion":
    kw["threshold"] = a["threshold"]
prompts, b = a["prompts"], a["batch"]
llm.generate(prompts[:b], **kw)  # warm-up: lazy set-up, compiled kernels, allocator
tokens, ids = 0, []
t0 = time.perf_counter()
for i in range(0, len(prompts), b):
    for r in llm.generate(prompts[i:i + b], **kw):
        tokens += len(r.token_ids)
        ids.append(list(r.token_ids))
dt = time.perf_counter() - t0
print("RESULT " + json.dumps({"tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt, "ids": ids}))
"""


def git_commit(tree: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def run_tree(tree: Path, args: dict, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # the child must import the tree's fastdllm, not an installed one: run it from the tree
    p = subprocess.run([sys.executable, "-c", WORKER, json.dumps(args)], cwd=tree, env=env, capture_output=True,
                       text=True, timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{tree}: the decoding process failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def held_out_questions(model_dir: Path, n: int) -> list[str]:
    path = model_dir / "heldout.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: --model needs a directory with heldout.jsonl (the default model's)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["question"] for r in rows[:n]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, type=Path, help="the other tree (a directory holding fastdllm/)")
    ap.add_argument("--baseline-commit", default=None,
                    help="what --baseline is, for the JSON (a git archive has no .git; default: its git HEAD)")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                    help="checkpoint directory both trees load (default: this tree's default model)")
    ap.add_argument("--quantize", default="none", help="comma-separated: none, int8, int4")
    ap.add_argument("--modes", default="ar,diffusion")
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=320)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds one decoding process may take")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "versions.json")
    a = ap.parse_args(argv)
    if not (a.baseline / "fastdllm" / "__init__.py").is_file():
        ap.error(f"--baseline {a.baseline}: no fastdllm/__init__.py there")
    if a.rounds < 1 or a.problems < 1:
        ap.error("--rounds and --problems must be at least 1")
    prompts = held_out_questions(a.model, a.problems)
    trees = {"baseline": a.baseline.resolve(), "this": ROOT}
    configs = [(q, int(b), m) for q in a.quantize.split(",") for b in a.batch.split(",") for m in a.modes.split(",")]
    load_before = os.getloadavg()
    results = []
    print(f"{'quantize':<8} {'batch':>5} {'mode':<9} {'baseline tok/s':>14} {'this tok/s':>10} {'this/base':>9} "
          f"{'same tokens':>11}")
    for q, b, m in configs:
        work = dict(model=str(a.model.resolve()), quantize=None if q == "none" else q, batch=b, mode=m,
                    threshold=a.threshold, max_new_tokens=a.max_new_tokens, prompts=prompts, threads=a.threads)
        rounds = {"baseline": [], "this": []}
        ids = {}
        for r in range(a.rounds):
            order = ("baseline", "this") if r % 2 == 0 else ("this", "baseline")
            for name in order:
                res = run_tree(trees[name], work, a.timeout)
                rounds[name].append(res["tokens_per_s"])
                ids[name] = res["ids"]
        med = {k: statistics.median(v) for k, v in rounds.items()}
        row = dict(quantize=q, batch=b, mode=m, tokens_per_s=med, rounds=rounds,
                   ratio=med["this"] / med["baseline"], same_tokens=ids["baseline"] == ids["this"])
        results.append(row)
        print(f"{q:<8} {b:>5} {m:<9} {med['baseline']:>14.1f} {med['this']:>10.1f} {row['ratio']:>8.3f}x "
              f"{'yes' if row['same_tokens'] else 'NO':>11}", flush=True)
    record = dict(benchmark="bench_versions", date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  command="python benchmarks/bench_versions.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  commits={"baseline": a.baseline_commit or git_commit(a.baseline), "this": git_commit(ROOT)},
                  settings={k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
                  machine=dict(cpu=cpu_name(), cores=os.cpu_count(),
                               load_average_before=load_before, load_average_after=os.getloadavg()),
                  results=results)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
