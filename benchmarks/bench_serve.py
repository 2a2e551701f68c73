"""Serving throughput, latency and memory of ``fastdllm serve`` under concurrent streaming clients.

    python benchmarks/bench_serve.py --model CKPT [--concurrency 1,8,32] [--requests N] [--max-tokens 64]
        [--threshold 0.9] [--mode diffusion|ar] [--ignore-eos] [--max-batch-size 8] [--kv-cache-tokens N]
        [--rss-requests 1000] [--rss-concurrency 16] [--rss-max-tokens 16]
        [--url http://host:port --server-pid PID] [--out benchmarks/results/serve.json]

Starts ``fastdllm serve`` on a free local port (or uses ``--url``), warms it up, then for each
concurrency level sends ``--requests`` chat requests (default: 2 x the level, at least 16; the
prompts of ``bench_decode.py``, cycled) with at most that many in flight, streaming, greedy,
through the official ``openai`` client. Per level: requests/s, completion tokens/s over the wall
time, mean and p90 time to first token and end-to-end latency, mean TPF.

Then the memory check: ``--rss-requests`` more requests at ``--rss-concurrency`` in flight, and
the server process's resident memory (``VmRSS`` of ``/proc/PID/status``) before and after, with
the server's own structure sizes (``/health``) once it is idle again: a server that keeps
something per request grows here. ``--rss-requests 0`` skips it.

Prints a table and writes JSON. The numbers mean something only on an otherwise idle machine.
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


def start_server(args, extra: list[str] = ()) -> tuple[subprocess.Popen, str]:
    """``fastdllm serve`` for ``args.model`` on a free port (model name ``bench``); waits for /health."""
    port = free_port()
    cmd = [sys.executable, "-m", "fastdllm", "serve", "--model", args.model, "--port", str(port),
           "--served-model-name", "bench", "--max-batch-size", str(args.max_batch_size), "--log-level", "warning",
           "--dtype", args.dtype, *extra]
    if getattr(args, "kv_cache_tokens", None):
        cmd += ["--kv-cache-tokens", str(args.kv_cache_tokens)]
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
            raise SystemExit(f"bench: the server exited:\n{proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("bench: the server did not come up in 10 minutes")


def stop_server(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"bench: no VmRSS for process {pid}")


def extra_body(args) -> dict:
    extra = {"threshold": args.threshold}
    if args.mode:
        extra["mode"] = args.mode
    if args.ignore_eos:
        extra["ignore_eos"] = True
    return extra


async def one_request(client, model: str, prompt: str, args, max_tokens: int | None = None) -> dict:
    t0 = time.perf_counter()
    first = None
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens or args.max_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True}, extra_body=extra_body(args))
    tokens = 0
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - t0
    return {"ttft": first if first is not None else total, "latency": total, "tokens": tokens}


async def run_batch(url: str, n: int, concurrency: int, args, max_tokens: int | None = None) -> tuple[list, float]:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
    sem = asyncio.Semaphore(concurrency)
    prompts = [DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)] for i in range(n)]

    async def guarded(p):
        async with sem:
            return await one_request(client, "bench", p, args, max_tokens)

    t0 = time.perf_counter()
    rows = await asyncio.gather(*(guarded(p) for p in prompts))
    wall = time.perf_counter() - t0
    await client.close()
    return rows, wall


def p90(xs):
    return sorted(xs)[max(0, int(round(0.9 * len(xs))) - 1)]


def run_level(url: str, concurrency: int, args) -> dict:
    n = args.requests or max(16, 2 * concurrency)
    rows, wall = asyncio.run(run_batch(url, n, concurrency, args))
    tokens = sum(r["tokens"] for r in rows)
    return {"concurrency": concurrency, "requests": len(rows), "completion_tokens": tokens, "seconds": wall,
            "requests_per_second": len(rows) / wall, "tokens_per_second": tokens / wall,
            "ttft_mean": statistics.mean(r["ttft"] for r in rows), "ttft_p90": p90([r["ttft"] for r in rows]),
            "latency_mean": statistics.mean(r["latency"] for r in rows),
            "latency_p90": p90([r["latency"] for r in rows]), "server": httpx.get(url + "/health").json()}


def wait_idle(url: str, timeout: float = 120.0) -> dict:
    deadline = time.time() + timeout
    while True:
        health = httpx.get(url + "/health").json()
        if health.get("open_jobs", 0) == 0 and health.get("running", 0) == 0 or time.time() > deadline:
            return health
        time.sleep(0.2)


def run_rss(url: str, pid: int, args) -> dict:
    before = rss_kib(pid)
    rows, wall = asyncio.run(run_batch(url, args.rss_requests, args.rss_concurrency, args, args.rss_max_tokens))
    health = wait_idle(url)
    after = rss_kib(pid)
    return {"requests": len(rows), "concurrency": args.rss_concurrency, "max_tokens": args.rss_max_tokens,
            "seconds": wall, "rss_before_mib": before / 1024, "rss_after_mib": after / 1024,
            "rss_growth_mib": (after - before) / 1024, "server_idle": health}


def print_tables(args, results: list[dict], rss: dict | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    table = Table(title=f"fastdllm serve: {Path(args.model or args.url).name}, streaming chat requests, "
                        f"max_tokens {args.max_tokens}, threshold {args.threshold}")
    for col in ("in flight", "requests", "requests/s", "tokens/s", "TTFT mean", "TTFT p90", "latency mean",
                "latency p90", "largest batch so far"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r["concurrency"]), str(r["requests"]), f"{r['requests_per_second']:.2f}",
                      f"{r['tokens_per_second']:.1f}", f"{r['ttft_mean']:.2f} s", f"{r['ttft_p90']:.2f} s",
                      f"{r['latency_mean']:.2f} s", f"{r['latency_p90']:.2f} s", str(r["server"].get("largest_batch")))
    console.print(table)
    if rss is not None:
        idle = rss["server_idle"]
        console.print(f"server RSS: {rss['rss_before_mib']:.1f} MiB -> {rss['rss_after_mib']:.1f} MiB "
                      f"({rss['rss_growth_mib']:+.1f} MiB) over {rss['requests']} requests at "
                      f"{rss['concurrency']} in flight; idle afterwards: open_jobs {idle.get('open_jobs')}, "
                      f"waiting {idle.get('waiting')}, running {idle.get('running')}, "
                      f"KV used {idle.get('kv_used')}/{idle.get('kv_size')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint to serve (not needed with --url)")
    ap.add_argument("--url", help="an already running fastdllm server (its model must be served as 'bench')")
    ap.add_argument("--server-pid", type=int, help="with --url: the server's process id, for the RSS check")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated in-flight request counts")
    ap.add_argument("--requests", type=int, help="requests per level (default: 2 x the level, at least 16)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--mode", choices=["diffusion", "ar"], help="decoding mode (default: the model's)")
    ap.add_argument("--ignore-eos", action="store_true", help="every request decodes exactly --max-tokens")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--kv-cache-tokens", type=int, help="the server's --kv-cache-tokens")
    ap.add_argument("--rss-requests", type=int, default=1000, help="requests of the memory check (0: skip it)")
    ap.add_argument("--rss-concurrency", type=int, default=16)
    ap.add_argument("--rss-max-tokens", type=int, default=16)
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
    if args.url and args.rss_requests and not args.server_pid:
        raise SystemExit("bench_serve: the RSS check of a server given by --url needs --server-pid (or --rss-requests 0)")

    proc, url = (None, args.url) if args.url else start_server(args)
    pid = args.server_pid or (proc.pid if proc is not None else None)
    try:
        asyncio.run(run_batch(url, 1, 1, args, 8))  # warm-up
        results = [run_level(url, c, args) for c in levels]
        rss = run_rss(url, pid, args) if args.rss_requests else None
    finally:
        stop_server(proc)

    print_tables(args, results, rss)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "url": args.url, "settings": vars(args),
                               "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
                               "results": results, "memory": rss}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
