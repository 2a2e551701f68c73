"""Size sweep: per-forward time of every CPU precision path at 1-32 query rows, on random models at
real shapes, beside the machine's measured peaks, and the break-even tokens per forward (TPF).

    python benchmarks/bench_sweep.py [--quick] [--shapes smollm2-135m,qwen2.5-0.5b,fast-dllm-v2-1.5b]
        [--paths float32,bfloat16,int8,int8-a8,int4] [--rows 1,2,4,8,16,32] [--contexts 256,1024]
        [--repeats 7] [--threads N] [--llama-cpp Q4_0,Q8_0|none] [--out benchmarks/results/sweep.json]
        [--plot benchmarks/results/sweep.png]

Shapes are the real configs (random weights, built in memory, nothing downloaded). Paths: float32;
bfloat16 where the CPU has it natively; int8 weight-only (float32 activations); int8-a8 (int8
weights x int8 activations per block of 32: ``fastdllm.quant.set_activations``); int4 (groups of
32; its qkv, down and vocabulary projections int8, as ``quantize="int4"`` makes them); and llama.cpp
in Q4_0 and Q8_0 (``--llama-cpp``; llama-cpp-python, optional: skipped with the reason when it is not
installed) on a GGUF of the same shape with its own random weights (``llama_cpp_rows.py``). A forward is
the engine's (the C++ layer stack for quantised models): T query rows after C cached positions,
logits for the last min(T, 8) rows as a diffusion step reads a sub-block. Time = best of
``--repeats`` (the minimum: on a shared machine it is the least disturbed run).

Per shape and context the break-even TPF of block diffusion is the time of its forward over R
rows (R = 8 with the sub-block cache, 32 without) divided by the fastest one-row forward over
all paths (the fastest AR step): block diffusion beats the fastest AR decoding when its tokens per
forward exceed it. Forward time only: the step's own overhead (planner, sampling) comes on top.
``--end-to-end``: also AR and block-diffusion tokens/s per path on a block-diffusion model of each
shape with ``--confidence-scale`` on its vocabulary projection, and the end-to-end break-even TPF
(TPF x fastest AR tokens/s / BD tokens/s: the step's overhead included); ``--end-to-end-only``
measures only that (no per-row forwards, no layer products). ``--shapes tiny``: a
two-layer model, to try the benchmark out.
``--prefill 256,1024,4096``: also the time to the first token of one prompt of each length (the
engine's chunked prefill and one AR step, through ``LLM.generate``) per path, best of ``--repeats``
(``--contexts ""`` with it: only that).
``--quick``: SmolLM2 shape only, context 256, 3 repeats. Writes JSON (machine, ISA flags, load,
date and command included) and one plot: rows against time per forward, a line per path, and the
AR-equivalent times (TPF x fastest one-row forward) for TPF 1, 2 and 3.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fastdllm.kernels import precision  # noqa: E402
from fastdllm.engine.cached_attention import Segment  # noqa: E402
from fastdllm.model.config import ModelConfig  # noqa: E402
from fastdllm.engine.kv_cache import KVCache  # noqa: E402
from fastdllm.model import Transformer  # noqa: E402
from fastdllm.engine.packed_attention import PackedAttention  # noqa: E402
from fastdllm.kernels import cpu_info  # noqa: E402
from fastdllm.engine.backend import select_backend  # noqa: E402
from fastdllm.quant import quantize_model, set_activations  # noqa: E402

# the real configs (hidden, intermediate, layers, heads, KV heads, vocabulary, tied embeddings)
SHAPES = {
    # a two-layer SmolLM2-width model: for trying the benchmark out, not a real shape
    "tiny": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
                 num_attention_heads=9, num_key_value_heads=3, vocab_size=4096, tie_word_embeddings=True,
                 rope_theta=100000.0),
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                         rope_theta=100000.0),
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         rope_theta=1000000.0),
    "fast-dllm-v2-1.5b": dict(model_type="Fast_dLLM_Qwen", hidden_size=1536, intermediate_size=8960,
                              num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                              tie_word_embeddings=True, rope_theta=1000000.0, bd_size=32, mask_token_id=151665),
}
PATHS = ("float32", "bfloat16", "int8", "int8-a8", "int4")
SUB_BLOCK, BLOCK = 8, 32  # rows of a block-diffusion forward with / without the sub-block cache


def build(shape: str, path: str, diffusion_scale: float | None = None, positions: int = 4096) -> Transformer | None:
    """A random model of ``shape`` on ``path``. ``diffusion_scale``: a block-diffusion model instead
    (Fast_dLLM_Qwen, blocks of 32, the mask on the last token) whose vocabulary projection is
    scaled by it, so that some positions pass the 0.9 threshold (as make_random_checkpoint.py's
    --confidence-scale). ``positions``: the context the model takes."""
    extra = {}
    if diffusion_scale is not None:
        extra = {"model_type": "Fast_dLLM_Qwen", "bd_size": BLOCK, "mask_token_id": SHAPES[shape]["vocab_size"] - 1,
                 "tie_word_embeddings": False}
    cfg = ModelConfig.from_dict({**SHAPES[shape], **extra, "max_position_embeddings": positions, "rms_norm_eps": 1e-6})
    torch.manual_seed(0)
    with torch.no_grad():
        model = Transformer(cfg).eval()
        for name, p in model.named_parameters():  # N(0, 1/fan_in) matrices: unit-RMS activations
            if p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5 if "embed" not in name else 1.0)
        if diffusion_scale is not None:
            model.lm_head.weight.mul_(diffusion_scale)
            model.lm_head.weight[cfg.mask_token_id].zero_()
        if path == "bfloat16":
            return model.to(torch.bfloat16)
        if path.startswith("int"):
            model = quantize_model(model, path.split("-")[0], torch.float32)
            if path == "int8-a8":
                set_activations(model, "int8")
    return model


@torch.inference_mode()
def forward_ms(model, rows: int, context: int, repeats: int) -> float:
    cfg = model.cfg
    cache = KVCache(cfg.num_hidden_layers, 1, cfg.num_key_value_heads, context + rows, cfg.head_dim, model.dtype, "cpu")
    cache.data.normal_()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (1, rows), generator=g)  # [1, T]
    pos = torch.arange(context, context + rows)[None]  # [1, T]
    logit_rows = torch.arange(rows - min(rows, SUB_BLOCK), rows)
    segments = [Segment(0, 0, rows, context, context + rows)]
    backend = select_backend(model)  # the engine's forward (a quantised model's C++ layer stack)
    times = []
    for i in range(repeats + 1):  # one warm-up call
        t0 = time.perf_counter()
        backend.forward(ids, pos, PackedAttention(cache, segments, model.attn_scale), logit_rows)
        if i:
            times.append(1e3 * (time.perf_counter() - t0))
    return min(times)


def llama_cpp_paths(shape: str, args, rows_list: list[int], contexts: list[int], per_ctx: dict,
                    skipped: dict) -> None:
    """llama.cpp's forwards in each of ``args.llama_cpp``'s formats, on a GGUF of the shape with
    random weights (``llama_cpp_rows``), added to ``per_ctx`` as paths "llama.cpp FMT"."""
    import tempfile

    import llama_cpp_rows as LC

    why = LC.available()
    if why:
        skipped["llama.cpp"] = why
        return
    cfg = ModelConfig.from_dict({**SHAPES[shape], "max_position_embeddings": 4096})
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.llama_cpp:
            gguf = LC.write_random_gguf(SHAPES[shape], Path(tmp) / f"{shape}-{fmt}.gguf", fmt)
            wb = gguf.stat().st_size  # the file: every matrix in fmt (norms and metadata are small)
            for c in contexts:
                r, path = per_ctx[str(c)], f"llama.cpp {fmt}"
                times = LC.forward_ms(gguf, rows_list, c, args.repeats, torch.get_num_threads())
                r["forward_ms"][path] = times
                r["gflops"][path] = {n: work(cfg, int(n), c, wb)["flop"] / t / 1e6 for n, t in times.items()}
                r["gbs"][path] = {n: wb / t / 1e6 for n, t in times.items()}
                r.setdefault("weight_mb", {})[path] = wb / 1e6
                r.setdefault("llama_cpp_version", LC.version())
                print(f"[{shape} ctx {c}] {path} " + "  ".join(f"{n}:{t:.1f}ms" for n, t in times.items())
                      + f"  load {os.getloadavg()[0]:.1f}", flush=True)
            gguf.unlink()


def end_to_end(shape: str, paths: list[str], scale: float, new_tokens: int, prompts: int, rounds: int = 1) -> dict:
    """Tokens/s of AR decoding and of block diffusion (sub-block 8, threshold 0.9, greedy, with and
    without the sub-block cache) per path on a confidence-scaled random block-diffusion model,
    prompts one at a time; break-even TPF = TPF x AR tokens/s of the fastest AR path / BD tokens/s.
    ``rounds``: each path's three modes are timed that many times, alternating, and the median
    round counts (``rounds_tokens_per_s`` keeps every round), so a disturbance hits all modes alike."""
    from fastdllm.api import LLM
    from fastdllm.loading import Checkpoint

    g = torch.Generator().manual_seed(1)
    V = SHAPES[shape]["vocab_size"]
    ids = [torch.randint(0, V - 2, (24 + 8 * i,), generator=g).tolist() for i in range(prompts)]
    out: dict = {}
    for path in paths:
        model = build(shape, path, diffusion_scale=scale)
        llm = LLM(Checkpoint(model, model.cfg, None, Path("."), {}))
        bd = dict(mode="diffusion", small_block_size=SUB_BLOCK, threshold=0.9)
        runs = {"ar": dict(mode="ar"), "bd_cache": {**bd, "use_block_cache": True},
                "bd_no_cache": {**bd, "use_block_cache": False}}
        runs = {k: {**kw, "max_new_tokens": new_tokens, "stop_token_ids": [], "temperature": 0.0}
                for k, kw in runs.items()}
        for kw in runs.values():
            llm.generate(ids[:1], **{**kw, "max_new_tokens": 8})  # warm-up
        speeds: dict[str, list[float]] = {k: [] for k in runs}
        tpf = {}
        for _ in range(rounds):
            for name, kw in runs.items():
                tokens = nfe = 0
                t0 = time.perf_counter()
                for p in ids:
                    r = llm.generate([p], **kw)[0]
                    tokens, nfe = tokens + r.stats.generated_tokens, nfe + r.stats.nfe
                speeds[name].append(tokens / (time.perf_counter() - t0))
                tpf[name] = tokens / max(nfe, 1)  # greedy: the same every round
        row = {k: {"tokens_per_s": statistics.median(v), "tpf": tpf[k], "rounds_tokens_per_s": v}
               for k, v in speeds.items()}
        out[path] = row
        print(f"[{shape} end to end] {path}: " + "  ".join(f"{k} {v['tokens_per_s']:.1f} tok/s (TPF {v['tpf']:.2f})"
                                                         for k, v in row.items()) + f"  load {os.getloadavg()[0]:.1f}",
              flush=True)
        del llm, model
    best_ar = max(r["ar"]["tokens_per_s"] for r in out.values())
    for r in out.values():
        for k in ("bd_cache", "bd_no_cache"):
            r[k]["break_even_tpf"] = r[k]["tpf"] * best_ar / r[k]["tokens_per_s"]
    return {"scale": scale, "new_tokens": new_tokens, "prompts": prompts, "rounds": rounds,
            "fastest_ar_tokens_per_s": best_ar, "paths": out}


BYTES_PER_PARAM = {"float32": 8, "bfloat16": 6, "int8": 5, "int8-a8": 5, "int4": 5}  # peak while built and run:
# float32 weights plus the packed copy its oneDNN linear layers keep; the others are built in float32 first


def prefill(shape: str, paths: list[str], lengths: list[int], repeats: int) -> dict:
    """Seconds to the first token of one prompt of each length per path (AR, greedy: the engine's
    chunked prefill, then one step), on a random model of ``shape``; best of ``repeats`` after one
    warm-up on the shortest prompt. {path: {length: {"seconds", "tokens_per_s"}}}."""
    from fastdllm.api import LLM
    from fastdllm.loading import Checkpoint

    g = torch.Generator().manual_seed(2)
    V = SHAPES[shape]["vocab_size"]
    prompts = {n: torch.randint(0, V, (n,), generator=g).tolist() for n in lengths}
    kw = dict(mode="ar", max_new_tokens=1, stop_token_ids=[], temperature=0.0)
    out: dict = {}
    for path in paths:
        model = build(shape, path, positions=max(4096, max(lengths) + 1))
        llm = LLM(Checkpoint(model, model.cfg, None, Path("."), {}))
        llm.generate([prompts[min(lengths)]], **kw)  # warm-up
        row = {}
        for n in lengths:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                llm.generate([prompts[n]], **kw)
                times.append(time.perf_counter() - t0)
            row[str(n)] = {"seconds": min(times), "tokens_per_s": n / min(times)}
        out[path] = row
        print(f"[{shape} prefill] {path}: " + "  ".join(f"{n}: {v['seconds']:.2f} s ({v['tokens_per_s']:.0f} tok/s)"
                                                       for n, v in row.items()) + f"  load {os.getloadavg()[0]:.1f}",
              flush=True)
        del llm, model
    return out


def params(shape: str) -> int:
    c = SHAPES[shape]
    H, I, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    d = H // c["num_attention_heads"]
    nq, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    layer = H * (nq + 2 * nkv) * d + nq * d * H + 3 * H * I
    return L * layer + V * H * (1 if c["tie_word_embeddings"] else 2)


def memory_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def work(cfg, rows: int, context: int, weight_bytes: int) -> dict:
    """FLOPs of one forward (projections, attention, the vocabulary rows) and its weight bytes."""
    H, I, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    d, nq, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    per_row = L * (H * (nq + 2 * nkv) * d + nq * d * H + 2 * H * I + I * H)
    attn = L * nq * d * 2 * rows * (context + rows)
    return {"flop": 2 * (rows * per_row + attn + min(rows, SUB_BLOCK) * H * V), "weight_bytes": weight_bytes}


def weight_bytes(model) -> int:
    """Bytes of the matrices a forward streams: every linear layer's weights (packed, with scales)."""
    from fastdllm.quant import QuantLinear

    total = 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            total += sum(b.numel() * b.element_size() for b in m.buffers(recurse=False))
        elif isinstance(m, torch.nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
    return total


def peaks(quick: bool) -> dict:
    """The machine's measured float32 GEMM rate (torch), W8A8 integer rate (fastdllm, 32 rows) and read bandwidth."""
    from fastdllm.kernels import native

    def best(f, n):
        f()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    n = 3 if quick else 10
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    out = {"float32_gflops": 2 * 1024 ** 3 / best(lambda: a @ b, n) / 1e9}
    if native.available():
        q = torch.randint(-127, 128, (4096, 1024), dtype=torch.int8)
        p, s, x = native.pack_int8_a8(q), torch.ones(4096), torch.randn(32, 1024)
        out["int8_a8_gops"] = 2 * 32 * 4096 * 1024 / best(lambda: native.int8a8_linear(x, p, s, None), n) / 1e9
    big = torch.ones(256 * 2 ** 20 // 4)  # 256 MB, past the caches
    out["read_gbs"] = big.numel() * 4 / best(lambda: big.sum(), n) / 1e9
    return out


def gemm_table(shape: str, rows_list: list[int], repeats: int) -> dict:
    """Time of the layer products alone (one layer's qkv, o, gate_up and down, summed), per kernel
    and row count: best of ``repeats`` x 5 short calls, so a shared machine disturbs it less than
    whole forwards. ms and GOP/s (multiply-adds x 2)."""
    from fastdllm.kernels import native

    cfg = ModelConfig.from_dict({**SHAPES[shape], "max_position_embeddings": 4096})
    H, I, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    mats = [((cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * d, H), (H, cfg.num_attention_heads * d),
            (2 * I, H), (H, I)]  # [N, K]
    g = torch.Generator().manual_seed(0)
    kernels = {"float32 (torch)": [], "int8 (float32 act.)": [], "int8-a8": [], "int8-a8 (avx2 path)": [],
               "int4 (float32 act.)": []}
    for N, K in mats:
        w = torch.randn(N, K, generator=g) / K ** 0.5
        q = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
        codes = torch.randint(0, 16, (N, K), generator=g, dtype=torch.uint8)
        p8, pa, p4 = native.pack_int8(q), native.pack_int8_a8(q), native.pack_int4(codes)
        s8 = torch.rand(N, generator=g) / 100
        s4 = native.int4_params(torch.rand(N, K // 32) / 100, torch.zeros(N, K // 32))
        kernels["float32 (torch)"].append(lambda x, w=w: torch.nn.functional.linear(x, w))
        kernels["int8 (float32 act.)"].append(lambda x, p=p8, s=s8: native.int8_linear(x, p, s, None))
        kernels["int8-a8"].append(lambda x, p=pa, s=s8: native.int8a8_linear(x, p, s, None))
        # the AVX2 kernel (what a CPU without AVX-512 VNNI runs), forced on this one for comparison
        kernels["int8-a8 (avx2 path)"].append(lambda x, p=pa, s=s8: native.int8a8_linear(x, p, s, None, "avx2"))
        kernels["int4 (float32 act.)"].append(lambda x, p=p4, s=s4: native.int4_linear(x, p, s, None))
    out = {}
    for name, fns in kernels.items():
        out[name] = {}
        for M in rows_list:
            total = 0.0
            for fn, (N, K) in zip(fns, mats):
                x = torch.randn(M, K, generator=g)
                fn(x)
                ts = []
                for _ in range(5 * repeats):
                    t0 = time.perf_counter()
                    fn(x)
                    ts.append(time.perf_counter() - t0)
                total += min(ts)
            mac = M * sum(N * K for N, K in mats)
            out[name][str(M)] = {"ms": 1e3 * total, "gops": 2 * mac / total / 1e9}
    return out


def machine() -> dict:
    return {"cpu": cpu_info.cpu_name(), "logical_cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "isa": sorted(f for f, on in cpu_info.isa_summary().items() if on), "w8a8_kernel": cpu_info.w8a8_isa(),
            "torch": torch.__version__, "python": platform.python_version(), "load_average": os.getloadavg()}


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(s, c) for s in result["shapes"] for c in result["shapes"][s]["contexts"]]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4.2), squeeze=False)
    for ax, (shape, ctx) in zip(axes[0], keys):
        r = result["shapes"][shape]["contexts"][ctx]
        for path, times in r["forward_ms"].items():
            rows = [int(k) for k in times]
            ax.plot(rows, list(times.values()), marker="o", label=path)
        ar = r["fastest_ar_ms"]
        for tpf in (1, 2, 3):
            ax.axhline(tpf * ar, color="grey", lw=0.8, ls=":" if tpf > 1 else "--")
            ax.text(1, tpf * ar, f" AR x{tpf}", va="bottom", fontsize=7, color="grey")
        ax.set(xscale="log", yscale="log", xlabel="query rows per forward", ylabel="ms per forward",
               title=f"{shape}, context {ctx}")
        ax.set_xticks(rows, [str(x) for x in rows])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    fig.suptitle(f"{result['machine']['cpu']}, {result['machine']['threads']} threads, {result['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="SmolLM2 shape, context 256, 3 repeats")
    ap.add_argument("--shapes", default=",".join(s for s in SHAPES if s != "tiny"))
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--rows", default="1,2,4,8,16,32")
    ap.add_argument("--contexts", default="256,1024")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sweep.json"))
    ap.add_argument("--plot", default=None, help="default: --out with .png")
    ap.add_argument("--llama-cpp", default="Q4_0,Q8_0", type=lambda v: [] if v == "none" else v.split(","),
                    help="llama.cpp formats to time beside fastdllm's paths (llama-cpp-python, optional: "
                         "skipped with the reason when it is not installed), or 'none' (default: Q4_0,Q8_0)")
    ap.add_argument("--end-to-end", action="store_true",
                    help="also AR and block-diffusion tokens/s per path on confidence-scaled random models")
    ap.add_argument("--end-to-end-only", action="store_true",
                    help="only the end-to-end tokens/s (no per-row forwards, no layer products)")
    ap.add_argument("--confidence-scale", type=float, default=10.0,
                    help="the block-diffusion model's vocabulary projection scale (higher: more positions pass "
                         "the threshold, a higher TPF)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1,
                    help="end to end: alternating rounds per path (the median counts)")
    ap.add_argument("--prefill", default="", help="prompt lengths whose time to the first token is measured per "
                    "path, e.g. 256,1024,4096 (default: none)")
    ap.add_argument("--from-json", metavar="JSON", help="measure nothing: the tables and plot of a sweep's JSON "
                    "(e.g. one cut short: it is written after every shape)")
    args = ap.parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        plot(result, Path(args.plot or Path(args.from_json).with_suffix(".png")))
        print_tables(result)
        return 0
    if args.quick:
        args.shapes, args.contexts, args.repeats = "smollm2-135m", "256", 3
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.end_to_end_only:
        args.end_to_end, args.contexts = True, ""
    shapes = [s for s in args.shapes.split(",") if s]
    bad = ([s for s in shapes if s not in SHAPES] + [p for p in args.paths.split(",") if p not in PATHS]
           + [f for f in args.llama_cpp if f not in ("Q4_0", "Q8_0")])
    if bad:
        ap.error(f"unknown shape or path: {', '.join(bad)}")
    rows_list = [int(r) for r in args.rows.split(",")]
    contexts = [int(c) for c in args.contexts.split(",") if c]
    result = {"command": shlex.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "peaks": peaks(args.quick), "shapes": {}, "skipped": {}}
    print(f"peaks: {result['peaks']}  load {os.getloadavg()}", flush=True)
    for shape in shapes:
        per_ctx = {str(c): {"forward_ms": {}, "gflops": {}, "gbs": {}} for c in contexts}
        for path in args.paths.split(","):
            if path == "bfloat16" and not precision.cpu_has_native_bf16():
                result["skipped"][path] = "no native bfloat16 on this CPU"
                continue
            need, free = 1.2 * BYTES_PER_PARAM[path] * params(shape), memory_available()
            if free is not None and need > free:  # an OOM kill would lose the whole run
                result["skipped"][f"{shape} {path}"] = f"needs ~{need / 1e9:.1f} GB, {free / 1e9:.1f} GB available"
                print(f"[{shape}] {path}: skipped ({result['skipped'][f'{shape} {path}']})", flush=True)
                continue
            if not contexts:  # --end-to-end-only: end_to_end builds its own models
                continue
            model = build(shape, path)
            wb = weight_bytes(model)
            for c in contexts:
                r = per_ctx[str(c)]
                times = {str(n): forward_ms(model, n, c, args.repeats) for n in rows_list}
                r["forward_ms"][path] = times
                r["gflops"][path] = {n: work(model.cfg, int(n), c, wb)["flop"] / t / 1e6 for n, t in times.items()}
                r["gbs"][path] = {n: wb / t / 1e6 for n, t in times.items()}
                r.setdefault("weight_mb", {})[path] = wb / 1e6
                print(f"[{shape} ctx {c}] {path:8s} " + "  ".join(f"{n}:{t:.1f}ms" for n, t in times.items())
                      + f"  load {os.getloadavg()[0]:.1f}", flush=True)
            del model
        if contexts and args.llama_cpp:
            llama_cpp_paths(shape, args, rows_list, contexts, per_ctx, result["skipped"])
        for c, r in per_ctx.items():
            one = {p: t["1"] for p, t in r["forward_ms"].items() if "1" in t}
            if not one:
                continue
            fastest = min(one, key=one.get)
            r["fastest_ar_path"], r["fastest_ar_ms"] = fastest, one[fastest]
            r["break_even_tpf"] = {p: {f"rows_{n}": t[str(n)] / one[fastest] for n in (SUB_BLOCK, BLOCK) if str(n) in t}
                                   for p, t in r["forward_ms"].items()}
        gemm = gemm_table(shape, rows_list, args.repeats) if contexts else {}
        result["shapes"][shape] = {"config": SHAPES[shape], "contexts": per_ctx, "layer_gemm": gemm}
        if args.end_to_end:
            paths = [p for p in args.paths.split(",") if p not in result["skipped"]
                     and f"{shape} {p}" not in result["skipped"]]
            result["shapes"][shape]["end_to_end"] = end_to_end(shape, paths, args.confidence_scale, args.new_tokens,
                                                               args.prompts, args.rounds)
        if args.prefill:
            paths = [p for p in args.paths.split(",") if p not in result["skipped"]
                     and f"{shape} {p}" not in result["skipped"]]
            lengths = [int(n) for n in args.prefill.split(",")]
            result["shapes"][shape]["prefill"] = prefill(shape, paths, lengths, args.repeats)
        if gemm:
            print(f"[{shape}] one layer's products: " + "; ".join(
                f"{k} " + " ".join(f"{m}:{v['ms']:.2f}" for m, v in t.items()) for k, t in gemm.items()), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")  # after every shape: partial results survive
    result["machine"]["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if contexts:
        plot(result, Path(args.plot or Path(args.out).with_suffix(".png")))
    print_tables(result)
    print(f"wrote {args.out}")
    return 0


def print_tables(result: dict) -> None:
    print(markdown(result))


def markdown(result: dict) -> str:
    """The sweep's tables (products alone, end to end, whole forwards per context), as markdown:
    what ``print_tables`` prints and ``docs/tables.py`` puts in the docs."""
    out: list[str] = []
    add = out.append
    for shape, s in result["shapes"].items():
        gemm = s.get("layer_gemm", {})
        if gemm:
            add(f"\n**{shape}**: one layer's four products alone, ms (GOP/s) by rows\n")
            rows = list(next(iter(gemm.values())))
            add("| kernel | " + " | ".join(rows) + " |")
            add("|---|" + "---|" * len(rows))
            for k, t in gemm.items():
                add(f"| {k} | " + " | ".join(f"{t[m]['ms']:.3f} ({t[m]['gops']:.0f})" for m in rows) + " |")
        e2e = s.get("end_to_end")
        if e2e:
            add(f"\n**{shape}** end to end (confidence scale {e2e['scale']}, {e2e['new_tokens']} new tokens x "
                  f"{e2e['prompts']} prompts, median of {e2e.get('rounds', 1)} round(s)): tokens/s, TPF, break-even "
                  f"TPF against the fastest AR\n")
            add("| path | AR tok/s | BD+cache tok/s (TPF) | break-even | BD tok/s (TPF) | break-even |")
            add("|---|---|---|---|---|---|")
            for p, r in e2e["paths"].items():
                c, n = r["bd_cache"], r["bd_no_cache"]
                add(f"| {p} | {r['ar']['tokens_per_s']:.1f} | {c['tokens_per_s']:.1f} ({c['tpf']:.2f}) | "
                      f"{c['break_even_tpf']:.2f} | {n['tokens_per_s']:.1f} ({n['tpf']:.2f}) | "
                      f"{n['break_even_tpf']:.2f} |")
        pre = s.get("prefill")
        if pre:
            lengths = list(next(iter(pre.values())))
            add(f"\n**{shape}** prefill: seconds to the first token of one prompt (tokens/s) by prompt length\n")
            add("| path | " + " | ".join(lengths) + " |")
            add("|---|" + "---|" * len(lengths))
            for p, r in pre.items():
                add(f"| {p} | " + " | ".join(f"{r[n]['seconds']:.2f} ({r[n]['tokens_per_s']:.0f})" for n in lengths)
                    + " |")
        for c, r in s.get("contexts", {}).items():
            add(f"\n**{shape}**, context {c}: ms per forward (GFLOP/s) by query rows; fastest AR: "
                  f"{r.get('fastest_ar_path')} {r.get('fastest_ar_ms', float('nan')):.2f} ms\n")
            rows = list(next(iter(r["forward_ms"].values())))
            add("| path | " + " | ".join(rows) + " | break-even TPF (8 rows / 32 rows) |")
            add("|---|" + "---|" * (len(rows) + 1))
            for p, t in r["forward_ms"].items():
                be = r["break_even_tpf"][p]
                add(f"| {p} | " + " | ".join(f"{t[n]:.1f} ({r['gflops'][p][n]:.0f})" for n in rows)
                      + f" | {be.get('rows_8', float('nan')):.2f} / {be.get('rows_32', float('nan')):.2f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
