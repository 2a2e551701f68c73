"""Serving throughput and latency of ``fastdllm serve`` under concurrent streaming clients.

    python benchmarks/bench_serve.py --model CKPT [--concurrency 1,4,8] [--requests 16] [--max-tokens 64]
        [--threshold 0.9] [--mode diffusion|ar] [--max-batch-size 8] [--url http://host:port]
        [--out benchmarks/results/serve.json]

Starts ``fastdllm serve`` on a free local port (or uses ``--url``), warms it up, then for each
concurrency level sends ``--requests`` chat requests (the prompts of ``bench_decode.py``, cycled)
with at most that many in flight, streaming, greedy, through the official ``openai`` client.
Per level: requests/s, completion tokens/s over the wall time, mean and p90 time to first
token and end-to-end latency, mean TPF. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench_decode import DEFAULT_PROMPTS, cpu_name  # noqa: E402  (run as a script from benchmarks/)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "fastdllm", "serve", "--model", args.model, "--port", str(port),
           "--served-model-name", "bench", "--max-batch-size", str(args.max_batch_size), "--log-level", "warning",
           "--dtype", args.dtype]
    if args.compile:
        cmd.append("--compile")
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench_serve: the server exited:\n{proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("bench_serve: the server did not come up in 10 minutes")


async def one_request(client, model: str, prompt: str, args) -> dict:
    extra = {"threshold": args.threshold}
    if args.mode:
        extra["mode"] = args.mode
    t0 = time.perf_counter()
    first = None
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=args.max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body=extra)
    tokens = 0
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - t0
    return {"ttft": first if first is not None else total, "latency": total, "tokens": tokens}


async def run_level(url: str, model: str, concurrency: int, args) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
    sem = asyncio.Semaphore(concurrency)
    prompts = [DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)] for i in range(args.requests)]

    async def guarded(p):
        async with sem:
            return await one_request(client, model, p, args)

    t0 = time.perf_counter()
    rows = await asyncio.gather(*(guarded(p) for p in prompts))
    wall = time.perf_counter() - t0
    await client.close()
    health = httpx.get(url + "/health").json()

    def p90(xs):
        return sorted(xs)[max(0, int(round(0.9 * len(xs))) - 1)]

    tokens = sum(r["tokens"] for r in rows)
    return {"concurrency": concurrency, "requests": len(rows), "completion_tokens": tokens, "seconds": wall,
            "requests_per_second": len(rows) / wall, "tokens_per_second": tokens / wall,
            "ttft_mean": statistics.mean(r["ttft"] for r in rows), "ttft_p90": p90([r["ttft"] for r in rows]),
            "latency_mean": statistics.mean(r["latency"] for r in rows),
            "latency_p90": p90([r["latency"] for r in rows]), "server": health}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint to serve (not needed with --url)")
    ap.add_argument("--url", help="an already running fastdllm server (its model must be served as 'bench')")
    ap.add_argument("--concurrency", default="1,4,8", help="comma-separated in-flight request counts")
    ap.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--mode", choices=["diffusion", "ar"], help="decoding mode (default: the model's)")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, help="OMP threads of the server process")
    ap.add_argument("--compile", action="store_true", help="the server's compiled CPU decode path")
    ap.add_argument("--out", default="benchmarks/results/serve.json")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not levels or min(levels) <= 0:
        raise SystemExit("bench_serve: --concurrency needs positive integers")
    if not args.url and not args.model:
        raise SystemExit("bench_serve: give --model (to start a server) or --url")

    proc = None
    url = args.url
    if not url:
        proc, url = start_server(args)
    try:
        warm = argparse.Namespace(**{**vars(args), "max_tokens": 8})
        asyncio.run(one_request(__import__("openai").AsyncOpenAI(base_url=url + "/v1", api_key="unused"),
                                "bench", "Hello", warm))
        results = [asyncio.run(run_level(url, "bench", c, args)) for c in levels]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fastdllm serve: {Path(args.model or url).name}, {args.requests} streaming chat requests "
                        f"per level, max_tokens {args.max_tokens}, threshold {args.threshold}")
    for col in ("in flight", "requests/s", "tokens/s", "TTFT mean", "TTFT p90", "latency mean", "latency p90",
                "largest batch so far"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r["concurrency"]), f"{r['requests_per_second']:.2f}", f"{r['tokens_per_second']:.1f}",
                      f"{r['ttft_mean']:.2f} s", f"{r['ttft_p90']:.2f} s", f"{r['latency_mean']:.2f} s",
                      f"{r['latency_p90']:.2f} s", str(r["server"].get("largest_batch")))
    Console(width=max(120, Console().width)).print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "url": args.url, "settings": vars(args),
                               "machine": {"cpu": cpu_name()}, "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
