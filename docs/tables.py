"""Markdown tables of measured figures, made from the JSON files under ``benchmarks/results/``.

One function per table, registered in ``TABLES`` under the name a docs page uses in a marker
``<!-- table: NAME -->`` (``docs/hooks/tables.py`` puts the table there at build time). Each table
ends with a line saying the machine, the date and the command that wrote its JSON. A missing file
or field raises: the build fails rather than showing an empty table.

    python docs/tables.py            # print every table
    python docs/tables.py precision  # print one
    python docs/tables.py --readme   # write the README's headline table again

The README's headline table (``headline``) is made here too, with links to the scripts and JSON
files; a test checks that the README holds what this makes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TABLES: dict[str, Callable[[], str]] = {}


class TableError(RuntimeError):
    pass


def table(name: str):
    def register(fn):
        TABLES[name] = fn
        return fn
    return register


def load(name: str) -> dict | list:
    path = RESULTS / name
    if not path.is_file():
        raise TableError(f"benchmarks/results/{name} is missing ({path}): the table that reads it cannot be made")
    return json.loads(path.read_text())


def date_of(name: str, data) -> str:
    """The JSON's own timestamp if it has one, else the day the file was last committed."""
    record = data[-1] if isinstance(data, list) else data
    for key in ("time", "date"):
        if isinstance(record, dict) and record.get(key):
            return str(record[key])[:10]
    out = subprocess.run(["git", "log", "-1", "--format=%cs", "--", f"benchmarks/results/{name}"],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode or not out.stdout.strip():
        raise TableError(f"benchmarks/results/{name} has no date and git knows none (not committed?)")
    return out.stdout.strip()


def machine_of(data) -> str:
    record = data[-1] if isinstance(data, list) else data
    m = record.get("machine")
    if isinstance(m, str):
        m = {"cpu": m}
    if not m:
        raise TableError("the JSON does not say which machine it was measured on")
    parts = [m.get("cpu", "?")]
    if m.get("cores"):
        parts.append(f"{m['cores']} cores")
    if m.get("threads"):
        parts.append(f"{m['threads']} threads")
    torch = m.get("torch") or record.get("torch")
    if torch:
        parts.append(f"torch {torch}")
    return ", ".join(parts)


def markdown(header: list[str], rows: list[list], name: str, data, command: str,
             machine: str | None = None, also: tuple[str, ...] = ()) -> str:
    if not rows:
        raise TableError(f"benchmarks/results/{name} gave no rows")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    lines.append("")
    lines.append(f"*Machine: {machine or machine_of(data)}. Date: {date_of(name, data)}. "
                 f"Command: `{command}`. Data: " + ", ".join(f"`benchmarks/results/{n}`" for n in (name, *also)) + ".*")
    return "\n".join(lines) + "\n"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


@table("precision")
def precision() -> str:
    name = "precision.json"
    d = load(name)
    rows = []
    for model, paths in d["results"].items():
        for path, r in paths.items():
            if "skipped" in r:
                rows.append([model, path, f"skipped: {r['skipped']}", "-", "-", "-"])
                continue
            fwd = " / ".join(f"{r['forward_ms'][k]:.2f}" for k in ("1", "8", "32"))
            bd = f"{r['diffusion']['tokens_per_s']:.1f}" if "diffusion" in r else "-"
            wp = r.get("word_problems")
            acc = f"{pct(wp['accuracy'])} ({wp['accuracy_delta_points']:+.1f}), TPF {wp['tpf']:.2f}" if wp else "-"
            rows.append([model, path, fwd, f"{r['ar']['tokens_per_s']:.1f}", bd, acc])
    return markdown(["model", "path", "forward, 1 / 8 / 32 tokens (ms)", "AR tokens/s", "BD tokens/s",
                     "word problems at 0.9 (accuracy vs float32, TPF)"], rows, name, d,
                    "python benchmarks/bench_precision.py --threads 2")


@table("quant_accuracy")
def quant_accuracy() -> str:
    name = "quant_accuracy.json"
    d = load(name)
    sets = list(d["problems"])
    rows = []
    for r in d["rows"]:
        base = r["path"] == "float32"
        rows.append([r["path"], *(pct(r["sets"][s]["accuracy"]) for s in sets), pct(r["accuracy_all"]),
                     "-" if base else f"{r['lost']} / {r['gained']}",
                     "-" if base else f"{r['points']:+.1f}", "-" if base else f"{r['sign_test_p']:.3f}"])
    return markdown(["path", *sets, "all", "turned wrong / right", "points", "sign test p"], rows, name, d,
                    "python benchmarks/bench_quant_accuracy.py --threads 2",
                    machine=f"the 2-core AMD EPYC, {d['settings']['threads']} threads (the JSON records no machine)")


@table("quant_kl")
def quant_kl() -> str:
    name = "quant_kl.json"
    d = load(name)
    rows = [[r["path"], r["positions"], f"{r['kl']:.5f}", pct(r["top1_agreement"])] for r in d["rows"]]
    return markdown(["path", "masked positions", "KL from float32", "top-1 agreement"], rows, name, d,
                    "python benchmarks/bench_quant_kl.py --threads 2",
                    machine="the 2-core AMD EPYC, 2 threads (the JSON records no machine)")


@table("bench_default")
def bench_default() -> str:
    name = "bench_default.json"
    d = load(name)
    rows = [[r["engine"], r["model"], r["decoding"], r["threshold"] if r["threshold"] is not None else "-", r["batch"],
             pct(r["accuracy"]), r["generated_tokens"], r["nfe"], f"{r['tpf']:.2f}", f"{r['tokens_per_second']:.1f}",
             f"{r['speedup_vs_ar']:.2f}x"] for r in d["rows"]]
    return markdown(["engine", "model", "decoding", "threshold", "batch", "accuracy", "tokens", "NFE", "TPF",
                     "tokens/s", "vs AR"], rows, name, d,
                    "fastdllm bench --threads 2 --reference-code DIR --reference-python PYTHON")


@table("serve_default")
def serve_default() -> str:
    name = "serve_default.json"
    d = load(name)
    rows = [[r["concurrency"], r["requests"], f"{r['requests_per_second']:.2f}", f"{r['tokens_per_second']:.1f}",
             f"{r['ttft_mean']:.2f} s / {r['ttft_p90']:.2f} s", f"{r['latency_mean']:.2f} s / {r['latency_p90']:.2f} s"]
            for r in d["results"]]
    m = d["memory"]
    note = (f"\nMemory over {m['requests']} more requests at {m['concurrency']} in flight: RSS "
            f"{m['rss_before_mib']:.1f} → {m['rss_after_mib']:.1f} MiB; idle afterwards: "
            f"{m['server_idle']['open_jobs']} open jobs, {m['server_idle']['kv_used']} of "
            f"{m['server_idle']['kv_size']} KV positions used.\n")
    return markdown(["requests in flight", "requests", "requests/s", "completion tokens/s",
                     "time to first token (mean / p90)", "latency (mean / p90)"], rows, name, d,
                    "python benchmarks/bench_serve.py --model word-problems --concurrency 1,8,32 "
                    "--max-batch-size 16 --rss-requests 1000 --threads 2") + note


def _reference(name: str, command: str) -> str:
    d = load(name)
    rows = []
    for mode, r in d["results"].items():
        ref, ours = r["reference"], r["fastdllm"]
        rows.append([mode, f"{ref['tokens_per_second']:.1f}", f"{ours['tokens_per_second']:.1f}",
                     f"**{ours['tokens_per_second'] / ref['tokens_per_second']:.1f}x**",
                     f"{ref['nfe']} / {ours['nfe']}", f"{r['identical_outputs']}/{r['prompts']}"])
    return markdown(["sub-block cache", "reference tokens/s", "fastdllm tokens/s", "speed-up", "NFE (ref / ours)",
                     "identical outputs"], rows, name, d, command)


@table("reference_release")
def reference_release() -> str:
    return _reference("reference_random_smollm2_sized_release.json",
                      "python benchmarks/bench_reference.py --model /tmp/bench_ckpt --reference-code DIR "
                      "--reference-python /tmp/refenv/bin/python --threads 2")


@table("reference_release_vocab49k")
def reference_release_vocab49k() -> str:
    return _reference("reference_random_smollm2_vocab49k_release.json",
                      "python benchmarks/bench_reference.py --model /tmp/bench_ckpt49k --reference-code DIR "
                      "--reference-python /tmp/refenv/bin/python --threads 2")


@table("decode")
def decode() -> str:
    rows = []
    files = [("decode_smollm2_135m_gguf.json", "SmolLM2-135M-Instruct (Q4_1 GGUF, float32)"),
             ("decode_random_smollm2_sized.json", "random SmolLM2-sized Fast_dLLM_Qwen")]
    for name, label in files:
        d = load(name)
        for mode, r in d["results"].items():
            rows.append([label, mode, r["generated_tokens"], r["nfe"], f"{r['tpf']:.2f}", f"{r['tokens_per_second']:.1f}"])
    name, d = files[-1][0], load(files[-1][0])
    return markdown(["model", "mode", "tokens", "NFE", "TPF", "tokens/s"], rows, name, d,
                    "python benchmarks/bench_decode.py --model M --max-new-tokens 128 --threads 2",
                    also=(files[0][0],))


@table("train_small")
def train_small() -> str:
    name = "train_small.json"
    d = load(name)
    rows = [[r["config"], r["forward_tokens"], f"{r['step_s']:.2f}", f"{r['tokens_per_s']:.0f}"] for r in d["rows"]]
    return markdown(["configuration", "forward tokens per step", "s/step", "tokens/s"], rows, name, d,
                    "python benchmarks/bench_train.py")


@table("screening-levers")
def screening_levers() -> str:
    name = "screening_levers.json"
    d = load(name)
    rows = []
    for r in sorted(d, key=lambda r: (r["lever"] != "baseline", r["lever"], r["seed"])):
        s9, s10 = r["scores"]["0.9"], r["scores"]["1.0"]
        # the work of a step: the complementary pair's 3L tokens, and L more for the AR loss's causal pass
        work = (3 + (1 if r["options"].get("ar_loss_weight") else 0)) / 3
        rows.append([r["lever"].replace("+", " + "), r["seed"], r["steps"], f"{r['val_loss']:.3f}",
                     pct(s9["accuracy"]), f"{s9['tpf']:.2f}", pct(s10["accuracy"]), f"{work:.2f}x",
                     f"{r['seconds_per_step']:.2f}"])
    n = d[0]["n_val"]
    return markdown(["lever", "seed", "steps", "val. loss", f"accuracy at 0.9 ({n} problems)", "TPF at 0.9",
                     f"accuracy at 1.0 ({n} problems)", "forward tokens per step vs baseline",
                     "s/step (shared machine: not comparable)"], rows, name, d,
                    "python examples/word_problems/screen.py --run RUN --out OUT --steps 400 [--levers A+B]")


@table("versions_redesign")
def versions_redesign() -> str:
    """Decoding speed before and after the package's redesign (issue 27), same run."""
    return _versions("versions_redesign.json")


@table("versions_redesign_5rounds")
def versions_redesign_5rounds() -> str:
    """The same, five rounds, the tree just after the redesign's merge against the one before it."""
    return _versions("versions_redesign_5rounds.json")


def _versions(name: str) -> str:
    """A bench_versions.py JSON: per configuration, both trees' median tokens/s, their ratio, the rounds."""
    d = load(name)
    c = d["commits"]
    rows = [[r["quantize"], r["batch"], r["mode"], f"{r['tokens_per_s']['baseline']:.1f}",
             f"{r['tokens_per_s']['this']:.1f}", f"{r['ratio']:.3f}x",
             " / ".join(f"{x:.0f}" for x in r["rounds"]["baseline"]),
             " / ".join(f"{x:.0f}" for x in r["rounds"]["this"]), "yes" if r["same_tokens"] else "**no**"]
            for r in d["results"]]
    return markdown(["weights", "batch", "mode", f"before ({c['baseline']}) tok/s", f"after ({c['this']}) tok/s",
                     "after / before", "rounds before", "rounds after", "same tokens"], rows, name, d,
                    d["command"])


def _bench_script(name: str):
    """A benchmark script of ``benchmarks/`` as a module (for its own ``markdown``: one format)."""
    import importlib.util

    bench_dir = str(ROOT / "benchmarks")
    sys.path.insert(0, bench_dir)  # the script imports its sibling scripts, as when run from benchmarks/
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(bench_dir)
    return bench


@table("hostile_default")
def hostile_default() -> str:
    """The serving page's three tables, written by the benchmark's own ``markdown`` (one format)."""
    return _bench_script("bench_hostile").markdown(load("hostile_default.json"))


@table("decoding_fresh_validation")
def decoding_fresh_validation() -> str:
    name = "decoding_fresh_validation.json"
    d = load(name)
    ar = d["rows"][0]
    rows = [[r["setting"], pct(r["accuracy"]), f"{100 * (r['accuracy'] - ar['accuracy']):+.1f}", f"{r['tpf']:.2f}",
             f"{r['tokens_per_s']:.0f}"] for r in d["rows"]]
    return markdown(["decoding (block 32)", f"accuracy ({d['n']} fresh validation problems)", "vs AR parent (points)",
                     "TPF", "tokens/s"], rows, name, d, d["command"])


def _sweep(name: str) -> str:
    """A size sweep's JSON: the machine, its peaks and instruction sets, then the sweep's own tables
    (``bench_sweep.markdown``)."""
    d = load(name)
    m, pk = d["machine"], d["peaks"]
    head = (f"*Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['threads']} threads, torch {m['torch']}; "
            f"instruction sets: {', '.join(m['isa'])}; W8A8 kernel: {m.get('w8a8_kernel', '-')}; load average at "
            f"the start {m['load_average'][0]:.2f}. Measured peaks: float32 GEMM {pk['float32_gflops']:.0f} GFLOP/s, "
            f"W8A8 {pk['int8_a8_gops']:.0f} GOP/s, memory reads {pk['read_gbs']:.1f} GB/s. Date: {date_of(name, d)}. "
            f"Command: `{d['command']}`. Data: `benchmarks/results/{name}`"
            + (f"; skipped: {'; '.join(f'{k}: {v}' for k, v in d['skipped'].items())}" if d.get("skipped") else "")
            + (f". Note: {d['note']}" if d.get("note") else "") + ".*\n")
    return head + _bench_script("bench_sweep").markdown(d)


@table("train_settings")
def train_settings() -> str:
    """Trainer settings on the default model's shapes (examples/word_problems/throughput.py)."""
    name = "train_settings.json"
    d = load(name)
    base = {(r["objective"], r["threads"]): r["median_step_s"] for r in d["rows"]
            if not r["compile"] and r["micro_batch"] == 32}
    rows = []
    for r in d["rows"]:
        ref = base.get((r["objective"], r["threads"]))
        rows.append([r["row"], "AR parent" if r["objective"] == "ar" else "adaptation (the recipe)",
                     "compiled" if r["compile"] else "eager", r["threads"],
                     f"{r['micro_batch']} x {32 // r['micro_batch']}", f"{r['median_step_s']:.3f} s",
                     f"{r['tokens_per_s']:,.0f}", f"{r['extra_first_steps_s']:.0f} s",
                     f"{ref / r['median_step_s']:.2f}x" if ref else "-"])
    return markdown(["setting", "step", "mode", "threads", "micro-batch x accumulation", "step (median)",
                     "sample tokens/s", f"first {d['skip']} steps' extra time", "vs eager, same threads"], rows,
                    name, d, f"python examples/word_problems/throughput.py --steps {d['steps']} --skip {d['skip']}")


@table("continuation_fresh_validation")
def continuation_fresh_validation() -> str:
    """The shipped default model against two continuations of it, on the fresh validation problems."""
    name = "continuation_fresh_validation.json"
    d = load(name)
    parent = next(r for m in d["models"] for r in m["rows"] if r["setting"] == "AR parent")
    rows = [["AR parent", "-", pct(parent["accuracy"]), "", f"{parent['tpf']:.2f}"]]
    for m in d["models"]:
        for r in m["rows"]:
            if r["setting"] != "AR parent":
                rows.append([m["name"], r["setting"], pct(r["accuracy"]),
                             f"{100 * (r['accuracy'] - parent['accuracy']):+.1f}", f"{r['tpf']:.2f}"])
    return markdown(["model", "decoding (block 32)", f"accuracy ({d['n']} fresh validation problems)",
                     "vs AR parent (points)", "TPF"], rows, name, d["models"][-1], "; ".join(d["commands"]),
                    machine=machine_of(d))


@table("sweep_2thread")
def sweep_2thread() -> str:
    """The size sweep on two threads."""
    return _sweep("sweep_2thread.json")


@table("sweep_smollm2_2thread")
def sweep_smollm2_2thread() -> str:
    """The SmolLM2-shape sweep after the AMX products and the shared-key attention (2026-12-08)."""
    return _sweep("sweep_smollm2_2thread.json")


@table("sweep_e2e_smollm2_tpf3")
def sweep_e2e_smollm2_tpf3() -> str:
    """End to end at SmolLM2 shape with the confidence scale that gives a TPF near 3."""
    return _sweep("sweep_e2e_smollm2_tpf3.json")


@table("stack_split")
def stack_split() -> str:
    """A W8A8 forward against its products alone (bench_stack_split.py)."""
    name = "stack_split.json"
    d = load(name)
    rows = [[r["rows"], f"{r['forward_ms']:.2f}", f"{r['products_ms']:.2f}",
             f"{r['rest_ms']:.2f} ({100 * r['rest_ms'] / r['forward_ms']:.0f}%)"] for r in d["rows"]]
    m = d["machine"]
    return markdown(["query rows", "whole forward, ms", "products alone (cold weights), ms", "rest of the forward, ms"],
                    rows, name, d, "python benchmarks/" + d["command"],
                    machine=f"{m['cpu']}, {m['threads']} threads, W8A8 kernel {m['w8a8_kernel']}, torch {m['torch']}, "
                            f"{d['shape']}, context {d['context']}")


@table("amx_attention_before_after")
def amx_attention_before_after() -> str:
    """W8A8 at SmolLM2 shape before (a2fa1ba) and after the AMX products and the shared-key attention:
    end to end (bench_sweep at TPF ~3, every run in the order they ran) and the forward's split
    (bench_stack_split, before / after / before), alternating trees."""
    before = "before_amx_attention"
    runs = [(f"{before}/e2e_before.json", "before (a2fa1ba)"),
            (f"{before}/e2e_after_5509e9c.json", "5509e9c (AMX, attention)"),
            (f"{before}/e2e_before2.json", "before (a2fa1ba)"),
            ("sweep_e2e_smollm2_tpf3.json", "after (+ AVX-512 attention)"),
            (f"{before}/e2e_before3.json", "before (a2fa1ba)")]
    rows = []
    for name, label in runs:
        d = load(name)
        r = d["shapes"]["smollm2-135m"]["end_to_end"]["paths"]["int8-a8"]
        ar, bd, nc = r["ar"], r["bd_cache"], r["bd_no_cache"]
        rows.append([label, d["date"][11:16], f"{ar['tokens_per_s']:.1f}",
                     f"{bd['tokens_per_s']:.1f} ({bd['tpf']:.2f})", f"{nc['tokens_per_s']:.1f} ({nc['tpf']:.2f})",
                     f"{bd['tokens_per_s'] / ar['tokens_per_s']:.2f}x"])
    main = load(runs[3][0])
    e2e = markdown(["W8A8 (int8-a8), tree", "started (UTC)", "AR tok/s",
                    "block diffusion + sub-block cache, tok/s (TPF)", "block diffusion, no cache, tok/s (TPF)",
                    "BD + cache / AR"], rows, runs[3][0], main,
                   "python benchmarks/" + main["command"]
                   + " (the other trees: the same with --paths int8-a8, in their own checkouts)", also=tuple(n for n, _ in runs if n != runs[3][0]))
    old, new = load(f"{before}/split_before2.json"), load("stack_split.json")
    old2 = load(f"{before}/split_before3.json")
    split = [[a["rows"], f"{a['forward_ms']:.2f} / {c['forward_ms']:.2f}", f"{b['forward_ms']:.2f}",
              f"{a['forward_ms'] / b['forward_ms']:.2f}-{c['forward_ms'] / b['forward_ms']:.2f}x",
              f"{a['products_ms']:.2f} / {c['products_ms']:.2f}", f"{b['products_ms']:.2f}",
              f"{a['rest_ms']:.2f} / {c['rest_ms']:.2f}", f"{b['rest_ms']:.2f}"]
             for a, b, c in zip(old["rows"], new["rows"], old2["rows"])]
    m = new["machine"]
    return e2e + "\n" + markdown(
        ["query rows", "forward before (two runs), ms", "after, ms", "speed-up", "products before, ms", "after, ms",
         "rest before, ms", "after, ms"], split, "stack_split.json", new,
        "python benchmarks/" + new["command"] + " (before: the same in a checkout of a2fa1ba, run just before and "
        "just after)",
        machine=f"{m['cpu']}, {m['threads']} threads, W8A8 kernel {m['w8a8_kernel']} (before: "
                f"{old['machine']['w8a8_kernel']}), torch {m['torch']}, {new['shape']}, context {new['context']}",
        also=(f"{before}/split_before2.json", f"{before}/split_before3.json"))


@table("prefill_before_after")
def prefill_before_after() -> str:
    """Time to the first token of long prompts at SmolLM2 shape, before (a2fa1ba) and after the shared-key
    attention and the AMX products (bench_sweep.py --prefill, run one after the other)."""
    name, before = "prefill_smollm2.json", "before_amx_attention/prefill_before2.json"
    new, old = load(name), load(before)
    a, b = new["shapes"]["smollm2-135m"]["prefill"], old["shapes"]["smollm2-135m"]["prefill"]
    rows = []
    for path, r in a.items():
        for n, v in r.items():
            o = b[path][n]
            rows.append([path, n, f"{o['seconds']:.2f} ({o['tokens_per_s']:.0f})",
                         f"{v['seconds']:.2f} ({v['tokens_per_s']:.0f})", f"{o['seconds'] / v['seconds']:.2f}x"])
    m = new["machine"]
    return markdown(["path", "prompt tokens", "before (a2fa1ba): s (tokens/s)", "after: s (tokens/s)", "speed-up"],
                    rows, name, new,
                    "python benchmarks/" + new["command"] + " (before: the same script in a checkout of a2fa1ba)",
                    machine=f"{m['cpu']}, {m['threads']} threads, W8A8 kernel {m['w8a8_kernel']}, torch {m['torch']}, "
                            "random weights at SmolLM2-135M's shape, the engine's prefill chunks of 512",
                    also=(before,))


@table("engine_overhead_smollm2")
def engine_overhead_smollm2() -> str:
    """A block-diffusion step against an AR step at SmolLM2 shape, per quantised path (profile_engine)."""
    name = "engine_overhead_smollm2.json"
    d = load(name)
    rows = []
    for run in d:
        res = {r["mode"]: r for r in run["results"] if r["batch"] == 1}
        ar_ms = res["ar"]["step_ms"] / res["ar"]["tokens_per_step"]  # per token
        for mode in ("ar", "diffusion-cache", "diffusion"):
            r = res[mode]
            per_token = r["step_ms"] / r["tokens_per_step"]
            rows.append([run["quantize"], mode, f"{r['tokens_per_step']:.2f}", f"{r['step_ms']:.1f}",
                         f"{r['forward_ms']:.1f}", f"{r['overhead_ms']:.2f} ({r['overhead_pct']:.1f}%)",
                         f"{per_token:.1f}", f"{ar_ms / per_token:.2f}x"])
    run = d[-1]
    return markdown(["path", "mode", "tokens/step", "step ms", "forward ms", "overhead ms (share)", "ms/token",
                     "vs AR, same path"], rows, name, d,
                    "python benchmarks/profile_engine.py --model /tmp/bd_smol --quantize PATH --batch 1 --modes "
                    f"diffusion-cache diffusion ar --new-tokens {run['new_tokens']} --repeats {run['repeats']} "
                    f"--threads {run['threads']} --out benchmarks/results/{name}",
                    machine=f"{run['machine']['cpu']}, {run['threads']} thread (thread CPU time)")


def _load_path(rel: str):
    path = ROOT / rel
    if not path.is_file():
        raise TableError(f"{rel} is missing: the README's headline table reads it")
    return json.loads(path.read_text())


def headline() -> str:
    """The README's headline figures, each linked to the script and the JSON it comes from."""
    def link(rel: str) -> str:
        return f"[`{rel.rsplit('/', 1)[-1]}`]({rel})"

    wp_json = "fastdllm/models/word_problems/results.json"
    wp = _load_path(wp_json)
    ar, ref_rule = wp["headline"][0], wp["headline"][1]
    # the model as it ships: the decoding its build chose (config.json), else Fast-dLLM v2's rule at 0.9
    bd = next((e for e in wp["headline"][2:] if (e.get("acceptance") or "threshold") != "threshold"), ref_rule)
    shipped = ("" if bd is ref_rule else
               f" (its `{bd['acceptance']}` accept rule at {bd['threshold']:g}, sub-block {bd['small_block_size']}; "
               f"Fast-dLLM v2's rule at 0.9: {pct(ref_rule['accuracy'])} at {ref_rule['tpf']:.2f})")
    syn_json = "examples/synthetic/results/results.json"
    syn = {(e["model"], e["threshold"]): e for e in _load_path(syn_json)["evaluations"]}
    syn_ar, syn_bd = syn[("AR parent", None)], syn[("BD, compl. mask", 0.9)]
    ref_name = "reference_random_smollm2_sized_release.json"
    ref = load(ref_name)["results"]["no cache"]
    prec_name = "precision.json"
    smol = load(prec_name)["results"]["SmolLM2-135M-Instruct.Q4_1.gguf"]
    qa_name = "quant_accuracy.json"
    qa_data = load(qa_name)
    qa = {r["path"]: r for r in qa_data["rows"]}
    serve_name = "serve_default.json"
    serve_data = load(serve_name)
    serve = {r["concurrency"]: r for r in serve_data["results"]}
    e2e_name = "sweep_e2e_smollm2_tpf3.json"
    e2e_data = load(e2e_name)
    e2e = e2e_data["shapes"]["smollm2-135m"]["end_to_end"]
    a8, i8 = e2e["paths"]["int8-a8"], e2e["paths"]["int8"]
    fastest_ar = max(e2e["paths"], key=lambda p: e2e["paths"][p]["ar"]["tokens_per_s"])
    res = "benchmarks/results/"
    rows = [
        ["the default model (1.3M parameters, trained here), 500 held-out word problems",
         f"**{pct(bd['accuracy'])}** right at **{bd['tpf']:.2f} tokens per forward**, "
         f"**{bd['tokens_per_s'] / ar['tokens_per_s']:.2f}x** the tokens/s of its AR parent ({pct(ar['accuracy'])})"
         f"{shipped}",
         link("examples/word_problems/build.py"), link(wp_json)],
        ["the training recipe, AR model adapted to block diffusion (synthetic sorting task)",
         f"**{pct(syn_bd['accuracy'])}** exact answers against the AR parent's {pct(syn_ar['accuracy'])}, "
         f"at **{syn_bd['tpf']:.2f}** tokens per forward",
         link("examples/synthetic/run.py"), link(syn_json)],
        ["against the released Fast-dLLM v2 `generate`, SmolLM2-sized checkpoint",
         f"the same tokens on {ref['identical_outputs']} of {ref['prompts']} prompts (the 8th: a prompt the release "
         f"ignores), **{ref['fastdllm']['tokens_per_second'] / ref['reference']['tokens_per_second']:.1f}x** its tokens/s",
         link("benchmarks/bench_reference.py"), link(res + ref_name)],
        ["SmolLM2-135M (Q4_1 GGUF), AR decoding, int8 on fastdllm's kernels",
         f"**{smol['int8']['ar']['tokens_per_s']:.1f}** tokens/s against llama.cpp's "
         f"{smol['llama.cpp']['ar']['tokens_per_s']:.1f} on the same ids",
         link("benchmarks/bench_precision.py"), link(res + prec_name)],
        ["block diffusion against AR on this CPU, SmolLM2 shape (random weights), W8A8, 2 threads",
         f"**{a8['bd_cache']['tokens_per_s']:.1f}** tokens/s at {a8['bd_cache']['tpf']:.2f} tokens per forward: "
         f"**{a8['bd_cache']['tokens_per_s'] / i8['ar']['tokens_per_s']:.2f}x** int8 AR, "
         f"**{a8['bd_cache']['tokens_per_s'] / e2e['fastest_ar_tokens_per_s']:.2f}x** the fastest AR ({fastest_ar}; "
         f"break-even at {a8['bd_cache']['break_even_tpf']:.2f} tokens per forward)",
         link("benchmarks/bench_sweep.py"), link(res + e2e_name)],
        ["quantised block diffusion, 1,500 word problems paired with float32",
         f"int8 **{qa['int8']['points']:+.1f}**, int4-gptq **{qa['int4-gptq']['points']:+.1f}**, "
         f"plain int4 {qa['int4']['points']:+.1f} points (measured {date_of(qa_name, qa_data)})",
         link("benchmarks/bench_quant_accuracy.py"), link(res + qa_name)],
        ["`fastdllm serve`, default model, 32 streaming clients",
         f"**{serve[32]['tokens_per_second']:.0f}** completion tokens/s, "
         f"{serve[32]['ttft_mean']:.2f} s mean time to first token (measured {date_of(serve_name, serve_data)})",
         link("benchmarks/bench_serve.py"), link(res + serve_name)],
    ]
    lines = ["| what | result | script | data |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


README_START, README_END = "<!-- headline: generated by docs/tables.py --readme -->", "<!-- headline end -->"


def readme_with_headline(text: str) -> str:
    """``text`` (the README) with the block between the headline markers made again."""
    i, j = text.find(README_START), text.find(README_END)
    if i < 0 or j < i:
        raise TableError("README.md has no headline markers")
    return text[:i + len(README_START)] + "\n" + headline() + text[j:]


def main(argv: list[str]) -> int:
    if argv == ["--readme"]:
        readme = ROOT / "README.md"
        readme.write_text(readme_with_headline(readme.read_text()))
        return 0
    names = argv or list(TABLES)
    for n in names:
        if n not in TABLES:
            print(f"unknown table {n!r}: one of {', '.join(TABLES)}", file=sys.stderr)
            return 2
        print(f"## {n}\n\n{TABLES[n]()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
