"""Training throughput of the default model's build: which trainer settings pay on this machine.

Each setting trains the build's model shape on the build's own data (word problems, the same
tokenizer and batching, ``--problems`` of them) for ``--steps`` optimizer steps of 32 problems,
in a fresh process (so torch's threads and compiled code never leak between rows), and reports
the median step time after the first ``--skip`` steps (compilation and warm-up), the sample
tokens per second, and the seconds the first steps cost (what compiling adds once per stage).

Settings, for the AR parent's step and the adaptation's step (the recipe's: complementary mask,
AR loss, curriculum and annealing): eager or ``--compile``; 1 or 2 torch threads; one
micro-batch of 32 or two of 16 (gradient accumulation). Prints a table, writes JSON.

    python examples/word_problems/throughput.py                     # every row (~15 min on 2 cores)
    python examples/word_problems/throughput.py --rows ar-eager-2t,ar-compile-2t --steps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from examples.word_problems import build as B  # noqa: E402
from examples.word_problems import problems as P  # noqa: E402
from examples.word_problems import tokenizer as T  # noqa: E402

# name -> (objective, compile, threads, micro-batch)
ROWS = {
    "ar-eager-1t": ("ar", False, 1, 32),
    "ar-eager-2t": ("ar", False, 2, 32),
    "ar-compile-2t": ("ar", True, 2, 32),
    "ar-eager-2t-mb16": ("ar", False, 2, 16),
    "bd-eager-1t": ("bd", False, 1, 32),
    "bd-eager-2t": ("bd", False, 2, 32),
    "bd-compile-2t": ("bd", True, 2, 32),
    "bd-eager-2t-mb16": ("bd", False, 2, 16),
}


def make_data(n: int, work: Path) -> tuple[Path, Path, Path]:
    """(tokenizer dir, AR records, diffusion records) for ``n`` training problems, as the build writes them."""
    b = B.FULL
    problems = P.make_split(n, 0, held_out=False, products=b.products)
    tok = T.build(problems, work / "tokenizer", b.vocab)
    ar = B.write_records(B.batched_order(B.training_records(tok, problems, None), b.ar_batch, 0, 8),
                         work / "ar.jsonl")
    bd = B.write_records(B.batched_order(B.training_records(tok, problems, b.small_block_size), b.bd_batch, 0,
                                         b.block_size), work / "bd.jsonl")
    return work / "tokenizer", ar, bd


def run_row(name: str, work: Path, steps: int, skip: int) -> dict:
    """Time one setting in this process (called in a child process by ``main``)."""
    from fastdllm.training.config import TrainConfig
    from fastdllm.training.trainer import Trainer

    objective, compile_, threads, mb = ROWS[name]
    torch.set_num_threads(threads)
    b = B.FULL
    common = dict(tokenizer=str(work / "tokenizer"), output_dir=str(work / name), micro_batch_size=mb,
                  grad_accum=32 // mb, lr=1e-3, seq_len=384, shuffle=False, progress=False, num_threads=threads,
                  compile=compile_)
    if objective == "ar":
        cfg = TrainConfig(init_from_scratch=True, model_config=b.model, objective="ar", data=str(work / "ar.jsonl"),
                          **common)
    else:  # adapt a fresh model: the step's cost does not depend on the weights
        cfg = TrainConfig(init_from_scratch=True, model_config=b.model, objective="diffusion",
                          block_size=b.block_size, complementary_mask=True, data=str(work / "bd.jsonl"),
                          **b.recipe, **common)
    trainer = Trainer(cfg)
    times, tokens = [], []
    for s in range(steps):
        t0 = time.perf_counter()
        _, n = trainer.train_step(s)
        times.append(time.perf_counter() - t0)
        tokens.append(n)
    med = statistics.median(times[skip:])
    return {"row": name, "objective": objective, "compile": compile_, "threads": threads, "micro_batch": mb,
            "steps": steps, "median_step_s": med, "tokens_per_s": statistics.mean(tokens[skip:]) / med,
            "first_steps_s": sum(times[:skip]), "extra_first_steps_s": sum(times[:skip]) - skip * med}


def table(rows: list[dict]) -> str:
    head = "| setting | step (median) | sample tokens/s | first steps | vs eager, same threads |\n|---|---|---|---|---|\n"
    base = {(r["objective"], r["threads"]): r["median_step_s"] for r in rows
            if not r["compile"] and r["micro_batch"] == 32}
    out = []
    for r in rows:
        ref = base.get((r["objective"], r["threads"]))
        ratio = f"{ref / r['median_step_s']:.2f}x" if ref else "-"
        out.append(f"| {r['row']} | {r['median_step_s']:.3f} s | {r['tokens_per_s']:,.0f} | "
                   f"{r['first_steps_s']:.0f} s | {ratio} |")
    return head + "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated settings: {', '.join(ROWS)}")
    p.add_argument("--steps", type=int, default=24, help="optimizer steps per setting")
    p.add_argument("--skip", type=int, default=4, help="first steps left out of the median (warm-up, compiling)")
    p.add_argument("--problems", type=int, default=3000, help="training problems to draw the batches from")
    p.add_argument("--out", type=Path, default=HERE.parents[1] / "benchmarks" / "results" / "train_settings.json")
    p.add_argument("--row", help=argparse.SUPPRESS)  # internal: time one row in this process
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.row:
        print(json.dumps(run_row(a.row, a.work, a.steps, a.skip)))
        return 0
    names = [n.strip() for n in a.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        p.error(f"unknown row(s) {', '.join(unknown)}; the rows are {', '.join(ROWS)}")
    if a.steps <= a.skip:
        p.error("--steps must be larger than --skip")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_data(a.problems, work)
        for name in names:
            print(f"{name} ...", file=sys.stderr, flush=True)
            out = subprocess.run([sys.executable, __file__, "--row", name, "--work", str(work), "--steps",
                                  str(a.steps), "--skip", str(a.skip)], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{name} failed:\n{out.stderr[-2000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  {r['median_step_s']:.3f} s/step, {r['tokens_per_s']:,.0f} tokens/s", file=sys.stderr)
    print(table(rows))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": B.machine_info(), "date": time.strftime("%Y-%m-%d"), "steps": a.steps,
                                 "skip": a.skip, "rows": rows}, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
