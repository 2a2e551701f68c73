"""End to end on a synthetic task: pretrain an AR model from scratch, adapt it to block diffusion.

    python examples/synthetic/run.py                 # the full run (~30 min on an idle 2-core CPU)
    python examples/synthetic/run.py --quick         # the test-suite version (~1 min)

Steps (everything goes under ``--out``):

1. data: ``train.jsonl`` (chat ``messages``: the user turn holds 8-16 distinct two-digit numbers,
   the assistant turn the same numbers sorted) and ``heldout.jsonl``; the held-out problems can
   never appear in training (the split is by a hash of the problem, see ``task.py``);
2. ``ar/``: a small Qwen2-style model trained from scratch with the plain causal-LM loss on the
   assistant turns (``fastdllm.training`` with ``objective="ar"``);
3. ``bd/`` and ``bd_nocomp/``: the AR model adapted with fastdllm's block-diffusion training
   (block size 32, complementary mask on / off, the same steps and data);
4. evaluation on held-out problems: the AR parent decoding autoregressively, the adapted models
   decoding by block diffusion at thresholds 1.0 / 0.9 / 0.7 / 0.5 (sub-blocks of 8): exact-match
   accuracy (the sorted numbers then EOS, checked on token ids), TPF (generated tokens / forward
   passes, summed over the problems), tokens/s of the batched generation.

Writes ``results.json`` and ``results.md`` (the table) and prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make ``examples.synthetic`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples import report as R  # noqa: E402
from examples.synthetic import task  # noqa: E402

THRESHOLDS = (1.0, 0.9, 0.7, 0.5)
BLOCK_SIZE, SMALL_BLOCK_SIZE = 32, 8


def model_config(hidden: int = 128, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                 intermediate: int = 512) -> dict:
    """A small Qwen2-style model (GQA, RoPE, SwiGLU, RMSNorm, QKV bias, tied embeddings)."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": 128,  # 107 tokens, padded (the trainer's mask token fits in the padding)
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "max_position_embeddings": 128,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "bos_token_id": None,
        "eos_token_id": task.EOS_ID,
        "pad_token_id": task.PAD_ID,
        "torch_dtype": "float32",
    }


@dataclass
class Budget:
    n_train: int
    n_eval: int
    model: dict
    ar_steps: int
    ar_batch: int
    ar_lr: float
    bd_steps: int
    bd_batch: int
    bd_lr: float
    warmup: int


FULL = Budget(n_train=96_000, n_eval=1000, model=model_config(), ar_steps=1000, ar_batch=64, ar_lr=1e-3,
              bd_steps=3000, bd_batch=32, bd_lr=2e-3, warmup=100)
QUICK = Budget(n_train=6_000, n_eval=96, model=model_config(hidden=64, layers=2, intermediate=256),
               ar_steps=200, ar_batch=32, ar_lr=3e-3, bd_steps=40, bd_batch=16, bd_lr=1e-3, warmup=20)


# ---- training ---------------------------------------------------------------------------------

def run_trainer(log, **options) -> dict:
    """``fastdllm.training.train(TrainConfig(**options))``; names the options the config lacks."""
    from fastdllm.training import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"TrainConfig has no field(s) {unknown}; it has {sorted(fields)}")
    shown = {k: v for k, v in options.items() if k not in ("model_config", "progress")}
    log("  fastdllm.training.train(TrainConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + "))")
    r = train(TrainConfig(**options))
    return {"output_dir": str(r.output_dir), "loss": r.loss, "steps": r.steps, "tokens_per_s": r.tokens_per_s,
            "seconds": getattr(r, "seconds", None), "losses": list(getattr(r, "losses", []))}


def common_options(b: Budget, seed: int, progress: bool) -> dict:
    return dict(seed=seed, schedule="cosine", adam_beta2=0.98, warmup_steps=b.warmup, progress=progress,
                log_every=10, num_threads=torch.get_num_threads())


def pretrain_ar(b: Budget, data: Path, tokenizer_dir: Path, out: Path, seed: int, progress: bool, log) -> dict:
    """The AR parent, from scratch: plain causal-LM loss on the assistant turns."""
    t0 = time.perf_counter()
    info = run_trainer(log, init_from_scratch=True, model_config=b.model, tokenizer=str(tokenizer_dir),
                       objective="ar", data=str(data), output_dir=str(out), max_steps=b.ar_steps,
                       micro_batch_size=b.ar_batch, lr=b.ar_lr, **common_options(b, seed, progress))
    info["seconds"] = time.perf_counter() - t0
    return info


def adapt(b: Budget, parent: Path, data: Path, tokenizer_dir: Path, out: Path, seed: int, complementary: bool,
          shuffle: bool, progress: bool, log) -> dict:
    """Block-diffusion adaptation of the AR parent (fastdllm's trainer, the Fast-dLLM v2 recipe)."""
    t0 = time.perf_counter()
    # tokenizer: the word-level original (the parent's copy would be reloaded as a Qwen2Tokenizer, see task.py)
    info = run_trainer(log, model=str(parent), tokenizer=str(tokenizer_dir), data=str(data), output_dir=str(out),
                       objective="diffusion", block_size=BLOCK_SIZE, complementary_mask=complementary,
                       max_steps=b.bd_steps, micro_batch_size=b.bd_batch, lr=b.bd_lr, shuffle=shuffle,
                       **common_options(b, seed, progress))
    info["seconds"] = time.perf_counter() - t0
    return info


# ---- evaluation -------------------------------------------------------------------------------

def evaluate(model_dir: Path, problems: list[task.Problem], mode: str, threshold: float = 0.9,
             batch_size: int = 64) -> dict:
    import fastdllm

    llm = fastdllm.load(str(model_dir), max_batch_size=batch_size)
    opts = dict(mode=mode, max_new_tokens=task.MAX_LEN + 2, temperature=0.0)
    if mode == "diffusion":
        opts.update(threshold=threshold, block_size=BLOCK_SIZE, small_block_size=SMALL_BLOCK_SIZE)
    prompts = [p.messages(with_answer=False) for p in problems]
    llm.generate(prompts[:8], **opts)  # warm-up (one-time allocations, compiled kernels)
    t0 = time.perf_counter()
    results = llm.generate(prompts, **opts)
    seconds = time.perf_counter() - t0
    exact = [task.check_ids(p, r.token_ids) for p, r in zip(problems, results)]
    token_acc = [sum(a == b for a, b in zip(p.answer_ids(), r.token_ids)) / len(p.answer_ids())
                 for p, r in zip(problems, results)]
    valid = [task.well_formed(p, r.token_ids) for p, r in zip(problems, results)]
    gen = sum(r.stats.generated_tokens for r in results)
    nfe = sum(r.stats.nfe for r in results)
    samples = [{"prompt": p.prompt, "expected": p.answer, "output": task.ids_to_text(r.token_ids),
                "correct": ok, "nfe": r.stats.nfe} for p, r, ok in list(zip(problems, results, exact))[:3]]
    return {"mode": mode, "threshold": threshold if mode == "diffusion" else None, "n": len(problems),
            "accuracy": sum(exact) / len(problems), "token_accuracy": sum(token_acc) / len(problems),
            "valid_format": sum(valid) / len(problems), "generated_tokens": gen, "nfe": nfe,
            "tpf": gen / nfe if nfe else 0.0, "tpf_mean": sum(r.stats.tpf for r in results) / len(results),
            "seconds": seconds, "tokens_per_s": gen / seconds if seconds > 0 else 0.0, "samples": samples}


# ---- reporting --------------------------------------------------------------------------------

COLUMNS = ("model", "decoding", "threshold", "accuracy", "token acc.", "valid", "TPF", "tokens/s")


def table_rows(evals: list[dict]) -> list[tuple[str, ...]]:
    rows = []
    for e in evals:
        thr = "-" if e["mode"] == "ar" else f"{e['threshold']:.1f}"
        rows.append((e["model"], e["mode"] if e["mode"] == "ar" else "diffusion", thr, f"{100 * e['accuracy']:.1f}%",
                     f"{100 * e['token_accuracy']:.1f}%", f"{100 * e['valid_format']:.1f}%", f"{e['tpf']:.2f}",
                     f"{e['tokens_per_s']:.0f}"))
    return rows


def markdown_table(evals: list[dict]) -> str:
    return R.markdown(COLUMNS, table_rows(evals))


def print_table(evals: list[dict], title: str) -> None:
    R.print_table(COLUMNS, table_rows(evals), title)


def plot_results(evals: list[dict], path: Path, title: str) -> Path:
    """Accuracy and TPF against the threshold, one line per adapted model, the AR parent as a reference."""
    ar = next(e for e in evals if e["mode"] == "ar")
    series = [(label, rows) for label in ("BD, compl. mask", "BD, no compl. mask")
              if (rows := [e for e in evals if e["model"] == label])]
    return R.plot_thresholds(path, title, ar, series, "exact-match accuracy (%)")


# ---- the pipeline -----------------------------------------------------------------------------

def run(out: Path, quick: bool = False, seed: int = 0, n_eval: int | None = None, bd_data: str = "eos-padded",
        progress: bool = True, log=print) -> dict:
    """The whole pipeline into ``out``; returns what ``results.json`` holds.

    ``bd_data``: the adaptation's training data: ``eos-padded`` (pre-tokenized, answers followed
    by EOS to the end of their sub-block, length-homogeneous batches; see
    ``task.write_eos_padded_jsonl``) or ``chat`` (the same chat records as the AR parent).
    """
    if bd_data not in ("eos-padded", "chat"):
        raise ValueError(f"bd_data must be 'eos-padded' or 'chat', got {bd_data!r}")
    b = dataclasses.replace(QUICK if quick else FULL)
    if n_eval:
        b.n_eval = n_eval
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    log(f"[1/4] data: {b.n_train} training problems, {b.n_eval} held-out problems")
    t0 = time.perf_counter()
    train_problems = task.make_split(b.n_train, seed, held_out=False)
    held = task.make_split(b.n_eval, seed, held_out=True)
    data = task.write_jsonl(train_problems, out / "train.jsonl")
    if bd_data == "eos-padded":
        bd_file = task.write_eos_padded_jsonl(train_problems, out / "train_bd.jsonl", batch_size=b.bd_batch,
                                              block_size=BLOCK_SIZE, seed=seed)
    else:
        bd_file = data
    task.write_jsonl(held, out / "heldout.jsonl")
    timings["data"] = time.perf_counter() - t0

    tok_dir = out / "tokenizer"
    task.save_tokenizer(tok_dir)

    log(f"[2/4] AR parent from scratch: {b.ar_steps} steps x {b.ar_batch} problems")
    ar = pretrain_ar(b, data, tok_dir, out / "ar", seed, progress, log)
    timings["ar_pretrain"] = ar["seconds"]

    runs = {}
    for name, comp in (("bd", True), ("bd_nocomp", False)):
        log(f"[3/4] block-diffusion adaptation ({name}, complementary mask {'on' if comp else 'off'}): "
            f"{b.bd_steps} steps x {b.bd_batch} problems")
        runs[name] = adapt(b, out / "ar", bd_file, tok_dir, out / name, seed, comp, bd_data == "chat", progress,
                           log)
        timings[f"adapt_{name}"] = runs[name]["seconds"]

    log(f"[4/4] evaluation on {b.n_eval} held-out problems")
    t0 = time.perf_counter()
    evals = [{"model": "AR parent", **evaluate(out / "ar", held, "ar")}]
    for name, label in (("bd", "BD, compl. mask"), ("bd_nocomp", "BD, no compl. mask")):
        for thr in THRESHOLDS:
            evals.append({"model": label, "run": name, **evaluate(out / name, held, "diffusion", thr)})
    timings["eval"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    results = {"quick": quick, "seed": seed, "bd_data": bd_data, "budget": dataclasses.asdict(b), "torch_threads": torch.get_num_threads(),
               "ar_pretrain": ar, "adaptation": runs, "evaluations": evals, "timings_s": timings}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    md = markdown_table(evals)
    (out / "results.md").write_text(md)
    plot_results(evals, out / "results.png", f"sorting 8-16 two-digit numbers, {b.n_eval} held-out problems")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the small test-suite version")
    p.add_argument("--out", type=Path, default=Path("runs/synthetic"), help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-eval", type=int, default=None, help="held-out problems to evaluate")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--bd-data", choices=("eos-padded", "chat"), default="eos-padded",
                   help="adaptation data: EOS-padded pre-tokenized samples (default) or the AR parent's chat records")
    p.add_argument("--replot", action="store_true", help="only redraw results.png from --out/results.json")
    a = p.parse_args(argv)
    if a.replot:
        res = json.loads((a.out / "results.json").read_text())
        print(plot_results(res["evaluations"], a.out / "results.png",
                           f"sorting 8-16 two-digit numbers, {res['budget']['n_eval']} held-out problems"))
        return 0
    if a.threads:
        torch.set_num_threads(a.threads)
    res = run(a.out, quick=a.quick, seed=a.seed, n_eval=a.n_eval, bd_data=a.bd_data)
    print_table(res["evaluations"], f"sorting 8-16 two-digit numbers, {res['budget']['n_eval']} held-out problems")
    t = res["timings_s"]
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in t.items()))
    print(f"wrote {a.out / 'results.json'}, {a.out / 'results.md'} and {a.out / 'results.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
