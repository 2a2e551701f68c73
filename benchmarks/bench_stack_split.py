"""Where a multi-row W8A8 forward's time goes at SmolLM2 shape: the whole C++-stack forward against
its matrix products alone, run in the stack's order over every layer's own (cold) weights.

    python benchmarks/bench_stack_split.py [--rows 1,8,32] [--context 256] [--repeats 15] [--threads 2]
        [--out benchmarks/results/stack_split.json]

For each row count: (a) the whole forward of the engine's backend (bench_sweep.forward_ms: the C++
layer stack, then the vocabulary projection of min(T, 8) rows); (b) the same forward's products alone,
``native.int8a8_linear`` on each layer's packed qkv, o, gate_up and down weights in turn, then the
vocabulary projection, on random activations: the weights stream from memory as in the forward
(30 layers' weights do not fit in the caches). (a) - (b) is what the rest of the stack costs
(attention, norms, rotary embedding, activation quantisation outside the products, gating,
KV writes, thread hand-offs). Best of ``--repeats``. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_sweep as S  # noqa: E402
from fastdllm.kernels import cpu_info, native  # noqa: E402
from fastdllm.quant import Int8Linear  # noqa: E402


def products_ms(model, rows: int, repeats: int) -> float:
    """Every int8 layer's product on ``rows`` random rows, in the model's order (layers, then lm_head)."""
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    xs = {m.in_features: torch.randn(rows, m.in_features) for m in layers}
    head_rows = min(rows, S.SUB_BLOCK)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        for m in layers:
            x = xs[m.in_features][:head_rows] if m.out_features == model.cfg.vocab_size else xs[m.in_features]
            m(x)
        if i:
            times.append(1e3 * (time.perf_counter() - t0))
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="smollm2-135m", choices=[s for s in S.SHAPES])
    ap.add_argument("--rows", default="1,8,32")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stack_split.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not native.available():
        raise SystemExit(f"the native kernels are needed: {native.why_unavailable()}")
    model = S.build(args.shape, "int8-a8")
    rows = []
    for n in (int(r) for r in args.rows.split(",")):
        whole = S.forward_ms(model, n, args.context, args.repeats)
        prods = products_ms(model, n, args.repeats)
        rows.append({"rows": n, "forward_ms": whole, "products_ms": prods, "rest_ms": whole - prods})
        print(f"{n:>3} rows: forward {whole:.2f} ms, products alone {prods:.2f} ms, rest {whole - prods:.2f} ms "
              f"({100 * (whole - prods) / whole:.0f}%)  load {os.getloadavg()[0]:.1f}", flush=True)
    out = {"command": " ".join(["bench_stack_split.py", *(argv if argv is not None else sys.argv[1:])]),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cpu": cpu_info.cpu_name(), "threads": torch.get_num_threads(),
                       "w8a8_kernel": cpu_info.w8a8_isa(), "torch": torch.__version__,
                       "load_average": os.getloadavg()},
           "shape": args.shape, "context": args.context, "repeats": args.repeats, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
