"""Screen the adaptation levers of ``fastdllm train``: each alone, then combinations, same budget.

    python examples/word_problems/screen.py --run runs/wp --out runs/screen              # every lever
    python examples/word_problems/screen.py --run runs/wp --out runs/screen --levers anneal+ar_loss
    python examples/word_problems/screen.py --run runs/wp --out runs/screen --levers anneal --seed 1

``--run`` is a directory of ``build.py`` holding ``data/``, ``tokenizer/`` and the AR parent
``ar/``. Every lever setting adapts that parent to block diffusion with the build's data, order,
learning rate and schedule for ``--steps`` steps (``LEVERS`` says what each one sets; ``a+b``
combines them), then scores the result on validation problems (held-out phrasings, none of
the evaluation's 500) at thresholds 0.9 and 1.0, and its diffusion loss under the recipe's own
noise (block 32, t ~ U(eps, 1), fixed draws) on validation samples, so that levers that change
the training noise still compare on one yardstick. Runs are resumable (checkpoints every 50
steps; a finished run is not redone) and two can run side by side on one thread each.

Writes ``OUT/screening.json`` (every run) and ``OUT/screening.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples import report as R  # noqa: E402
from examples.word_problems import build as B  # noqa: E402
from examples.word_problems import problems as P  # noqa: E402

# each lever alone, at the setting the screening uses; shares of the run are of --steps
LEVERS: dict[str, dict] = {
    "baseline": {},
    "curriculum": {"block_curriculum": [4, 8, 16], "block_curriculum_share": 0.4},
    "anneal": {"attention_anneal_share": 0.4},
    "ar_loss": {"ar_loss_weight": 1.0},
    "tilt": {"mask_position_tilt": 0.5},
    "clipped": {"mask_rate": "clipped", "mask_rate_low": 0.3, "mask_rate_high": 0.8},
}


SUB_BLOCK = 4  # the decoding's sub-block: the shipped model's (its build chose 32 / 4)


def lever_options(name: str, steps: int) -> dict:
    """TrainConfig options of a lever setting (``a+b+...`` merges them)."""
    opts: dict = {}
    for part in name.split("+"):
        if part not in LEVERS:
            raise ValueError(f"unknown lever {part!r}; the levers are {', '.join(LEVERS)}")
        for k, v in LEVERS[part].items():
            if k == "block_curriculum_share":
                opts["block_curriculum_steps"] = max(1, round(v * steps))
            elif k == "attention_anneal_share":
                opts["attention_anneal_steps"] = max(1, round(v * steps))
            else:
                opts[k] = v
    return opts


def validation_problems(run: Path, n: int, seed: int) -> list[P.Problem]:
    held = P.read_jsonl(run / "data" / "heldout.jsonl")
    return B.validation_split(n, seed, held)


def adapt(run: Path, out: Path, name: str, steps: int, b: B.Budget, seed: int, threads: int, progress: bool) -> dict:
    """Train one lever setting (resuming a stopped run); returns the training result."""
    from fastdllm.training import TrainConfig, train

    torch.set_num_threads(threads)
    opts = B.common_options(b, seed, progress) | dict(warmup_steps=b.bd_warmup or b.warmup, num_threads=threads,
                                                       plot=False)
    cfg = TrainConfig(model=str(run / "ar"), tokenizer=str(run / "tokenizer"), data=str(run / "data" / "bd_train.jsonl"),
                      output_dir=str(out), objective="diffusion", block_size=b.block_size, complementary_mask=True,
                      max_steps=steps, micro_batch_size=b.bd_batch, lr=b.bd_lr, save_every=50, keep_checkpoints=1,
                      resume=True, **opts, **lever_options(name, steps))
    t0 = time.perf_counter()
    r = train(cfg)
    return {"steps": r.steps, "loss": r.loss, "seconds": time.perf_counter() - t0, "train_seconds": r.seconds}


@torch.no_grad()
def validation_loss(model_dir: Path, tok_dir: Path, problems: list[P.Problem], b: B.Budget, seed: int = 0) -> float:
    """Mean diffusion loss of ``problems`` under the recipe's own noise (complementary pairs,
    blocks of ``b.block_size``, t ~ U(1e-3, 1)), with draws fixed by ``seed``."""
    from fastdllm.loading import load_checkpoint
    from fastdllm.training.data import Sample
    from fastdllm.training.noise import diffusion_batch
    from fastdllm.training.objective import TrainingObjective
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    model = load_checkpoint(str(model_dir)).model.float().eval()
    mask_id = json.loads((model_dir / "config.json").read_text())["mask_token_id"]
    obj = TrainingObjective(model, "diffusion", b.block_size, "split")
    samples = []
    for rec in B.training_records(tok, problems, b.small_block_size):
        samples.append(Sample(torch.tensor(rec["input_ids"]), torch.tensor(rec["loss_mask"], dtype=torch.bool)))
    total = count = 0.0
    for i in range(0, len(samples), 16):
        batch = diffusion_batch(samples[i:i + 16], list(range(i, i + len(samples[i:i + 16]))), b.block_size, mask_id,
                                1e-3, seed, complementary=True)
        total += float(obj(batch))
        count += batch.n_targets
    return total / count


def score(run: Path, model_dir: Path, problems: list[P.Problem], b: B.Budget, progress: bool) -> dict:
    import fastdllm

    llm = fastdllm.load(str(model_dir), max_batch_size=b.batched)
    rows = {}
    for thr in (0.9, 1.0):
        e = B.evaluate(llm, problems, "diffusion", thr, batch=b.batched, b=b, progress=progress,
                       desc=f"{model_dir.parent.name} thr={thr}", block_size=b.block_size,
                       small_block_size=SUB_BLOCK)
        rows[str(thr)] = {k: e[k] for k in ("accuracy", "tpf", "tokens_per_s", "errors")}
    return rows


def _job(run: Path, out: Path, name: str, steps: int, seed: int, threads: int, progress: bool,
         n_val: int, quick: bool = False) -> dict:
    """One lever setting from start to its scores (a worker process of its own)."""
    torch.set_num_threads(threads)
    b = B.QUICK if quick else B.FULL
    d = out / run_name(name, seed)
    d.mkdir(parents=True, exist_ok=True)
    done = d / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    trained = adapt(run, d / "model", name, steps, b, seed, threads, progress)
    metrics = [json.loads(line) for line in (d / "model" / "metrics.jsonl").read_text().splitlines()]
    elapsed = metrics[-1]["elapsed"]
    val = validation_problems(run, n_val, 0)
    res = {"lever": name, "seed": seed, "steps": steps, "options": lever_options(name, steps), "threads": threads,
           "seconds_per_step": elapsed / max(metrics[-1]["step"], 1), "train": trained,
           "train_loss_last50": sum(m["loss"] for m in metrics[-5:]) / len(metrics[-5:]),
           "val_loss": validation_loss(d / "model", run / "tokenizer", val, b),
           "scores": score(run, d / "model", val, b, progress), "n_val": len(val), "machine": B.machine_info(),
           "date": time.strftime("%Y-%m-%d")}
    done.write_text(json.dumps(res, indent=2) + "\n")
    return res


def run_name(name: str, seed: int) -> str:
    return name if seed == 0 else f"{name}@seed{seed}"


def table(results: list[dict]) -> str:
    rows = []
    base = next((r for r in results if r["lever"] == "baseline" and r["seed"] == 0), None)
    for r in sorted(results, key=lambda r: (r["lever"] != "baseline", r["lever"], r["seed"])):
        s9, s10 = r["scores"]["0.9"], r["scores"]["1.0"]
        rel = f"{r['seconds_per_step'] / base['seconds_per_step']:.2f}x" if base else "-"
        rows.append([r["lever"], str(r["seed"]), str(r["steps"]), f"{r['val_loss']:.3f}", f"{100 * s9['accuracy']:.1f}%",
                     f"{s9['tpf']:.2f}", f"{100 * s10['accuracy']:.1f}%", f"{r['seconds_per_step']:.2f}", rel])
    return R.markdown(["lever", "seed", "steps", "val. loss", "acc. 0.9", "TPF 0.9", "acc. 1.0", "s/step",
                       "step cost"], rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a build.py directory with data/, tokenizer/ and ar/")
    p.add_argument("--out", type=Path, required=True, help="where each lever's run and the table go")
    p.add_argument("--levers", default=",".join(LEVERS),
                   help=f"comma-separated lever settings, a+b combines (default: each of {', '.join(LEVERS)})")
    p.add_argument("--steps", type=int, default=500, help="adaptation steps per setting (default: 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-val", type=int, default=200, help="validation problems (default: 200)")
    p.add_argument("--jobs", type=int, default=2, help="settings trained at once, one thread each (default: 2)")
    p.add_argument("--quick", action="store_true", help="build.py's --quick budget (for a run made with --quick)")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.levers.split(",") if n.strip()]
    for n in names:
        try:
            lever_options(n, a.steps)
        except ValueError as e:
            p.error(str(e))
    for need in ("ar", "tokenizer", "data/bd_train.jsonl", "data/heldout.jsonl"):
        if not (a.run / need).exists():
            p.error(f"{a.run / need} is missing: run build.py --stages data,ar --out {a.run} first")
    a.out.mkdir(parents=True, exist_ok=True)
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(max_workers=a.jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_job, a.run, a.out, n, a.steps, a.seed, 1, i == 0, a.n_val, a.quick): n
                   for i, n in enumerate(names)}
        for f in cf.as_completed(futures):
            r = f.result()
            s9 = r["scores"]["0.9"]
            print(f"{futures[f]}: val. loss {r['val_loss']:.3f}, accuracy at 0.9 {100 * s9['accuracy']:.1f}% "
                  f"(TPF {s9['tpf']:.2f}), at 1.0 {100 * r['scores']['1.0']['accuracy']:.1f}%, "
                  f"{r['seconds_per_step']:.2f} s/step", flush=True)
    results = [json.loads(f.read_text()) for f in sorted(a.out.glob("*/result.json"))]
    (a.out / "screening.json").write_text(json.dumps(results, indent=2) + "\n")
    (a.out / "screening.md").write_text(table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
