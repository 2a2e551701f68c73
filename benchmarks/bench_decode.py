"""Block-diffusion vs autoregressive decoding on the same engine: NFE, TPF and tokens/s.

    python benchmarks/bench_decode.py --model CKPT [--prompts FILE.jsonl] [--max-new-tokens 128]
        [--threshold 0.9] [--block-cache off|on|both] [--batch-size 1] [--dtype float32]
        [--compile/--no-compile] [--out benchmarks/results/decode.json]

Every prompt is decoded greedily once per mode after one warm-up generation (excluded). With
``--batch-size 1`` prompts run one at a time (latency); with N they run N at a time (throughput).
Prints a table and writes the numbers, the settings and the machine to JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import fastdllm
from fastdllm.benchmarking.machine import cpu_name  # noqa: F401  (bench_reference imports it from here)
from fastdllm.benchmarking.prompts import GENERAL_PROMPTS

DEFAULT_PROMPTS = GENERAL_PROMPTS  # 8 general chat prompts


def read_prompts(path: str | None) -> list[str]:
    if path is None:
        return DEFAULT_PROMPTS
    prompts = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            prompts.append(item["prompt"] if isinstance(item, dict) else item)
    return prompts


def run_mode(llm, prompts, batch_size: int, **kw) -> dict:
    llm.generate(prompts[:1], **{**kw, "max_new_tokens": min(16, kw["max_new_tokens"])})  # warm-up
    tokens = nfe = 0
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        for r in llm.generate(prompts[i:i + batch_size], **kw):
            tokens += r.stats.generated_tokens
            nfe += r.stats.nfe
    seconds = time.perf_counter() - t0
    return {"generated_tokens": tokens, "nfe": nfe, "tpf": tokens / max(nfe, 1), "seconds": seconds,
            "tokens_per_second": tokens / seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", help="JSONL file of {\"prompt\": ...} lines (default: 8 built-in chat prompts)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--small-block-size", type=int, default=8)
    ap.add_argument("--block-cache", choices=["off", "on", "both"], default="both")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mask-token-id", type=int)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="compiled CPU decode path (default: on)")
    ap.add_argument("--no-chat", action="store_true", help="prompts are plain text, no chat template")
    ap.add_argument("--out", default="benchmarks/results/decode.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    llm = fastdllm.load(args.model, dtype=args.dtype, device=args.device, mask_token_id=args.mask_token_id,
                        max_batch_size=max(8, args.batch_size), compile=args.compile)
    prompts = read_prompts(args.prompts)
    common = dict(max_new_tokens=args.max_new_tokens, temperature=0.0, chat=not args.no_chat)
    rows = {"ar": run_mode(llm, prompts, args.batch_size, mode="ar", **common)}
    if llm.mask_token_id is not None:
        caches = {"off": [False], "on": [True], "both": [False, True]}[args.block_cache]
        for cache in caches:
            name = "diffusion" + (" + sub-block cache" if cache else "")
            rows[name] = run_mode(llm, prompts, args.batch_size, mode="diffusion", threshold=args.threshold,
                                  small_block_size=args.small_block_size, use_block_cache=cache, **common)

    from rich.console import Console
    from rich.table import Table

    ar_tps = rows["ar"]["tokens_per_second"]
    table = Table(title=f"{Path(args.model).name}: {len(prompts)} prompts, {args.max_new_tokens} new tokens, "
                        f"{args.dtype}, batch {args.batch_size}, threshold {args.threshold}")
    for col in ("mode", "tokens", "NFE", "TPF", "seconds", "tokens/s", "vs AR"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    for name, r in rows.items():
        table.add_row(name, str(r["generated_tokens"]), str(r["nfe"]), f"{r['tpf']:.2f}", f"{r['seconds']:.2f}",
                      f"{r['tokens_per_second']:.1f}", f"{r['tokens_per_second'] / ar_tps:.2f}x")
    Console().print(table)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": str(args.model), "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "fastdllm": fastdllm.__version__, "python": platform.python_version()},
        "results": rows,
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
