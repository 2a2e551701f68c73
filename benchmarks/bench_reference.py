"""fastdllm against the released Fast-dLLM v2 ``generate``: same checkpoint, prompts, settings.

    python benchmarks/bench_reference.py --model CKPT --reference-code DIR \
        [--reference-python PYTHON] [--prompts FILE.jsonl] [--max-new-tokens 128] [--threshold 0.9] \
        [--block-cache off|on|both] [--threads 2] [--compile/--no-compile] [--out benchmarks/results/reference.json]

``DIR`` holds the released ``modeling.py`` and ``configuration.py`` (any released Fast_dLLM_v2
checkpoint directory has them; the default is ``--model`` itself). The released code needs
transformers 4.53, so it runs in ``--reference-python``, an interpreter with that version
installed, for example::

    python -m venv --system-site-packages /tmp/refenv && /tmp/refenv/bin/pip install transformers==4.53.1 einops

Both implementations decode every prompt (chat template applied by fastdllm's tokenizer, the
same ids handed to both) one at a time, greedily, after one warm-up call. The reference decodes
whole blocks, so fastdllm is asked for exactly as many tokens as the reference produced for that
prompt. Reported: tokens, forward passes, seconds, tokens/s, the speed-up, and how many prompts
came out token-for-token identical and how many leading tokens agree.

The release's ``generate`` starts every block with a fresh sub-block cache (``block_past_key_values =
None`` at the top of its block loop), as fastdllm does. Some copies of ``modeling.py`` in circulation
dropped that line and carry the previous block's sub-block cache over (see
``../shared/conformance/README.md``): they are forks, and with the sub-block cache on their outputs
drift from the second block on. The JSON records which kind ``DIR`` holds
(``reference_resets_block_cache``, and the table's title says it); ``--restore-block-reset`` puts
the line back into a temporary copy of such a fork, which then decodes as the release does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import fastdllm
from fastdllm.benchmarking import reference
from bench_decode import cpu_name, read_prompts  # noqa: E402  (run as a script from benchmarks/)


def run_reference(args, prompts_ids: list[list[int]], mask_id: int, stop: int, cache: bool) -> dict:
    try:
        return reference.run_reference(
            prompts_ids, model_dir=args.model, code_dir=args.reference_code or args.model,
            python=args.reference_python, max_new_tokens=args.max_new_tokens, threshold=args.threshold,
            block_size=args.block_size, small_block_size=args.small_block_size, mask_id=mask_id, stop_token=stop,
            use_block_cache=cache, threads=torch.get_num_threads(), dtype=args.dtype,
            restore_block_reset=args.restore_block_reset)
    except reference.ReferenceRunError as e:
        raise SystemExit(f"bench_reference: {e}\n{e.stderr.strip()[-3000:]}") from None


def run_fastdllm(llm, prompts_ids, ref_rows, args, stop: int, cache: bool) -> list[dict]:
    opts = dict(mode="diffusion", threshold=args.threshold, block_size=args.block_size,
                small_block_size=args.small_block_size, use_block_cache=cache, temperature=0.0,
                stop_token_ids=[stop])
    llm.generate(prompts_ids[:1], max_new_tokens=args.block_size, **opts)  # warm-up, excluded
    rows = []
    for ids, ref in zip(prompts_ids, ref_rows):
        n = max(1, len(ref["tokens"]))
        t0 = time.perf_counter()
        r = llm.generate([ids], max_new_tokens=n, **opts)[0]
        seconds = time.perf_counter() - t0
        rows.append({"prompt_tokens": len(ids), "tokens": list(r.token_ids), "seconds": seconds,
                     "nfe": r.stats.nfe})
    return rows


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def summary(rows: list[dict]) -> dict:
    tokens = sum(len(r["tokens"]) for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    nfe = sum(r["nfe"] for r in rows)
    return {"generated_tokens": tokens, "nfe": nfe, "tpf": tokens / max(nfe, 1), "seconds": seconds,
            "tokens_per_second": tokens / seconds if seconds else 0.0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a Fast_dLLM_Qwen checkpoint directory")
    ap.add_argument("--reference-code", type=Path, help="directory with the released modeling.py and "
                    "configuration.py (default: --model)")
    ap.add_argument("--reference-python", default=sys.executable,
                    help="interpreter with transformers 4.53 for the released code (default: this one)")
    ap.add_argument("--prompts", help="JSONL file of {\"prompt\": ...} lines (default: bench_decode's 8 prompts)")
    ap.add_argument("--max-new-tokens", type=int, default=128,
                    help="the reference's max_new_tokens (it decodes max_new_tokens // block_size blocks)")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--small-block-size", type=int, default=8)
    ap.add_argument("--block-cache", choices=["off", "on", "both"], default="both")
    ap.add_argument("--restore-block-reset", action="store_true",
                    help="for a fork's modeling.py that carries the sub-block cache across blocks: put the "
                         "release's per-block reset back (in a temporary copy; see the module docstring)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's choice)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="fastdllm's compiled CPU decode path (default: on)")
    ap.add_argument("--out", default="benchmarks/results/reference.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    llm = fastdllm.load(args.model, dtype=args.dtype, compile=args.compile)
    if llm.mask_token_id is None:
        raise SystemExit(f"bench_reference: {args.model} is not a block-diffusion checkpoint (no mask token)")
    stop = llm.tokenizer.eos_token_id
    prompts = read_prompts(args.prompts)
    prompts_ids = [llm.encode(p) for p in prompts]

    results = {}
    caches = {"off": [False], "on": [True], "both": [False, True]}[args.block_cache]
    for cache in caches:
        ref = run_reference(args, prompts_ids, llm.mask_token_id, stop, cache)
        ours = run_fastdllm(llm, prompts_ids, ref["rows"], args, stop, cache)
        same = [a["tokens"] == b["tokens"] for a, b in zip(ref["rows"], ours)]
        agree = [common_prefix(a["tokens"], b["tokens"]) for a, b in zip(ref["rows"], ours)]
        skipped = [reference.release_skips_prompt(len(ids), args.block_size) for ids in prompts_ids]
        results["sub-block cache" if cache else "no cache"] = {
            "reference": summary(ref["rows"]), "fastdllm": summary(ours),
            "identical_outputs": sum(same), "prompts": len(same),
            "reference_env": {k: ref[k] for k in ("transformers", "torch", "threads")},
            "reference_resets_block_cache": ref.get("code_resets_block_cache"),
            "agreeing_prefix_tokens": sum(agree),
            # prompts of exactly one block, which the release decodes without reading (see release_skips_prompt)
            "prompts_release_ignores": sum(skipped),
            "identical_outputs_of_read_prompts": sum(s for s, k in zip(same, skipped) if not k),
            "per_prompt": [{"prompt_tokens": a["prompt_tokens"], "identical": s, "agreeing_prefix": g,
                            "release_ignores_prompt": k,
                            "reference": {k: a[k] for k in ("seconds", "nfe")} | {"n": len(a["tokens"])},
                            "fastdllm": {k: b[k] for k in ("seconds", "nfe")} | {"n": len(b["tokens"])}}
                           for a, b, s, g, k in zip(ref["rows"], ours, same, agree, skipped)],
        }

    from rich.console import Console
    from rich.table import Table

    resets = [r["reference_resets_block_cache"] for r in results.values()]
    kind = ("the release (sub-block cache reset every block)" if all(resets) else
            "a fork that carries the sub-block cache across blocks" + (", reset restored" if args.restore_block_reset
                                                                       else ""))
    table = Table(title=f"{Path(args.model).name}: {len(prompts)} prompts one at a time, reference max_new_tokens "
                        f"{args.max_new_tokens}, threshold {args.threshold}, {args.dtype}, "
                        f"{torch.get_num_threads()} threads; reference code: {kind}")
    for col in ("cache", "implementation", "tokens", "NFE", "TPF", "seconds", "tokens/s", "speed-up", "identical",
                "agreeing prefix"):
        table.add_column(col, justify="left" if col in ("cache", "implementation") else "right")
    for name, r in results.items():
        base = r["reference"]["tokens_per_second"]
        for impl in ("reference", "fastdllm"):
            s = r[impl]
            table.add_row(name, impl, str(s["generated_tokens"]), str(s["nfe"]), f"{s['tpf']:.2f}",
                          f"{s['seconds']:.2f}", f"{s['tokens_per_second']:.1f}",
                          f"{s['tokens_per_second'] / base:.2f}x" if base else "-",
                          f"{r['identical_outputs']}/{r['prompts']}" if impl == "fastdllm" else "",
                          f"{r['agreeing_prefix_tokens']}/{s['generated_tokens']}" if impl == "fastdllm" else "")
    console = Console(width=max(130, Console().width))
    console.print(table)
    for name, r in results.items():
        if r["prompts_release_ignores"]:
            console.print(f"{name}: {r['prompts_release_ignores']} prompt(s) of exactly {args.block_size} tokens, which "
                          f"the release decodes without reading them (it prefills only longer prompts); identical "
                          f"on the others: {r['identical_outputs_of_read_prompts']}/"
                          f"{r['prompts'] - r['prompts_release_ignores']}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": str(args.model), "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                                               if k != "out"},
        "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "fastdllm": fastdllm.__version__},
        "results": results,
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
