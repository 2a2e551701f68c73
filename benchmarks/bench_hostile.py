"""``fastdllm serve`` against hostile clients: the issue's table, and normal traffic with and without them.

    python benchmarks/bench_hostile.py [--model word-problems] [--rate 2] [--seconds 60] [--repeat 1]
        [--hostile-every 0.5] [--max-tokens 64] [--threads 2] [--out benchmarks/results/hostile_default.json]

Starts ``fastdllm serve`` (the default model unless ``--model``; its own defaults for every
guard) on a free local port, then:

1. **The table**: one chat message of 1, 5, 20 and 50 MB, each through an ordinary client
   (httpx, ``Content-Length``): the status, the server's message, the time to the answer and
   the server's RSS after it; then a word problem sent 3 s after a 20 MB message, and the same
   word problem alone.
2. **Load**: word problems (the model's held-out questions, greedy, non-streaming) at a steady
   ``--rate`` per second for ``--seconds``, twice: alone, then with hostile requests arriving
   every ``--hostile-every`` seconds in turn: 50 MB bodies (declared, and chunked), senders of
   a byte a second (body, and headers), streams hung up after two events, invalid JSON,
   ``n`` and ``max_tokens`` of 10^9 and more, and 1 MB prompts (under the body limit, over the
   context). Reported: the normal requests' latency percentiles and failures in both runs, the
   hostile requests' answers and times by kind (an oversized body: the time from its first byte
   to the 413), and the server's RSS before, at most during, and after (once idle). The hostile
   clients run in a process of their own, beside the normal ones.
   ``--repeat N`` runs the pair N times (alone, with, alone, with...) on the same server, to show
   how much the numbers move between runs.

Prints tables and writes JSON (machine, date, command, settings, rows). The client runs on the
same machine as the server and shares its cores: numbers mean something only on an otherwise
idle machine (the JSON records the load average).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from argparse import Namespace
from pathlib import Path

import httpx

from bench_decode import cpu_name  # noqa: E402  (run as a script from benchmarks/)
from bench_serve import rss_kib, start_server, stop_server  # noqa: E402

MB = 1_000_000
HOSTILE_KINDS = ["declared_50mb", "chunked_50mb", "slow_body", "slow_headers", "stream_hangup", "invalid_json",
                 "huge_n_max_tokens", "prompt_1mb"]


def questions(n: int = 64) -> list[str]:
    from fastdllm.models import WORD_PROBLEMS_DIR

    rows = [json.loads(line) for line in (WORD_PROBLEMS_DIR / "heldout.jsonl").read_text().splitlines() if line]
    return [r["question"] for r in rows[:n]]


def chat(content: str, max_tokens: int | None = None) -> dict:
    body = {"model": "bench", "messages": [{"role": "user", "content": content}], "temperature": 0}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def message_body(size: int) -> bytes:
    """A chat request whose one message makes the body ``size`` bytes."""
    head, tail = b'{"model": "bench", "messages": [{"role": "user", "content": "', b'"}]}'
    unit = b"Tom has 3 apples. "
    filler = (unit * (size // len(unit) + 1))[:size - len(head) - len(tail)]
    return head + filler + tail


class RSSWatch:
    """Samples the server's RSS every ``every`` seconds in the background; keeps the highest."""

    def __init__(self, pid: int, every: float = 0.1):
        self.pid, self.every, self.peak = pid, every, 0
        self._task = None

    async def _run(self):
        while True:
            self.peak = max(self.peak, rss_kib(self.pid))
            await asyncio.sleep(self.every)

    def __enter__(self):
        self.peak = rss_kib(self.pid)
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc):
        self._task.cancel()


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


# ---- 1. the issue's table --------------------------------------------------------------------------------

def issue_table(url: str, pid: int, max_tokens: int) -> list[dict]:
    rows = [{"request": "(idle)", "rss_mib": mib(rss_kib(pid))}]
    http = httpx.Client(base_url=url, timeout=300)
    for size in (1, 5, 20, 50):
        body = message_body(size * MB)
        t0 = time.perf_counter()
        try:
            r = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
            status, message = r.status_code, r.json().get("error", {}).get("message", "")
        except httpx.HTTPError as e:
            status, message = type(e).__name__, str(e)
        rows.append({"request": f"one message of {size} MB", "status": status, "message": message,
                     "seconds": round(time.perf_counter() - t0, 3), "rss_mib": mib(rss_kib(pid))})
    q = questions(1)[0]

    def small() -> tuple[int, float]:
        t = time.perf_counter()
        r = http.post("/v1/chat/completions", json=chat(q, max_tokens))
        return r.status_code, round(time.perf_counter() - t, 3)

    status, alone = small()
    big = message_body(20 * MB)

    async def after_big():
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            big_task = asyncio.ensure_future(client.post("/v1/chat/completions", content=big,
                                                         headers={"Content-Type": "application/json"}))
            await asyncio.sleep(3.0)
            t = time.perf_counter()
            r = await client.post("/v1/chat/completions", json=chat(q, max_tokens))
            took = time.perf_counter() - t
            with_big = await big_task
            return r.status_code, round(took, 3), with_big.status_code

    status3, after, big_status = asyncio.run(after_big())
    rows.append({"request": "a word problem sent 3 s after a 20 MB message", "status": status3, "seconds": after,
                 "big_status": big_status, "alone_status": status, "alone_seconds": alone,
                 "rss_mib": mib(rss_kib(pid))})
    http.close()
    return rows


# ---- 2. load with and without hostile clients ----------------------------------------------------------

async def normal_traffic(url: str, rate: float, seconds: float, max_tokens: int) -> list[dict]:
    """Open loop: a request every 1/rate seconds whatever the answers' times."""
    qs = questions()
    results: list[dict] = []
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=256)) as client:
        async def one(i: int):
            t = time.perf_counter()
            try:
                r = await client.post("/v1/chat/completions", json=chat(qs[i % len(qs)], max_tokens))
                ok = r.status_code == 200
                status = r.status_code
            except httpx.HTTPError as e:
                ok, status = False, type(e).__name__
            results.append({"ok": ok, "status": status, "latency": time.perf_counter() - t})

        tasks, start = [], time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
    return results


async def read_status(reader: asyncio.StreamReader, timeout: float) -> tuple[str, float]:
    """The status code of the answer (or how the connection ended) and when it came."""
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except asyncio.TimeoutError:
        return "no answer", time.perf_counter()
    except (ConnectionError, OSError):
        return "reset", time.perf_counter()
    parts = line.split()
    return (parts[1].decode() if len(parts) > 1 else "closed"), time.perf_counter()


def head(host: str, length: int | None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"{framing}\r\n{extra}\r\n").encode()


async def big_body(host: str, port: int, body: bytes, chunked: bool) -> dict:
    """Send ``body`` as fast as the server takes it; the time from the first byte to the answer."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    answer = asyncio.ensure_future(read_status(reader, 60))
    sent = 0
    try:
        writer.write(head(host, None if chunked else len(body)))
        step = 1 << 16
        for i in range(0, len(body), step):
            if answer.done():
                break
            piece = body[i:i + step]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
            sent += len(piece)
        if chunked and not answer.done():
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    status, at = await answer
    writer.close()
    return {"status": status, "seconds": at - t0, "sent_bytes": sent}


async def slow_sender(host: str, port: int, headers_too: bool, give_up: float = 120) -> dict:
    """A byte a second, of the body (after whole headers) or of the headers themselves."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    answer = asyncio.ensure_future(read_status(reader, give_up))
    data = head(host, 10_000) if headers_too else b"{"
    if not headers_too:
        writer.write(head(host, 10_000))
    i = 0
    while not answer.done() and time.perf_counter() - t0 < give_up:
        try:
            writer.write(data[i % len(data):i % len(data) + 1])
            await writer.drain()
        except (ConnectionError, OSError):
            break
        i += 1
        await asyncio.sleep(1.0)
    status, at = await answer
    writer.close()
    return {"status": status, "seconds": at - t0}


async def simple(client: httpx.AsyncClient, kind: str, i: int) -> dict:
    t0 = time.perf_counter()
    try:
        if kind == "stream_hangup":
            body = {**chat("Tell me a long story about apples.", 400), "stream": True, "ignore_eos": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                events = 0
                async for line in r.aiter_lines():
                    events += line.startswith("data: ")
                    if events >= 2:
                        break  # hang up mid-stream
                status = r.status_code
        elif kind == "invalid_json":
            r = await client.post("/v1/chat/completions", content=b'{"model": "bench", "messages": [{"role": ',
                                  headers={"Content-Type": "application/json"})
            status = r.status_code
        elif kind == "huge_n_max_tokens":
            extra = {"n": 10 ** 9} if i % 2 else {"max_tokens": 10 ** 12}
            r = await client.post("/v1/chat/completions", json={**chat("What is 2 + 2?"), **extra})
            status = r.status_code
        else:  # prompt_1mb: under the body limit, over the context
            r = await client.post("/v1/chat/completions", content=message_body(MB),
                                  headers={"Content-Type": "application/json"})
            status = r.status_code
    except httpx.HTTPError as e:
        status = type(e).__name__
    return {"status": str(status), "seconds": time.perf_counter() - t0}


async def hostile_traffic(url: str, seconds: float, every: float) -> dict[str, list[dict]]:
    host, port = url.removeprefix("http://").split(":")
    port = int(port)
    big = message_body(50 * MB)
    out: dict[str, list[dict]] = {k: [] for k in HOSTILE_KINDS}
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def one(kind: str, i: int):
            if kind in ("declared_50mb", "chunked_50mb"):
                row = await big_body(host, port, big, chunked=kind == "chunked_50mb")
            elif kind in ("slow_body", "slow_headers"):
                row = await slow_sender(host, port, headers_too=kind == "slow_headers")
            else:
                row = await simple(client, kind, i)
            out[kind].append(row)

        tasks, start = [], time.perf_counter()
        for i in range(int(seconds / every)):
            await asyncio.sleep(max(0.0, start + i * every - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one(HOSTILE_KINDS[i % len(HOSTILE_KINDS)], i)))
        await asyncio.gather(*tasks)
    return out


def _hostile_process(url: str, seconds: float, every: float, queue) -> None:
    queue.put(asyncio.run(hostile_traffic(url, seconds, every)))


async def hostile_elsewhere(url: str, seconds: float, every: float) -> dict[str, list[dict]]:
    """The hostile clients in a process of their own: their work must not delay the event loop that
    times the normal requests (they still share the machine's cores with everything else)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_hostile_process, args=(url, seconds, every, queue), daemon=True)
    proc.start()
    result = await asyncio.get_running_loop().run_in_executor(None, queue.get)
    proc.join()
    return result


def percentiles(xs: list[float]) -> dict:
    xs = sorted(xs)
    if not xs:
        return {}

    def p(q):
        return round(xs[min(len(xs) - 1, max(0, int(round(q * len(xs))) - 1))], 3)

    return {"p50": p(0.5), "p90": p(0.9), "p95": p(0.95), "p99": p(0.99), "max": round(xs[-1], 3),
            "mean": round(statistics.mean(xs), 3)}


def summarize(rows: list[dict]) -> dict:
    return {"requests": len(rows), "failed": sum(not r["ok"] for r in rows),
            "statuses": sorted({str(r["status"]) for r in rows}), **percentiles([r["latency"] for r in rows])}


async def wait_idle(url: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while True:
            health = (await client.get("/health")).json()
            if health["open_jobs"] == health["running"] == health["waiting"] == 0 or time.monotonic() > deadline:
                return health
            await asyncio.sleep(0.2)


async def load_runs(url: str, pid: int, args) -> dict:
    baseline = await normal_traffic(url, args.rate, args.seconds, args.max_tokens)
    await wait_idle(url)
    rss_before = rss_kib(pid)
    with RSSWatch(pid) as watch:
        normal, hostile = await asyncio.gather(normal_traffic(url, args.rate, args.seconds, args.max_tokens),
                                               hostile_elsewhere(url, args.seconds, args.hostile_every))
    health = await wait_idle(url)
    await asyncio.sleep(1.0)
    rss_after = rss_kib(pid)
    kinds = {}
    for kind, rows in hostile.items():
        kinds[kind] = {"requests": len(rows), "statuses": sorted({r["status"] for r in rows}),
                       **percentiles([r["seconds"] for r in rows])}
    n_hostile = sum(len(rows) for rows in hostile.values())
    base, load = summarize(baseline), summarize(normal)
    oversized = [r["seconds"] for k in ("declared_50mb", "chunked_50mb") for r in hostile[k]]
    return {
        "normal_alone": base, "normal_with_hostile": load, "hostile": kinds, "hostile_requests": n_hostile,
        "rss_mib": {"before": mib(rss_before), "peak_during": mib(watch.peak), "after": mib(rss_after),
                    "growth": mib(rss_after - rss_before)},
        "server_idle_after": health,
        "targets": {
            "p95_ratio": round(load["p95"] / base["p95"], 3), "p95_within_1.5x": load["p95"] <= 1.5 * base["p95"],
            "normal_failures": load["failed"], "no_normal_failure": load["failed"] == 0,
            "rss_growth_mib": mib(rss_after - rss_before),
            "rss_within_50mb": rss_after - rss_before <= 50 * 1024 and n_hostile >= 100,
            "slowest_413_seconds": round(max(oversized), 3) if oversized else None,
            "every_413_under_1s": bool(oversized) and max(oversized) < 1.0 and all(
                r["status"] == "413" for k in ("declared_50mb", "chunked_50mb") for r in hostile[k]),
        },
    }


def table_cells(r: dict, message) -> tuple[str, str]:
    """The answer and time cells of one row of the issue's table (terminal and docs alike);
    ``message`` formats the error message for its medium."""
    answer = "" if "status" not in r else f"{r['status']} {message(r.get('message', ''))}"
    if "alone_seconds" in r:
        answer = f"{r['status']} (the 20 MB one: {r['big_status']})"
    took = "" if "seconds" not in r else f"{r['seconds']:.2f} s" + (
        f" ({r['alone_seconds']:.2f} s alone)" if "alone_seconds" in r else "")
    return answer, took


def print_report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    t = Table(title="the issue's table, re-measured")
    for col in ("request", "answer", "time", "server RSS"):
        t.add_column(col)
    for r in result["table"]:
        answer, took = table_cells(r, lambda m: m[:70])
        t.add_row(r["request"], answer, took, f"{r['rss_mib']} MiB")
    console.print(t)
    for i, load in enumerate(result["load"], 1):
        print_load(console, result["settings"], load, f"run {i}/{len(result['load'])}: ")


def print_load(console, settings: dict, load: dict, prefix: str) -> None:
    from rich.table import Table

    t = Table(title=f"{prefix}normal requests ({settings['rate']}/s for {settings['seconds']} s), alone "
                    f"and with {load['hostile_requests']} hostile requests")
    for col in ("run", "requests", "failed", "p50", "p90", "p95", "p99", "max"):
        t.add_column(col, justify="right")
    for name in ("normal_alone", "normal_with_hostile"):
        r = load[name]
        t.add_row(name.replace("_", " "), str(r["requests"]), str(r["failed"]),
                  *[f"{r[k]:.2f} s" for k in ("p50", "p90", "p95", "p99", "max")])
    console.print(t)
    t = Table(title="hostile requests by kind")
    for col in ("kind", "requests", "answers", "p50", "max"):
        t.add_column(col, justify="right")
    for kind, r in load["hostile"].items():
        t.add_row(kind, str(r["requests"]), " ".join(r["statuses"]), f"{r.get('p50', 0):.2f} s",
                  f"{r.get('max', 0):.2f} s")
    console.print(t)
    rss = load["rss_mib"]
    console.print(f"server RSS: {rss['before']} MiB before, {rss['peak_during']} MiB at most during, {rss['after']} "
                  f"MiB after ({rss['growth']:+} MiB)")
    console.print(f"targets: {json.dumps(load['targets'])}")


def markdown(result: dict) -> str:
    """The docs' tables (``docs/serving-hardening.md``) from a result JSON."""
    m = result["machine"]
    foot = (f"*Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average_before'][0]} before and "
            f"{m['load_average_after'][0]} after (shared). Date: {result['date'][:10]}. Command: "
            f"`{result['command']}`. Data: `{result['settings']['out']}`.*")
    out = ["| request | answer | time | server RSS |", "|---|---|---|---|"]
    for r in result["table"]:
        answer, took = table_cells(r, lambda m: f"\"{m[:60]}...\"")
        out.append(f"| {r['request']} | {answer if 'message' not in r or r['message'] else r['status']} | {took} | "
                   f"{r['rss_mib']:.0f} MiB |")
    out += ["", foot, "", "| run | normal requests | failed | p50 | p95 | p99 | hostile requests | RSS before / peak / "
            "after |", "|---|---|---|---|---|---|---|---|"]
    for i, load in enumerate(result["load"], 1):
        rss = load["rss_mib"]
        for name, label in (("normal_alone", "alone"), ("normal_with_hostile", "with hostile clients")):
            r = load[name]
            hostile = load["hostile_requests"] if name == "normal_with_hostile" else 0
            mem = f"{rss['before']:.0f} / {rss['peak_during']:.0f} / {rss['after']:.0f} MiB" if hostile else ""
            out.append(f"| {i}: {label} | {r['requests']} | {r['failed']} | {r['p50']:.2f} s | {r['p95']:.2f} s | "
                       f"{r['p99']:.2f} s | {hostile} | {mem} |")
    out += ["", foot, "", "| hostile request | sent | answers | time to the answer (p50 / max) |", "|---|---|---|---|"]
    merged: dict[str, dict] = {}
    for load in result["load"]:
        for kind, r in load["hostile"].items():
            k = merged.setdefault(kind, {"requests": 0, "statuses": set(), "p50": [], "max": 0.0})
            k["requests"] += r["requests"]
            k["statuses"] |= set(r["statuses"])
            k["p50"].append(r.get("p50", 0.0))
            k["max"] = max(k["max"], r.get("max", 0.0))
    for kind, k in merged.items():
        out.append(f"| {kind.replace('_', ' ')} | {k['requests']} | {', '.join(sorted(k['statuses']))} | "
                   f"{statistics.median(k['p50']):.2f} s / {k['max']:.2f} s |")
    return "\n".join(out + ["", foot]) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="word-problems", help="checkpoint to serve (default: the shipped model)")
    ap.add_argument("--rate", type=float, default=2.0, help="normal requests per second")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each load run")
    ap.add_argument("--repeat", type=int, default=1, help="load runs (each: alone, then with hostile requests)")
    ap.add_argument("--hostile-every", type=float, default=0.5, help="seconds between hostile requests")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens of the normal requests")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="OMP threads of the server process")
    ap.add_argument("--skip-table", action="store_true", help="only the load runs")
    ap.add_argument("--out", default="benchmarks/results/hostile_default.json")
    ap.add_argument("--markdown", metavar="JSON", help="print the docs' tables from a result file and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())), end="")
        return 0
    server_args = Namespace(model=args.model, max_batch_size=args.max_batch_size, dtype="float32",
                            kv_cache_tokens=None, compile=False, threads=args.threads)
    load_before = os.getloadavg()
    proc, url = start_server(server_args)
    try:
        table = [] if args.skip_table else issue_table(url, proc.pid, args.max_tokens)
        asyncio.run(normal_traffic(url, args.rate, min(10.0, args.seconds), args.max_tokens))  # warm-up
        load = [asyncio.run(load_runs(url, proc.pid, args)) for _ in range(args.repeat)]
    finally:
        stop_server(proc)
    result = {
        "benchmark": "bench_hostile",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "settings": vars(args), "table": table, "load": load,
    }
    print_report(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
