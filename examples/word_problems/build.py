"""Build fastdllm's default model from nothing: word problems -> tokenizer -> AR model -> block diffusion.

    python examples/word_problems/build.py --out runs/word_problems            # the full build
    python examples/word_problems/build.py --out runs/word_problems --install  # ... and ship it
    python examples/word_problems/build.py --out /tmp/wp --quick               # the test-suite version

Run again after a stop (Ctrl-C, a killed process), a build keeps the stages it finished and
continues the one it was in: a training stage from its last checkpoint (every ``save_every``
steps), the evaluation from its last finished row; it ends with the same files as a build that
ran through. ``--fresh`` redoes everything.

Stages (everything goes under ``--out``):

1. ``data/``: training problems and 500 held-out problems (held-out phrasings, unseen numbers;
   see ``problems.py``), as problem JSONL and as tokenized training records;
2. ``tokenizer/``: byte-level BPE trained on the training problems (``tokenizer.py``);
3. ``ar/``: a Qwen2-style model pretrained from scratch with fastdllm's trainer (``objective="ar"``);
4. ``bd_matched/`` and ``bd_nocomp/``: the AR model adapted to block diffusion with ``fastdllm
   train``'s recipe (token shift, block padding, with and without the complementary mask; same
   data and steps: the paper's ablation); then ``bd/``: ``bd_matched`` trained on with the
   complementary mask for the stages of ``Budget.bd_more``, on the problems that follow (a small
   model forgets its left-to-right habits under the bidirectional block attention and needs
   far more adaptation than a large one);
5. evaluation on the held-out problems, one problem at a time, greedy: the AR parent decoding
   autoregressively, the adapted models by block diffusion at thresholds 1.0 / 0.9 / 0.7 / 0.5,
   with the sub-block cache off and on; then 16 problems at a time;
   ``phrasings``: the AR parent and block diffusion at threshold 0.9 on as many problems in
   *training* phrasings with unseen numbers, beside the held-out rows, to tell apart what a
   wrong answer lacked: reading a new wording or doing the arithmetic;
6. ``report/``: ``results.json``, ``results.md`` (the table), ``results.png`` (accuracy and TPF
   against the threshold) and ``trace.png`` (one decoding, forward by forward);
7. ``release/``: what ships in the package (``fastdllm/models/word_problems``): weights and
   tokenizer of ``bd/``, the model card, the held-out problems and the report. ``--install``
   copies it there.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make ``examples.word_problems`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples import report as R  # noqa: E402
from examples.word_problems import errors as E  # noqa: E402
from examples.word_problems import problems as P  # noqa: E402
from examples.word_problems import tokenizer as T  # noqa: E402

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "fastdllm" / "models" / "word_problems"
THRESHOLDS = (1.0, 0.9, 0.7, 0.5)


def model_config(hidden: int = 128, layers: int = 6, heads: int = 4, kv_heads: int = 2, intermediate: int = 384,
                 vocab: int = 1024) -> dict:
    """A small Qwen2-style model (GQA, RoPE, SwiGLU, RMSNorm, QKV bias, tied embeddings)."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
    }


@dataclass
class Budget:
    n_train: int
    n_heldout: int
    vocab: int
    model: dict
    ar_steps: int
    ar_batch: int
    ar_lr: float
    bd_steps: int
    bd_batch: int
    bd_lr: float
    warmup: int
    bd_warmup: int | None = None  # the adaptation's warm-up steps (default: warmup)
    block_size: int = 32       # training block size (bd_size)
    small_block_size: int = 8
    batched: int = 16          # problems at a time for the batched rows
    n_sweep: int = 200         # validation problems for choosing the decoding block sizes (``validation_split``)
    max_new_tokens: int = 320
    # continued adaptation of the complementary-mask model after the matched-steps ablation:
    # (steps, peak lr, warm-up steps, min lr ratio) per stage, each on the next slice of the data
    bd_more: tuple[tuple[int, float, int, float], ...] = ()
    products: str = "fused"    # how the solutions write multiplication columns (``problems.make_split``)
    # ``fastdllm train`` lever options of the adaptation (``TrainConfig`` names): the schedule-like
    # ones (curriculum, attention annealing) apply to the first adaptation, the others to every stage
    recipe: dict = dataclasses.field(default_factory=dict)
    save_every: int = 100      # steps between resumable checkpoints of every training stage
    compile: bool = False      # torch.compile the training forward (pays after ~100 steps on 2 cores)

    @property
    def bd_total_steps(self) -> int:
        return self.bd_steps + sum(st[0] for st in self.bd_more)


FULL = Budget(n_train=60_000, n_heldout=500, vocab=1024, model=model_config(), ar_steps=7500, ar_batch=32,
              ar_lr=3e-3, bd_steps=300, bd_batch=32, bd_lr=2e-3, warmup=100, bd_warmup=50,
              # the adaptation loss still fell by a third over the last 600 of the first 1,600 continued
              # steps: a second stage at a lower peak takes it further (docs/history/2026-12-07-longer.md)
              bd_more=((1600, 1.5e-3, 20, 0.1), (2400, 1e-3, 20, 0.1)),
              # the screening's winner (docs/training-levers.md): the AR loss beside the diffusion loss,
              # small blocks first and the in-block attention opened gradually over 40% of the first stage
              recipe={"ar_loss_weight": 1.0, "block_curriculum": [4, 8, 16], "block_curriculum_steps": 120,
                      "attention_anneal_steps": 120},
              compile=True)
QUICK = Budget(n_train=3_000, n_heldout=12, vocab=512, model=model_config(64, 2, 4, 2, 192, 512), ar_steps=60,
               ar_batch=16, ar_lr=3e-3, bd_steps=12, bd_batch=8, bd_lr=1e-3, warmup=5, batched=4, n_sweep=4,
               max_new_tokens=64, bd_more=((6, 1e-3, 2, 0.3),), save_every=4)
SCHEDULED = ("block_curriculum", "block_curriculum_steps", "attention_anneal_steps")  # first adaptation only


# ---- data -------------------------------------------------------------------------------------------

def encode(tok, problem: P.Problem) -> tuple[list[int], list[int]]:
    """Prompt ids (chat template, generation prompt) and answer ids (solution, then EOS)."""
    prompt = tok.apply_chat_template(problem.messages(False), add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    answer = tok(problem.solution, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return prompt, answer


def training_records(tok, problems: list[P.Problem], pad_to: int | None) -> list[dict]:
    """Pre-tokenized samples, loss on the answer. ``pad_to``: EOS after the answer up to a multiple of it.

    The block-diffusion trainer pads a sample to whole blocks with the mask token and puts no
    loss there; but when decoding, the rest of the sub-block holding EOS is filled (and seen by
    the other positions) before the sub-block is done, so the adapted model learns "after the
    end comes EOS" from this padding.
    """
    out = []
    for p in problems:
        a, b = encode(tok, p)
        pad = -(len(a) + len(b)) % pad_to if pad_to else 0
        out.append({"input_ids": a + b + [tok.eos_token_id] * pad, "loss_mask": [0] * len(a) + [1] * (len(b) + pad)})
    return out


def batched_order(records: list[dict], batch_size: int, seed: int, bucket: int) -> list[dict]:
    """Records in runs of ``batch_size`` of similar length (``bucket`` tokens wide), runs in seeded order.

    The trainer pads a micro-batch to its longest sample, so similar lengths waste less compute;
    train on the result with ``shuffle=False``. Leftovers that do not fill a batch are dropped.
    """
    rng = random.Random(seed)
    buckets: dict[int, list[dict]] = {}
    for r in records:
        buckets.setdefault(-(-len(r["input_ids"]) // bucket), []).append(r)
    batches = []
    for rs in buckets.values():
        rng.shuffle(rs)
        batches += [rs[i:i + batch_size] for i in range(0, len(rs) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return [r for b in batches for r in b]


def write_records(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


# ---- training ---------------------------------------------------------------------------------------

STAGE_DONE, STAGE_STARTED = "build_stage.json", "build_options.json"  # resumability markers (never released)


def run_trainer(log, save_every: int = 0, **options) -> dict:
    """One training stage, resumable: a stage that finished with the same options is not redone
    (its result is read back), an unfinished one continues from its newest checkpoint (one every
    ``save_every`` steps), and one started with other options starts afresh."""
    from fastdllm.training import TrainConfig, train

    out = Path(options["output_dir"])
    key = {k: v for k, v in options.items() if k not in ("progress", "num_threads")}
    done = _read_json(out / STAGE_DONE)
    if done and done["options"] == key:
        log(f"  {out.name}: finished in an earlier run, kept")
        return done["result"]
    if _read_json(out / STAGE_STARTED) != key and out.exists():
        shutil.rmtree(out)  # another stage's leftovers: its checkpoints must not be resumed
    out.mkdir(parents=True, exist_ok=True)
    (out / STAGE_STARTED).write_text(json.dumps(key))
    shown = {k: v for k, v in options.items() if k not in ("model_config", "progress")}
    log("  fastdllm.training.train(TrainConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + "))")
    r = train(TrainConfig(**options, save_every=save_every, keep_checkpoints=1, resume=True))
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    result = {"output_dir": str(r.output_dir), "loss": r.loss, "steps": r.steps, "tokens": r.tokens,
              "tokens_per_s": r.tokens / max(last["elapsed"], 1e-9), "seconds": last["elapsed"]}
    (out / STAGE_DONE).write_text(json.dumps({"options": key, "result": result}))
    return result


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def common_options(b: Budget, seed: int, progress: bool) -> dict:
    return dict(seed=seed, schedule="cosine", min_lr_ratio=0.05, adam_beta2=0.98, weight_decay=0.0,
                warmup_steps=b.warmup, progress=progress, log_every=10, num_threads=torch.get_num_threads(),
                shuffle=False, seq_len=384, plot=True, compile=b.compile)


def pretrain_ar(b: Budget, data: Path, tok_dir: Path, out: Path, seed: int, progress: bool, log) -> dict:
    return run_trainer(log, b.save_every, init_from_scratch=True, model_config=b.model, tokenizer=str(tok_dir),
                       objective="ar", data=str(data), output_dir=str(out), max_steps=b.ar_steps,
                       micro_batch_size=b.ar_batch, lr=b.ar_lr, **common_options(b, seed, progress))


def adapt(b: Budget, parent: Path, data: Path, tok_dir: Path, out: Path, seed: int, complementary: bool,
          progress: bool, log) -> dict:
    opts = common_options(b, seed, progress)
    if b.bd_warmup is not None:
        opts["warmup_steps"] = b.bd_warmup
    return run_trainer(log, b.save_every, model=str(parent), tokenizer=str(tok_dir), data=str(data),
                       output_dir=str(out), objective="diffusion", block_size=b.block_size,
                       complementary_mask=complementary, max_steps=b.bd_steps, micro_batch_size=b.bd_batch, lr=b.bd_lr,
                       **opts, **b.recipe)


def _adapt_job(b: Budget, parent: Path, data: Path, tok_dir: Path, out: Path, seed: int, complementary: bool,
               progress: bool, threads: int) -> dict:
    """One adaptation in a worker process with ``threads`` torch threads (see ``adapt_both``)."""
    torch.set_num_threads(threads)
    return adapt(b, parent, data, tok_dir, out, seed, complementary, progress, print)


def adapt_both(b: Budget, out: Path, data: Path, tok_dir: Path, seed: int, progress: bool, log,
               parallel: bool) -> dict:
    """``bd_matched`` (complementary mask) and ``bd_nocomp`` (without): same parent, data, steps and seed.

    With ``parallel`` and at least two torch threads, the two run at once in two processes that
    share the threads (small matrices scale poorly across threads, so this finishes sooner than
    one after the other); only the first draws a progress bar.
    """
    jobs = (("bd_matched", True), ("bd_nocomp", False))
    threads = torch.get_num_threads()
    if not parallel or threads < 2:
        res = {}
        for name, comp in jobs:
            log(f"[3/7] block-diffusion adaptation ({name}, complementary mask {'on' if comp else 'off'}): "
                f"{b.bd_steps} steps x {b.bd_batch} problems")
            res[name] = adapt(b, out / "ar", data, tok_dir, out / name, seed, comp, progress, log)
        return res
    import concurrent.futures as cf
    import multiprocessing as mp

    log(f"[3/7] block-diffusion adaptation, bd_matched (complementary mask) and bd_nocomp (without) side by side, "
        f"{threads // 2} thread(s) each: {b.bd_steps} steps x {b.bd_batch} problems")
    with cf.ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as pool:
        futures = {name: pool.submit(_adapt_job, b, out / "ar", data, tok_dir, out / name, seed, comp,
                                     progress and i == 0, max(1, threads // 2))
                   for i, (name, comp) in enumerate(jobs)}
        return {name: f.result() for name, f in futures.items()}


def data_slice(data: Path, start: int, n: int, dst: Path) -> Path:
    """Lines [start, start + n) of ``data``, wrapping around at its end, written to ``dst``."""
    lines = data.read_text().splitlines(keepends=True)
    picked = [lines[(start + i) % len(lines)] for i in range(n)]
    dst.write_text("".join(picked))
    return dst


def adapt_more(b: Budget, out: Path, data: Path, tok_dir: Path, seed: int, progress: bool, log) -> list[dict]:
    """Continue ``bd_matched`` stage by stage (``b.bd_more``) into ``bd``, each stage on the next data.

    Stage k reads the ``steps x bd_batch`` problems that follow the ones already seen (the ablation
    read the first ``bd_steps x bd_batch``), wrapping around to the start of the file, in order.
    """
    src, seen, res = out / "bd_matched", b.bd_steps * b.bd_batch, []
    for k, (steps, lr, warmup, min_lr) in enumerate(b.bd_more):
        dst = out / "bd" if k == len(b.bd_more) - 1 else out / f"bd_more{k + 1}"
        part = data_slice(data, seen, steps * b.bd_batch, data.with_name(f"bd_train_more{k + 1}.jsonl"))
        log(f"[3/7] continued adaptation {k + 1}/{len(b.bd_more)} ({src.name} -> {dst.name}): {steps} steps x "
            f"{b.bd_batch} problems, peak lr {lr}")
        opts = common_options(b, seed + k + 1, progress) | dict(warmup_steps=warmup, min_lr_ratio=min_lr)
        opts |= {k: v for k, v in b.recipe.items() if k not in SCHEDULED}
        res.append(run_trainer(log, b.save_every, model=str(src), tokenizer=str(tok_dir), data=str(part),
                               output_dir=str(dst), objective="diffusion", block_size=b.block_size,
                               complementary_mask=True, max_steps=steps, micro_batch_size=b.bd_batch, lr=lr, **opts))
        src, seen = dst, seen + steps * b.bd_batch
    if not b.bd_more:
        if (out / "bd").exists():
            shutil.rmtree(out / "bd")
        shutil.copytree(out / "bd_matched", out / "bd")
    return res


# ---- evaluation -------------------------------------------------------------------------------------

def evaluate(llm, problems: list[P.Problem], mode: str, threshold: float | None = None, cache: bool = False,
             batch: int = 1, b: Budget = FULL, progress: bool = True, desc: str = "", block_size: int | None = None,
             small_block_size: int | None = None, acceptance: str = "threshold") -> dict:
    """Exact-answer accuracy, TPF and tokens/s on ``problems``, ``batch`` problems at a time (greedy).

    Block sizes default to the checkpoint's (``bd_size``, ``small_block_size`` in its config); the
    accept rule is Fast-dLLM v2's unless ``acceptance`` says otherwise (never the checkpoint's, so
    that a row means the same whatever the config holds).
    """
    opts = dict(mode=mode, max_new_tokens=b.max_new_tokens, temperature=0.0)
    if mode == "diffusion":
        opts.update(threshold=threshold, block_size=block_size, small_block_size=small_block_size,
                    use_block_cache=cache, acceptance=acceptance)
    llm.generate([p.messages(with_answer=False) for p in problems[:batch]], **opts)  # warm-up (allocations)
    results, seconds = decode_problems(llm, problems, opts, batch, progress, desc)
    correct = [P.is_correct(p, r.text) for p, r in zip(problems, results)]
    gen = sum(r.stats.generated_tokens for r in results)
    nfe = sum(r.stats.nfe for r in results)
    return {"mode": mode, "threshold": threshold, "block_cache": cache, "batch": batch, "n": len(problems),
            "acceptance": acceptance if mode == "diffusion" else None,
            "block_size": block_size or llm.config.bd_size, "small_block_size":
                small_block_size or llm.config.small_block_size,
            "accuracy": sum(correct) / len(problems), "generated_tokens": gen, "nfe": nfe,
            "tpf": gen / nfe if nfe else 0.0, "seconds": seconds, "tokens_per_s": gen / seconds if seconds else 0.0,
            "answer_lines": sum(P.extract_answer(r.text) is not None for r in results) / len(problems),
            "errors": E.breakdown(problems, [r.text for r in results]),
            "samples": [{"question": p.question, "expected": p.answer, "output": r.text, "correct": ok}
                        for p, r, ok in list(zip(problems, results, correct))[:3]]}


def decode_problems(llm, problems: list[P.Problem], opts: dict, batch: int = 1, progress: bool = True,
                    desc: str = "") -> tuple[list, float]:
    """Each problem's question decoded with ``llm.generate(**opts)``, ``batch`` at a time, with a
    progress bar -> (the results in order, seconds spent in ``generate``)."""
    prompts = [p.messages(with_answer=False) for p in problems]
    results, seconds = [], 0.0
    bar = _bar(len(problems), desc, progress)
    for i in range(0, len(prompts), batch):
        t0 = time.perf_counter()
        results += llm.generate(prompts[i:i + batch], **opts)
        seconds += time.perf_counter() - t0
        bar.update(min(batch, len(prompts) - i))
    bar.close()
    return results, seconds


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="problem", disable=not enabled, leave=False)


def matched_label(b: Budget, complementary: bool) -> str:
    """Row label of a model from the matched-steps ablation."""
    if complementary and not b.bd_more:
        return "BD, compl. mask"
    return f"BD, {'' if complementary else 'no '}compl. mask, {b.bd_steps} steps"


def evaluate_all(out: Path, problems: list[P.Problem], b: Budget, progress: bool, log,
                 all_problems: list[P.Problem] | None = None,
                 earlier: list[dict] | None = None,
                 decoding: dict | None = None) -> tuple[list[dict], list[dict]]:
    """The full table on ``problems``; and, when ``all_problems`` holds more, the rows the targets
    are about (AR parent; BD at threshold 0.9; BD with the ``decoding`` the sweep chose, when it is
    not that one: one problem at a time) on all of them.

    The ablation models (``bd_matched``, ``bd_nocomp``) are evaluated when they are in ``out``; a
    partial rerun without them (say, on a model continued from the shipped one) keeps their rows
    from ``earlier`` (the previous run's evaluations, on the same problems) instead.
    """
    import fastdllm

    rows, headline = [], []

    def ablation(name: str, label: str) -> bool:
        """Whether ``out / name`` is there to evaluate; if not, its rows from ``earlier`` are kept."""
        if (out / name).is_dir():
            return True
        old = [e for e in earlier or [] if e["model"] == label and e["n"] == len(problems)]
        if len(old) != len(THRESHOLDS):
            raise FileNotFoundError(f"{out / name} is missing and no earlier results on these {len(problems)} "
                                    f"problems hold its rows: run the bd stage")
        log(f"  {name} is not in {out}: its {len(old)} rows kept from the earlier results")
        rows.extend(old)
        return False

    models: dict = {}

    def row(label: str, name: str, into: list = rows, on: list[P.Problem] = problems, **kw):
        """One evaluation of the model ``out / name``; a finished one is kept in ``report/rows``, so
        an evaluation stopped part-way continues from its last finished row."""
        desc = f"{label} {kw.get('mode')} thr={kw.get('threshold')} cache={kw.get('cache', False)} batch={kw.get('batch', 1)}"
        if kw.get("acceptance", "threshold") != "threshold":
            desc += f" rule={kw['acceptance']} sizes={kw.get('block_size')}/{kw.get('small_block_size')}"
        if on is not problems:
            desc += f" on all {len(on)}"

        def measure() -> dict:
            if name not in models:
                models[name] = fastdllm.load(str(out / name), max_batch_size=b.batched)
            return {"model": label, **evaluate(models[name], on, b=b, progress=progress, desc=desc, **kw)}

        e = cached_row(out / "report" / "rows", out / name, f"{desc} {[p.question for p in on]}", measure)
        log(f"  {desc}: accuracy {100 * e['accuracy']:.1f}%, TPF {e['tpf']:.2f}, {e['tokens_per_s']:.0f} tok/s")
        into.append(e)

    row("AR parent", "ar", mode="ar")
    for thr in THRESHOLDS:
        for cache in (False, True):
            row("BD, compl. mask", "bd", mode="diffusion", threshold=thr, cache=cache)
    # the ablation compares at equal steps: the complementary-mask model before continuing
    if b.bd_more and ablation("bd_matched", matched_label(b, True)):
        for thr in THRESHOLDS:
            row(matched_label(b, True), "bd_matched", mode="diffusion", threshold=thr)
    if ablation("bd_nocomp", matched_label(b, False)):
        for thr in THRESHOLDS:
            row(matched_label(b, False), "bd_nocomp", mode="diffusion", threshold=thr)
    chosen = None
    if decoding and decoding["acceptance"] != "threshold":  # (a threshold-rule choice: add its rows likewise)
        chosen = dict(mode="diffusion", threshold=decoding["threshold"], acceptance=decoding["acceptance"],
                      block_size=decoding["block_size"], small_block_size=decoding["small_block_size"])
        for cache in (False, True):
            row("BD, compl. mask", "bd", cache=cache, **chosen)
    row("AR parent", "ar", mode="ar", batch=b.batched)
    row("BD, compl. mask", "bd", mode="diffusion", threshold=0.9, batch=b.batched)
    row("BD, compl. mask", "bd", mode="diffusion", threshold=0.9, cache=True, batch=b.batched)
    if chosen:
        for cache in (False, True):
            row("BD, compl. mask", "bd", cache=cache, batch=b.batched, **chosen)
    if all_problems is not None and len(all_problems) > len(problems):
        log(f"  the AR parent and block diffusion at threshold 0.9 on all {len(all_problems)} held-out problems")
        row("AR parent", "ar", into=headline, on=all_problems, mode="ar")
        row("BD, compl. mask", "bd", into=headline, on=all_problems, mode="diffusion", threshold=0.9)
        if chosen:
            row("BD, compl. mask", "bd", into=headline, on=all_problems, **chosen)
    return rows, headline


def cached_row(cache_dir: Path, model_dir: Path, key: str, measure) -> dict:
    """``measure()``, or what it gave in an earlier run for the same ``key`` on the same model
    (weights and config: the sweep stage rewrites the block sizes)."""
    h = hashlib.sha256()
    h.update((model_dir / "model.safetensors").read_bytes())
    cfg = json.loads((model_dir / "config.json").read_text())
    for k in DECODING_KEYS:  # every row names its rule and threshold: the config's default does not matter
        cfg.pop(k, None)
    h.update(json.dumps(cfg, indent=2).encode() + b"\n")
    h.update(key.encode())
    path = cache_dir / f"{h.hexdigest()[:24]}.json"
    kept = _read_json(path)
    if kept is not None:
        return kept
    e = measure()
    cache_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(e))
    return e


SWEEP = ((32, 8), (32, 4), (32, 16), (16, 8), (16, 4))
# the shipped decoding: sub-blocks (at the chosen block size) x accept rules and thresholds
# (``fastdllm.engine.acceptance``); the ordered rules stop at the first unsure position, so a larger
# sub-block no longer costs them the accuracy it costs Fast-dLLM v2's rule
DECODING_SUB_BLOCKS = (4, 8, 16, 32)
DECODING_RULES = (("threshold", 0.9), ("prefix", 0.95), ("joint", 0.9), ("joint", 0.95), ("joint", 0.99))
DECODING_KEYS = ("acceptance", "threshold")  # what the release's config.json adds (``write_decoding``)


def validation_split(n: int, seed: int, evaluation: list[P.Problem]) -> list[P.Problem]:
    """``n`` problems in held-out phrasings, drawn with their own seed and none of ``evaluation``'s:
    the decoding settings are chosen on these, so the evaluation's problems never pick them."""
    return P.held_out_except(n, {p.question for p in evaluation}, seed + 1)


def choose_block_sizes(model_dir: Path, problems: list[P.Problem], b: Budget, progress: bool, log) -> tuple[dict, list]:
    """Decode ``problems`` one at a time with each (block, sub-block) pair of ``SWEEP`` at threshold 0.9.

    Returns the pair with the most tokens/s among those within a point of the best accuracy, and
    the measurements.
    """
    import fastdllm

    llm = fastdllm.load(str(model_dir))
    rows = []
    for bs, sbs in SWEEP:
        e = evaluate(llm, problems, "diffusion", 0.9, b=b, progress=progress, block_size=bs, small_block_size=sbs,
                     acceptance="threshold",
                     desc=f"block {bs} / sub-block {sbs}")
        rows.append({k: e[k] for k in ("block_size", "small_block_size", "n", "accuracy", "tpf", "tokens_per_s")})
        log(f"  block {bs}, sub-block {sbs}: accuracy {100 * e['accuracy']:.1f}%, TPF {e['tpf']:.2f}, "
            f"{e['tokens_per_s']:.0f} tok/s")
    best = max(r["accuracy"] for r in rows)
    chosen = max((r for r in rows if r["accuracy"] >= best - 0.01), key=lambda r: r["tokens_per_s"])
    return {"block_size": chosen["block_size"], "small_block_size": chosen["small_block_size"]}, rows


def choose_decoding(model_dir: Path, ar_dir: Path, problems: list[P.Problem], block_size: int, b: Budget,
                    progress: bool, log) -> tuple[dict, list]:
    """Decode ``problems`` one at a time with the AR parent, and with block diffusion at ``block_size``
    for each sub-block of ``DECODING_SUB_BLOCKS`` and (rule, threshold) of ``DECODING_RULES``.

    Returns the setting with the most tokens per forward among those within a point of the parent's
    accuracy (none: the most accurate, then the most tokens per forward), and the measurements.
    """
    import fastdllm

    keys = ("mode", "n", "accuracy", "tpf", "tokens_per_s")
    parent = evaluate(fastdllm.load(str(ar_dir)), problems, "ar", b=b, progress=progress, desc="AR parent")
    rows = [{"block_size": None, "small_block_size": None, "acceptance": None, "threshold": None,
             **{k: parent[k] for k in keys}}]
    log(f"  AR parent: accuracy {100 * parent['accuracy']:.1f}%")
    llm = fastdllm.load(str(model_dir))
    for sbs in (s for s in DECODING_SUB_BLOCKS if block_size % s == 0):
        for rule, thr in DECODING_RULES:
            e = evaluate(llm, problems, "diffusion", thr, b=b, progress=progress, acceptance=rule,
                         block_size=block_size, small_block_size=sbs, desc=f"sub-block {sbs}, {rule} {thr}")
            rows.append({"block_size": block_size, "small_block_size": sbs, "acceptance": rule, "threshold": thr,
                         **{k: e[k] for k in keys}})
            log(f"  sub-block {sbs}, {rule} rule at {thr}: accuracy {100 * e['accuracy']:.1f}%, TPF {e['tpf']:.2f}")
    bd = rows[1:]
    keeps = [r for r in bd if r["accuracy"] >= parent["accuracy"] - 0.01]
    chosen = (max(keeps, key=lambda r: r["tpf"]) if keeps
              else max(bd, key=lambda r: (r["accuracy"], r["tpf"])))
    return {k: chosen[k] for k in ("block_size", "small_block_size", "acceptance", "threshold")}, rows


def write_decoding(model_dir: Path, decoding: dict) -> None:
    """The chosen decoding as the checkpoint's defaults (config.json ``bd_size``, ``small_block_size``,
    ``acceptance``, ``threshold``: what ``fastdllm.load`` decodes with when a request names none)."""
    update_config(model_dir, bd_size=decoding["block_size"], small_block_size=decoding["small_block_size"],
                  **{k: decoding[k] for k in DECODING_KEYS})


def write_block_sizes(model_dir: Path, chosen: dict) -> None:
    update_config(model_dir, bd_size=chosen["block_size"], small_block_size=chosen["small_block_size"])


def update_config(model_dir: Path, **keys) -> None:
    """Set ``keys`` in the checkpoint's config.json (written as the trainer writes it: indent 2, newline)."""
    cfg_file = model_dir / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **keys}, indent=2) + "\n")


# ---- report -----------------------------------------------------------------------------------------

COLUMNS = ("model", "decoding", "threshold", "sub-block cache", "batch", "accuracy", "TPF", "tokens/s", "vs AR")


def table_rows(evals: list[dict]) -> list[tuple[str, ...]]:
    ar_speed = {e["batch"]: e["tokens_per_s"] for e in evals if e["mode"] == "ar"}
    rows = []
    for e in evals:
        diff = e["mode"] == "diffusion"
        ref = ar_speed.get(e["batch"])
        rows.append((e["model"], e["mode"], _threshold(e) if diff else "-",
                     ("on" if e["block_cache"] else "off") if diff else "-", str(e["batch"]),
                     f"{100 * e['accuracy']:.1f}%", f"{e['tpf']:.2f}", f"{e['tokens_per_s']:.0f}",
                     f"{e['tokens_per_s'] / ref:.2f}x" if ref else "-"))
    return rows


def _threshold(e: dict) -> str:
    """``0.9`` under Fast-dLLM v2's accept rule (at the block sweep's sizes), ``0.95 joint, sub-block 8``
    under another (``acceptance.py``; the shipped decoding's own sub-block)."""
    rule = e.get("acceptance") or "threshold"
    return f"{e['threshold']:g}" + ("" if rule == "threshold" else f" {rule}, sub-block {e['small_block_size']}")


def markdown_table(evals: list[dict]) -> str:
    return R.markdown(COLUMNS, table_rows(evals))


def report_markdown(evals: list[dict], headline: list[dict], phrasings: list[dict] | None = None) -> str:
    """The full table; then, when the full table covers only the first problems, the two headline
    rows on all of them; the wrong answers by first mistake; and the phrasings comparison."""
    md = markdown_table(evals)
    if headline:
        md += f"\nOn all {headline[0]['n']} held-out problems, one at a time:\n\n" + markdown_table(headline)
    errors = errors_table(headline or evals)
    if errors:
        md += ("\nWhere the wrong answers first go wrong (`errors.py`; one problem at a time):\n\n" + errors)
    if phrasings:
        n, batch = phrasings[0]["n"], phrasings[0]["batch"]
        md += (f"\nHeld-out phrasings against training phrasings: all {n} held-out problems, and {n} in the "
               f"wordings the model trained on with numbers no training problem has; {batch} at a time, which gives "
               f"the same answers as one at a time on the CPU:\n\n" + phrasings_table(phrasings))
    return md


def _decoding(e: dict) -> str:
    """An evaluation's decoding, as the error tables name it: ``ar`` or ``diffusion, 0.9``."""
    return e["mode"] if e["mode"] == "ar" else f"diffusion, {_threshold(e)}"


def phrasings_table(phrasings: list[dict]) -> str:
    """Accuracy and wrong answers by first mistake, held-out phrasings against training phrasings."""
    rows = [[e["model"], _decoding(e), e["phrasings"], str(e["n"]), f"{100 * e['accuracy']:.1f}%",
             *(str(e["errors"][c]) for c in E.CATEGORIES)] for e in phrasings]
    return R.markdown(["model", "decoding", "phrasings", "problems", "accuracy", *E.CATEGORIES], rows)


def evaluate_phrasings(out: Path, held: list[P.Problem], b: Budget, seed: int, progress: bool, log) -> list[dict]:
    """The AR parent and block diffusion at threshold 0.9 on the held-out problems and on as many in
    training phrasings with unseen numbers (``problems.unseen_numbers``), ``b.batched`` at a time."""
    import fastdllm

    splits = (("held-out", held), ("training", P.unseen_numbers(len(held), seed, products=b.products)))
    rows = []
    for label, name, kw in (("AR parent", "ar", dict(mode="ar")),
                            ("BD, compl. mask", "bd", dict(mode="diffusion", threshold=0.9))):
        llm = fastdllm.load(str(out / name), max_batch_size=b.batched)
        for split, problems in splits:
            e = {"model": label, "phrasings": split, **evaluate(llm, problems, b=b, progress=progress, batch=b.batched,
                                                                desc=f"{label}, {split} phrasings", **kw)}
            log(f"  {label} on {len(problems)} problems in {split} phrasings: accuracy {100 * e['accuracy']:.1f}%, "
                f"TPF {e['tpf']:.2f}")
            rows.append(e)
    return rows


def errors_table(evals: list[dict]) -> str:
    """Wrong answers by first mistake, for the AR rows and block diffusion at threshold 0.9 (batch 1)."""
    picked = [e for e in evals if e.get("errors") and e["batch"] == 1
              and (e["mode"] == "ar" or ((e["threshold"] == 0.9 or (e.get("acceptance") or "threshold") != "threshold")
                                         and not e["block_cache"]))]
    if not picked:
        return ""
    rows = [[e["model"], _decoding(e), str(e["n"]), str(sum(e["errors"].values())),
             *(str(e["errors"][c]) for c in E.CATEGORIES)] for e in picked]
    return R.markdown(["model", "decoding", "problems", "wrong", *E.CATEGORIES], rows)


def print_table(evals: list[dict], title: str) -> None:
    R.print_table(COLUMNS, table_rows(evals), title, min_width=120)


def plot_results(evals: list[dict], path: Path, title: str) -> Path:
    """Accuracy and TPF against the threshold (one problem at a time), the AR parent as a reference."""
    ar = next(e for e in evals if e["mode"] == "ar" and e["batch"] == 1)
    one = [e for e in evals if e["mode"] == "diffusion" and e["batch"] == 1]
    one = [e for e in one if (e.get("acceptance") or "threshold") == "threshold"]  # against the threshold
    series = [(label + (", sub-block cache" if cache else ""),
               [e for e in one if (e["model"], e["block_cache"]) == (label, cache)])
              for label, cache in dict.fromkeys((e["model"], e["block_cache"]) for e in one)]  # in table order
    return R.plot_thresholds(path, title, ar, series, "exact-answer accuracy (%)")


def decoding_picture(model_dir: Path, problem: P.Problem, path: Path, b: Budget, decoding: dict | None = None) -> Path:
    import fastdllm
    from fastdllm.visualize import plot_trace, record

    llm = fastdllm.load(str(model_dir))
    opts = {} if not decoding else {"threshold": decoding["threshold"], "acceptance": decoding["acceptance"],
                                    "block_size": decoding["block_size"], "small_block_size": decoding["small_block_size"]}
    _, trace = record(llm, problem.messages(False), max_new_tokens=b.max_new_tokens, **{"threshold": 0.9, **opts})
    return plot_trace(trace, path, title=f"{problem.question[:90]}...")


# ---- release ----------------------------------------------------------------------------------------

def release(out: Path, heldout_file: Path, results: dict, b: Budget) -> Path:
    """The files that ship: the block-diffusion model, its tokenizer, the model card, the held-out set."""
    rel = out / "release"
    if rel.exists():
        shutil.rmtree(rel)
    rel.mkdir(parents=True)
    _copy_model(out / "bd", rel)
    decoding = (results.get("chosen") or {}).get("decoding")
    if decoding:  # the run's bd/ keeps the block sweep's sizes (the table's rows); the release decodes as chosen
        write_decoding(rel, decoding)
    _copy_model(out / "ar", rel / "ar_parent")  # the AR parent, for fastdllm bench and comparisons
    shutil.copy2(heldout_file, rel / "heldout.jsonl")
    for f in ("results.md", "results.json", "results.png", "trace.png"):
        if (out / "report" / f).is_file():  # absent when the eval stage did not run
            shutil.copy2(out / "report" / f, rel / f)
    from examples.word_problems.model_card import write_model_card

    write_model_card(rel / "README.md", results, b)
    return rel


def _copy_model(src: Path, dst: Path) -> None:
    """A checkpoint's weights, config and tokenizer (not its training logs)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if (f.is_file() and f.suffix in (".json", ".safetensors", ".jinja")
                and f.name not in ("train_config.json", STAGE_DONE, STAGE_STARTED)):
            shutil.copy2(f, dst / f.name)


def install(rel: Path, target: Path = PACKAGE_DIR) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(rel, target)
    return target


# ---- the pipeline -----------------------------------------------------------------------------------

STAGES = ("data", "ar", "bd", "sweep", "eval", "phrasings", "release")
# what each stage reads from an earlier one (so a partial rerun fails before it starts, saying why)
NEEDS = {"ar": ("data/ar_train.jsonl", "tokenizer"), "bd": ("data/bd_train.jsonl", "tokenizer", "ar"),
         "sweep": ("data/heldout.jsonl", "bd"), "eval": ("data/heldout.jsonl", "ar", "bd"),
         "phrasings": ("data/heldout.jsonl", "ar", "bd", "report/results.json"),
         "release": ("data/heldout.jsonl", "ar", "bd")}
MADE_BY = {"data/ar_train.jsonl": "data", "data/bd_train.jsonl": "data", "data/heldout.jsonl": "data",
           "tokenizer": "data", "ar": "ar", "bd": "bd", "report/results.json": "eval"}


def check_stages(out: Path, stages: tuple[str, ...]) -> None:
    """Unknown stage names, and inputs that neither ``out`` holds nor an earlier stage of this run
    makes, raise ValueError / FileNotFoundError up front."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(map(repr, unknown))}; the stages are {', '.join(STAGES)}")
    for stage in stages:
        for need in NEEDS.get(stage, ()):
            maker = MADE_BY[need]
            made_here = maker in stages and STAGES.index(maker) < STAGES.index(stage)
            if not made_here and not (out / need).exists():
                raise FileNotFoundError(f"the {stage} stage needs {out / need}, which the {maker} stage makes: "
                                        f"add {maker} to --stages or point --out at a run that has it")


def run(out: Path, quick: bool = False, seed: int = 0, progress: bool = True, log=print,
        stages: tuple[str, ...] = STAGES, parallel: bool = True,
        eval_problems: int | None = None, products: str | None = None) -> dict:
    b = dataclasses.replace(QUICK if quick else FULL)
    if products is not None:
        b.products = products
    out = Path(out)
    check_stages(out, stages)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    data_dir, tok_dir = out / "data", out / "tokenizer"

    t0 = time.perf_counter()
    data_key = {"n_train": b.n_train, "n_heldout": b.n_heldout, "vocab": b.vocab, "seed": seed, "products": b.products,
                "ar_batch": b.ar_batch, "bd_batch": b.bd_batch, "block_size": b.block_size,
                "small_block_size": b.small_block_size}
    kept_data = _read_json(data_dir / STAGE_DONE)
    if "data" in stages and kept_data and kept_data["options"] == data_key:
        log("[1/7] data: made in an earlier run, kept")
        timings["data"] = kept_data["seconds"]
    elif "data" in stages:
        log(f"[1/7] data: {b.n_train} training problems, {b.n_heldout} held-out problems; tokenizer")
        (data_dir / STAGE_DONE).unlink(missing_ok=True)
        train_problems = P.make_split(b.n_train, seed, held_out=False, products=b.products)
        held = P.make_split(b.n_heldout, seed, held_out=True, products=b.products)
        P.write_jsonl(train_problems, data_dir / "train.jsonl")
        P.write_jsonl(held, data_dir / "heldout.jsonl")
        tok = T.build(train_problems, tok_dir, b.vocab)
        write_records(batched_order(training_records(tok, train_problems, None), b.ar_batch, seed, 8),
                      data_dir / "ar_train.jsonl")
        write_records(batched_order(training_records(tok, train_problems, b.small_block_size), b.bd_batch, seed,
                                    b.block_size), data_dir / "bd_train.jsonl")
        timings["data"] = time.perf_counter() - t0
        (data_dir / STAGE_DONE).write_text(json.dumps({"options": data_key, "seconds": timings["data"]}))
    held_all = P.read_jsonl(data_dir / "heldout.jsonl") if (data_dir / "heldout.jsonl").exists() else []
    held = held_all[:eval_problems or None]

    ar = bd = None
    if "ar" in stages:
        log(f"[2/7] AR model from scratch: {b.ar_steps} steps x {b.ar_batch} problems")
        ar = pretrain_ar(b, data_dir / "ar_train.jsonl", tok_dir, out / "ar", seed, progress, log)
        timings["ar_pretrain"] = ar["seconds"]
    if "bd" in stages:
        bd = adapt_both(b, out, data_dir / "bd_train.jsonl", tok_dir, seed, progress, log, parallel)
        for name in bd:
            timings[f"adapt_{name}"] = bd[name]["seconds"]
        # training time (over every invocation of a resumed build): side by side, the longer one
        both = [bd[name]["seconds"] for name in bd]
        timings["adapt"] = max(both) if parallel and torch.get_num_threads() >= 2 else sum(both)
        bd["continued"] = adapt_more(b, out, data_dir / "bd_train.jsonl", tok_dir, seed, progress, log)
        timings["adapt_more"] = sum(r["seconds"] for r in bd["continued"])
    sweep = chosen = None
    if "sweep" in stages:
        log(f"[4/7] decoding block sizes: {len(SWEEP)} pairs on {b.n_sweep} validation problems")
        t0 = time.perf_counter()
        chosen, sweep = choose_block_sizes(out / "bd", validation_split(b.n_sweep, seed, held_all), b, progress, log)
        for name in ("bd", "bd_matched", "bd_nocomp"):
            if (out / name).is_dir():
                write_block_sizes(out / name, chosen)
        log(f"  chosen: block {chosen['block_size']}, sub-block {chosen['small_block_size']}")
        log(f"[4/7] the shipped decoding: sub-blocks {DECODING_SUB_BLOCKS} x {len(DECODING_RULES)} accept rules "
            f"and thresholds, and the AR parent, on the same problems")
        decoding, decoding_sweep = choose_decoding(out / "bd", out / "ar", validation_split(b.n_sweep, seed, held_all),
                                                   chosen["block_size"], b, progress, log)
        chosen = {**chosen, "decoding": decoding, "decoding_sweep": decoding_sweep}
        log(f"  chosen: sub-block {decoding['small_block_size']}, {decoding['acceptance']} rule at threshold "
            f"{decoding['threshold']} (in the release's config.json)")
        timings["sweep"] = time.perf_counter() - t0
    results_file = out / "report" / "results.json"
    if "eval" in stages:
        log(f"[5/7] evaluation on {len(held)} held-out problems (held-out phrasings), one at a time and "
            f"{b.batched} at a time")
        # a partial rerun (say sweep and eval on a model trained earlier) keeps what the earlier run
        # recorded for the stages it does not repeat: the training results, their timings, a note
        kept = _kept_results(results_file, stages)
        kept.pop("phrasings", None)  # measured on the models as they were; the phrasings stage redoes it
        kept.get("timings_s", {}).pop("phrasings", None)
        t0 = time.perf_counter()
        decoding = (chosen or kept.get("chosen") or {}).get("decoding")
        evals, headline = evaluate_all(out, held, b, progress, log, all_problems=held_all,
                                       earlier=kept.get("evaluations"), decoding=decoding)
        timings["eval"] = time.perf_counter() - t0
        rep = out / "report"
        rep.mkdir(exist_ok=True)
        title = f"word problems, {len(held)} held-out problems (unseen phrasings)"
        results = {**kept, "quick": quick, "seed": seed, "budget": dataclasses.asdict(b),
                   "threads": torch.get_num_threads(), "machine": machine_info(),
                   "ar_pretrain": ar if ar is not None else kept.get("ar_pretrain"),
                   "adaptation": bd if bd is not None else kept.get("adaptation"),
                   "block_sweep": sweep if sweep is not None else kept.get("block_sweep"),
                   "chosen": chosen if chosen is not None else kept.get("chosen"),
                   "evaluations": evals, "headline": headline,
                   "timings_s": {**kept.get("timings_s", {}), **timings}}
        results_file.write_text(json.dumps(results, indent=2) + "\n")
        log("[6/7] report: table, plot, decoding picture")
        plot_results(evals, rep / "results.png", title)
        decoding_picture(out / "bd", held[0], rep / "trace.png", b, decoding)  # as the release decodes
    if "phrasings" in stages:  # check_stages made sure the eval stage's results are there
        log(f"[5/7] held-out phrasings against training phrasings (unseen numbers): the AR parent and block "
            f"diffusion at threshold 0.9, {b.batched} at a time")
        t0 = time.perf_counter()
        results = json.loads(results_file.read_text())
        results["phrasings"] = evaluate_phrasings(out, held_all, b, seed, progress, log)
        timings["phrasings"] = time.perf_counter() - t0
        results_file.write_text(json.dumps(results, indent=2) + "\n")
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if results.get("evaluations") and {"eval", "phrasings"} & set(stages):
        md = report_markdown(results["evaluations"], results.get("headline") or [], results.get("phrasings"))
        (out / "report" / "results.md").write_text(md)
    if results:  # the total is the stages' sum, so a build resumed over several invocations adds up
        results["timings_s"] = {**results.get("timings_s", {}), **timings}
        t = results["timings_s"]
        t["total"] = sum(t.get(k, 0.0) for k in ("data", "ar_pretrain", "adapt", "adapt_more", "sweep", "eval",
                                                  "phrasings"))
        results_file.write_text(json.dumps(results, indent=2) + "\n")
    if "release" in stages:
        log("[7/7] release files")
        release(out, data_dir / "heldout.jsonl", results, b)
    return results


def forget(out: Path) -> None:
    """Drop the resumability records of a run directory (stage markers, kept evaluation rows)."""
    for marker in (STAGE_DONE, STAGE_STARTED):
        for f in out.glob(f"*/{marker}"):
            f.unlink()
    shutil.rmtree(out / "report" / "rows", ignore_errors=True)


def _kept_results(results_file: Path, stages: tuple[str, ...]) -> dict:
    """The earlier results.json, for a partial rerun; nothing for a full run (its note would be stale)."""
    if {"data", "ar", "bd"} <= set(stages) or not results_file.exists():
        return {}
    return json.loads(results_file.read_text())


def machine_info() -> dict:
    import os
    import platform

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/word_problems"), help="output directory")
    p.add_argument("--quick", action="store_true", help="the small test-suite version (minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated stages to run (default: all): {', '.join(STAGES)}")
    p.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=True,
                   help="run the two adaptations side by side, sharing the threads (default: on)")
    p.add_argument("--eval-problems", type=int, default=None, metavar="N",
                   help="the full table on the first N held-out problems only (default: all of them); the "
                        "AR parent and block diffusion at threshold 0.9 are then also measured on all of them")
    p.add_argument("--products", choices=P.PRODUCTS, default=None,
                   help="how solutions write a multiplication column: 'fused' (7 * 7 + 5 = 54, the shipped "
                        "model's data) or 'split' (7 * 7 = 49, 49 + 5 = 54); default: the budget's (fused)")
    p.add_argument("--fresh", action="store_true",
                   help="redo every stage asked for: forget what an earlier run in --out finished (without it, a "
                        "build run again after a stop keeps the finished stages and continues the one it was in "
                        "from its last checkpoint)")
    p.add_argument("--install", action="store_true", help=f"copy the release files into {PACKAGE_DIR}")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    stages = tuple(s.strip() for s in a.stages.split(",") if s.strip())
    try:
        check_stages(a.out, stages)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    if a.fresh:
        forget(a.out)
    res = run(a.out, quick=a.quick, seed=a.seed, stages=stages, parallel=a.parallel,
              eval_problems=a.eval_problems, products=a.products)
    if res.get("evaluations"):
        print_table(res["evaluations"], f"word problems, {res['evaluations'][0]['n']} held-out problems "
                                        f"(held-out phrasings)")
    if res.get("headline"):
        print_table(res["headline"], f"on all {res['headline'][0]['n']} held-out problems")
    if res.get("phrasings"):
        print("\nheld-out phrasings against training phrasings (unseen numbers):\n" + phrasings_table(res["phrasings"]))
    if res.get("timings_s"):
        print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in res["timings_s"].items()))
    if a.install:
        print(f"installed {install(a.out / 'release')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
