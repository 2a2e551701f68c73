"""What a long prompt arriving mid-stream does to the streams already running (``fastdllm serve``).

    python benchmarks/bench_prefill.py --model CKPT [--long-prompt 2000] [--running 4] [--max-tokens 256]
        [--prefill-chunk 512] [--compare] [--max-batch-size 8] [--out benchmarks/results/prefill.json]

Starts the server, opens ``--running`` streaming completions (short token-id prompts, exactly
``--max-tokens`` tokens each), and once each of them has received a few chunks sends a
``--long-prompt``-token prompt (streaming, 8 tokens). Reported:

- the long request's time to first token;
- the longest gap between two chunks of a running stream while the long prompt is prefilled
  (from its arrival to its first token), beside the median gap of the same streams before it
  arrived: with chunked prefill interleaved with decode, a gap is about one step with a
  ``--prefill-chunk`` chunk in it; prefilling the prompt whole first freezes the streams for
  the whole prefill.

``--compare`` runs it twice, with the server's default (interleaved) and with
``--no-interleave-prefill``, and prints both rows. Writes JSON. The numbers mean something only
on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from pathlib import Path

from bench_decode import cpu_name  # noqa: E402  (run as a script from benchmarks/)
from bench_serve import start_server, stop_server  # noqa: E402


async def measure(url: str, args) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
    rng = random.Random(0)
    ids = lambda n: [rng.randrange(100, 1000) for _ in range(n)]  # noqa: E731  valid in any real vocabulary
    extra = {"ignore_eos": True}
    arrivals: list[list[float]] = [[] for _ in range(args.running)]
    started = [asyncio.Event() for _ in range(args.running)]

    async def running(i: int) -> None:
        stream = await client.completions.create(model="bench", prompt=ids(16), max_tokens=args.max_tokens,
                                                 stream=True, extra_body=extra)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                arrivals[i].append(time.perf_counter())
                if len(arrivals[i]) >= 3:
                    started[i].set()
        started[i].set()

    async def long_request() -> tuple[float, float]:
        await asyncio.gather(*(e.wait() for e in started))
        sent = time.perf_counter()
        stream = await client.completions.create(model="bench", prompt=ids(args.long_prompt), max_tokens=8,
                                                 stream=True, extra_body=extra)
        first = None
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter()
        return sent, first if first is not None else time.perf_counter()

    *_, (sent, first) = await asyncio.gather(*(running(i) for i in range(args.running)), long_request())
    await client.close()

    def gaps(times: list[float], lo: float, hi: float) -> list[float]:
        return [b - a for a, b in zip(times, times[1:]) if b > lo and a < hi]

    during = [g for t in arrivals for g in gaps(t, sent, first)]
    before = [g for t in arrivals for g in gaps(t, 0.0, sent)]
    still_running = sum(1 for t in arrivals if t and t[-1] > first)
    return {"long_prompt_ttft": first - sent, "longest_gap_during_prefill": max(during, default=None),
            "median_gap_before": statistics.median(before) if before else None,
            "streams_running_through_prefill": still_running, "running_streams": args.running}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--long-prompt", type=int, default=2000, help="tokens of the prompt that arrives mid-stream")
    ap.add_argument("--running", type=int, default=4, help="streams already running when it arrives")
    ap.add_argument("--max-tokens", type=int, default=256, help="tokens of each running stream")
    ap.add_argument("--prefill-chunk", type=int, default=512, help="the server's --prefill-chunk")
    ap.add_argument("--compare", action="store_true", help="also run with --no-interleave-prefill")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--max-model-len", type=int, help="the server's --max-model-len (default: its own)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, help="OMP threads of the server process")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/prefill.json")
    args = ap.parse_args(argv)

    modes = [("interleaved", [])] + ([("prefill first", ["--no-interleave-prefill"])] if args.compare else [])
    results = []
    for name, flags in modes:
        flags = flags + ["--prefill-chunk", str(args.prefill_chunk)]
        if args.max_model_len:
            flags += ["--max-model-len", str(args.max_model_len)]
        proc, url = start_server(args, flags)
        try:
            results.append({"mode": name, **asyncio.run(measure(url, args))})
        finally:
            stop_server(proc)

    from rich.console import Console
    from rich.table import Table

    def s(x):
        return "-" if x is None else f"{x:.3f} s"

    table = Table(title=f"{args.long_prompt}-token prompt arriving while {args.running} streams decode "
                        f"({Path(args.model).name}, prefill chunk {args.prefill_chunk})")
    for col in ("prefill", "long prompt TTFT", "longest gap of a running stream during it", "median gap before",
                "streams running through it"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r["mode"], s(r["long_prompt_ttft"]), s(r["longest_gap_during_prefill"]),
                      s(r["median_gap_before"]), f"{r['streams_running_through_prefill']}/{r['running_streams']}")
    Console(width=max(120, Console().width)).print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "settings": vars(args),
                               "machine": {"cpu": cpu_name(), "cores": os.cpu_count()}, "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
