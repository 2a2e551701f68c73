"""The engine's own overhead per step: everything outside the model forward, at batch 1 and 16.

    python benchmarks/profile_engine.py [--model default|CKPT_DIR] [--batch 1 16]
        [--modes diffusion diffusion-cache ar] [--new-tokens 64] [--prompt-len 40] [--repeats 5]
        [--baseline OLD_TREE | --steps-per-sync 1 8] [--lm-scale 40] [--dtype float32] [--quantize int8|int4]
        [--compile] [--label NAME]
        [--out benchmarks/results/engine_overhead.json] [--torch-profile] [--cprofile]

``default`` is the project's default model size (``examples/word_problems/build.py``'s
``model_config()``: Qwen2-style, hidden 128, 6 layers, vocabulary 1024, 1.3M parameters) with
random weights (``init_from_scratch``), the output projection untied and scaled by
``--lm-scale`` so that block diffusion fills several positions per forward as a trained model
does; the mask token is the last id. A checkpoint directory with a tokenizer also exercises
detokenisation.

``--baseline OLD_TREE`` measures another version of fastdllm in the same process, on the same
weights and prompts, its runs alternating with this tree's (``git archive OLD | tar -x -C
/tmp/old``, then ``--baseline /tmp/old``): on a busy machine only such interleaved runs compare.
``--steps-per-sync 1 8`` compares this tree's engine with that many AR forwards per read
(``Engine.steps_per_sync``) the same way; one value sets it for every run (default: the
library's default).

What is measured, per configuration (batch size x mode) and version, over ``--repeats`` decoding
runs after one warm-up run (the median run by step time is reported):

- ``forwards_per_step``: model forwards per step (more than 1 where AR runs several per read);
- ``step_ms``: thread CPU time of an engine step per step (``time.thread_time``: CPU time of
  the decoding thread, so time the process spends preempted on a busy machine is not counted;
  one torch thread, the default here, keeps all the work on that thread);
- ``forward_ms``: thread CPU time inside the forward backend's calls (the matrix work,
  attention, the logits; for a quantised model's greedy AR run, its forwards and picks in one C++
  call); ``attention_ms``: the part spent in the attention back end (0 with ``--quantize`` on
  the CPU, where attention runs inside the C++ layer stack);
- ``overhead_ms`` = step - forward: scheduling, planning, packing, sampling, the accept rule,
  bookkeeping, detokenisation; ``overhead_pct`` = its share of the step;
- ``syncs_per_step``: device-to-host reads per step, as the engine counts them
  (``PerfCounters.reads``); ``forward_syncs_per_step`` stays in the JSON for its format and is
  0 by construction (the runner uploads a forward's inputs first and the backend reads nothing back);
- ``ops_outside`` / ``ops_forward``: aten operators dispatched per step outside / inside the
  forward (counted with a ``TorchDispatchMode`` in a separate run; machine independent).

All of it comes from the engine's timing hooks (``fastdllm.engine.hooks``: around each step
and each backend forward, and the attention callable of eager forwards) and its perf counters;
nothing is patched. ``--baseline`` therefore needs a tree that has the hooks.

``--torch-profile`` adds a ``torch.profiler`` run and prints the operators with the most self
CPU time outside the forward; ``--cprofile`` prints the Python functions with the most own time.
Prints a table and appends everything (settings, machine, git commit) to ``--out``.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import json
import os
import pstats
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fastdllm  # noqa: E402
from fastdllm.api import LLM  # noqa: E402
from fastdllm.model.config import ModelConfig  # noqa: E402
from fastdllm.loading import Checkpoint  # noqa: E402
from fastdllm.options import RuntimeOptions  # noqa: E402
from fastdllm.kernels import cpu_info  # noqa: E402

MODES = {"diffusion": dict(mode="diffusion"), "diffusion-cache": dict(mode="diffusion", use_block_cache=True),
         "ar": dict(mode="ar")}


def import_tree(tree: Path, name: str = "fastdllm_baseline"):
    """The ``fastdllm`` package of ``tree`` under another name (its imports are relative)."""
    init = tree / "fastdllm" / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[name] = pkg
    spec.loader.exec_module(pkg)
    for sub in ("api", "model.config", "loading", "model", "engine.engine", "options"):
        importlib.import_module(f"{name}.{sub}")
    return pkg


def default_model(lm_scale: float, runtime: RuntimeOptions, seed: int = 0) -> LLM:
    spec = importlib.util.spec_from_file_location("wp_build", ROOT / "examples" / "word_problems" / "build.py")
    build = importlib.util.module_from_spec(spec)
    sys.modules["wp_build"] = build  # its dataclasses look their module up
    spec.loader.exec_module(build)
    from fastdllm.training.base import init_from_scratch

    raw = {**build.model_config(), "tie_word_embeddings": False, "bd_size": 32}
    raw["mask_token_id"] = raw["vocab_size"] - 1
    model = init_from_scratch(raw, seed).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(lm_scale)
        model.lm_head.weight[raw["mask_token_id"]].zero_()
    cfg = ModelConfig.from_dict(raw)
    return LLM(Checkpoint(model, cfg, None, Path("."), {}), runtime=runtime)


def same_model_in(pkg, llm: LLM):
    """``llm``'s weights, tokenizer and settings, run by another fastdllm package (a quantised
    model is loaded again from its checkpoint there: the float weights are gone)."""
    if llm.model.quantization:
        if not llm.checkpoint.path.is_dir():
            raise SystemExit("--baseline with --quantize needs a checkpoint directory (--model DIR)")
        return pkg.load(str(llm.checkpoint.path), quantize=llm.model.quantization, dtype=llm.model.dtype,
                        runtime=pkg.options.RuntimeOptions(**vars(llm.runtime)))
    cfg = pkg.model.config.ModelConfig.from_dict(llm.config.raw)
    model = pkg.model.Transformer(cfg).to(llm.model.dtype).eval()
    model.load_state_dict(llm.model.state_dict())
    ckpt = llm.checkpoint
    return pkg.api.LLM(pkg.loading.Checkpoint(model, cfg, ckpt.tokenizer, ckpt.path, ckpt.generation_config),
                       mask_token_id=llm.mask_token_id, runtime=pkg.options.RuntimeOptions(**vars(llm.runtime)))


class Meter:
    """Engine hooks (``fastdllm.engine.hooks.EngineHooks``' methods) that add up thread CPU time
    inside and outside the backend's forwards, and in attention."""

    def __init__(self):
        self.reset()
        self.inside = 0  # depth of backend forwards (read by OpCounter)

    def reset(self):
        self.steps = self.forwards = 0
        self.step_cpu = self.forward_cpu = self.attention_cpu = 0.0
        self.syncs = self.forward_syncs = 0
        self.step_t0 = self.forward_t0 = 0.0

    def step_start(self):
        self.step_t0 = time.thread_time()

    def step_end(self, event):
        self.step_cpu += time.thread_time() - self.step_t0
        self.steps += 1

    def forward_start(self, tokens):
        self.inside += 1
        self.forward_t0 = time.thread_time()

    def forward_end(self, tokens, forwards, path):
        self.forward_cpu += time.thread_time() - self.forward_t0
        self.forwards += forwards
        self.inside -= 1

    def wrap_attention(self, attend):
        def timed(*args):
            t0 = time.thread_time()
            try:
                return attend(*args)
            finally:
                self.attention_cpu += time.thread_time() - t0
        return timed

    @contextmanager
    def installed(self, versions: dict):
        """These hooks on every version's engine; the engine's read counter reset with them."""
        for llm in versions.values():
            if not hasattr(llm.engine, "hooks"):
                raise SystemExit("this fastdllm has no engine hooks (fastdllm.engine.hooks): --baseline needs a "
                                 "tree that has them")
            llm.engine.hooks = self
        try:
            yield self
        finally:
            for llm in versions.values():
                llm.engine.hooks = None


def reads(llm) -> int:
    return llm.engine.counters.reads


class OpCounter(TorchDispatchMode):
    """Counts aten operators, split by whether the model forward is running."""

    def __init__(self, meter: Meter):
        super().__init__()
        self.meter = meter
        self.outside = self.forward = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.meter.inside:
            self.forward += 1
        else:
            self.outside += 1
        return func(*args, **(kwargs or {}))


def prompts_for(vocab_size: int, batch: int, prompt_len: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    hi = vocab_size - 8  # clear of the mask / special ids at the end
    return [torch.randint(4, hi, (prompt_len + 7 * i,), generator=g).tolist() for i in range(batch)]


def summary(runs: list[dict], counter: OpCounter, op_steps: int) -> dict:
    run = sorted(runs, key=lambda r: r["step_cpu"] / r["steps"])[len(runs) // 2]  # the median run
    n = run["steps"]
    return dict(steps=n, tokens=run["tokens"], tokens_per_step=run["tokens"] / n,
                forwards_per_step=run["forwards"] / n,
                step_ms=1e3 * run["step_cpu"] / n, forward_ms=1e3 * run["forward_cpu"] / n,
                attention_ms=1e3 * run["attention_cpu"] / n,
                overhead_ms=1e3 * (run["step_cpu"] - run["forward_cpu"]) / n,
                overhead_pct=100 * (run["step_cpu"] - run["forward_cpu"]) / run["step_cpu"],
                overhead_pct_runs=[round(100 * (r["step_cpu"] - r["forward_cpu"]) / r["step_cpu"], 2) for r in runs],
                attention_ms_runs=[round(1e3 * r["attention_cpu"] / r["steps"], 2) for r in runs],
                syncs_per_step=run["syncs"] / n, forward_syncs_per_step=run["forward_syncs"] / n,
                ops_outside=counter.outside / op_steps, ops_forward=counter.forward / op_steps,
                wall_ms=1e3 * run["wall"] / n)


def measure(versions: dict, batch: int, mode: str, args) -> dict:  # noqa: C901
    """Each version's numbers for one configuration; runs alternate between versions."""
    some = next(iter(versions.values()))
    prompts = prompts_for(some.config.vocab_size, batch, args.prompt_len)
    kw = dict(max_new_tokens=args.new_tokens, stop_token_ids=[], chat=False, **MODES[mode])
    outputs = {}
    for label, llm in versions.items():
        outputs[label] = [r.token_ids for r in llm.generate(prompts, **kw)]  # warm-up
    meter = Meter()
    runs: dict[str, list[dict]] = {label: [] for label in versions}
    out = {}
    with meter.installed(versions):
        for _ in range(args.repeats):
            for label, llm in versions.items():
                meter.reset()
                read0 = reads(llm)
                t = time.perf_counter()
                res = llm.generate(prompts, **kw)
                runs[label].append(dict(steps=meter.steps, forwards=meter.forwards, step_cpu=meter.step_cpu,
                                        forward_cpu=meter.forward_cpu, attention_cpu=meter.attention_cpu,
                                        syncs=reads(llm) - read0, forward_syncs=meter.forward_syncs,
                                        wall=time.perf_counter() - t, tokens=sum(len(r.token_ids) for r in res)))
        for label, llm in versions.items():
            meter.reset()
            counter = OpCounter(meter)
            with counter:
                llm.generate(prompts, **kw)
            out[label] = dict(batch=batch, mode=mode, version=label, **summary(runs[label], counter, meter.steps))
    if len(versions) > 1:  # same tokens, or the comparison is not like for like
        first = next(iter(outputs.values()))
        for label, toks in outputs.items():
            out[label]["same_tokens_as_first"] = toks == first
    for label, llm in versions.items():
        if args.torch_profile:
            out[label]["profile_top"] = torch_profile(llm, prompts, kw)
        if args.cprofile:
            prof = cProfile.Profile()
            prof.enable()
            llm.generate(prompts, **kw)
            prof.disable()
            print(f"--- cProfile, {label}, batch {batch}, {mode}: own time")
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    return out


class ForwardSpans:
    """Engine hooks that mark each backend forward as a ``model.forward`` span for torch.profiler."""

    def __init__(self):
        from torch.profiler import record_function

        self.record_function = record_function
        self.open = None

    def step_start(self):
        pass

    def step_end(self, event):
        pass

    def forward_start(self, tokens):
        self.open = self.record_function("model.forward")
        self.open.__enter__()

    def forward_end(self, tokens, forwards, path):
        self.open.__exit__(None, None, None)
        self.open = None

    def wrap_attention(self, attend):
        return attend


def torch_profile(llm, prompts, kw) -> list[dict]:
    """Operators with the most self CPU time outside the forward (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    llm.engine.hooks = ForwardSpans()
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            llm.generate(prompts, **kw)
    finally:
        llm.engine.hooks = None
    events = prof.events()
    spans = [(e.time_range.start, e.time_range.end) for e in events if e.name == "model.forward"]
    totals: dict[str, list[float]] = {}
    for e in events:
        if e.name == "model.forward" or any(a <= e.time_range.start and e.time_range.end <= b for a, b in spans):
            continue
        t = totals.setdefault(e.name, [0.0, 0])
        t[0] += e.self_cpu_time_total
        t[1] += 1
    top = sorted(totals.items(), key=lambda kv: -kv[1][0])[:12]
    return [dict(op=k, self_cpu_us=round(v[0]), calls=v[1]) for k, v in top]


def git_commit(tree: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=40)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--lm-scale", type=float, default=40.0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="the compiled decode path (fastdllm.kernels.compiled)")
    p.add_argument("--quantize", default=None, choices=["int8", "int8-a8", "int4"],
                   help="quantisation (on the CPU: fastdllm's kernels and C++ layer stack); int8-a8: int8 weights "
                        "and int8 activations (W8A8)")
    p.add_argument("--baseline", default=None, help="a tree with another fastdllm to compare, in the same process")
    p.add_argument("--steps-per-sync", type=int, nargs="+", default=None,
                   help="AR forwards per read (Engine.steps_per_sync); two or more values are compared")
    p.add_argument("--label", default=None, help="a name for this run in the JSON (default: the git commit)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine_overhead.json"))
    p.add_argument("--torch-profile", action="store_true")
    p.add_argument("--cprofile", action="store_true")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    runtime = RuntimeOptions.from_env(compile=args.compile)  # the compiled decode path: a runtime option
    if args.model == "default":
        llm = default_model(args.lm_scale, runtime)
        llm.model.to(getattr(torch, args.dtype))
        if args.quantize:
            from fastdllm.quant import A8_SUFFIX, quantize_model, set_activations

            quantize_model(llm.model, args.quantize.removesuffix(A8_SUFFIX))
            if args.quantize.endswith(A8_SUFFIX):
                set_activations(llm.model, "int8")
        llm = LLM(llm.checkpoint, runtime=runtime)  # the backend is chosen for the model as it is now
    else:
        from fastdllm.quant import load_path

        llm = load_path(args.quantize or "float32", args.model, dtype=args.dtype, runtime=runtime)
    packages = {git_commit(ROOT): fastdllm}
    versions = {git_commit(ROOT): llm}
    if args.baseline and args.steps_per_sync and len(args.steps_per_sync) > 1:
        raise SystemExit("compare with --baseline or with several --steps-per-sync values, not both")
    if args.baseline:
        base = import_tree(Path(args.baseline).resolve())
        packages = {"before": base, "after": fastdllm}
        versions = {"before": same_model_in(base, llm), "after": llm}
    elif args.steps_per_sync and len(args.steps_per_sync) > 1:
        versions = {f"sync/{k}": LLM(llm.checkpoint, mask_token_id=llm.mask_token_id, steps_per_sync=k, runtime=runtime)
                    for k in args.steps_per_sync}
    elif args.steps_per_sync:
        llm.engine.steps_per_sync = args.steps_per_sync[0]
    for version in versions.values():
        version.engine.max_batch_size = max(args.batch)
    from fastdllm.quant import QuantLinear

    params = sum(t.numel() for t in {id(t): t for t in llm.model.parameters()}.values())
    tied = llm.model.cfg.tie_word_embeddings  # a quantised tied projection is counted in the embedding already
    params += sum(m.in_features * m.out_features for n, m in llm.model.named_modules()
                  if isinstance(m, QuantLinear) and not (tied and n == "lm_head"))

    print(f"model {args.model} ({params / 1e6:.2f}M parameters, {args.dtype}, quantize={args.quantize}), "
          f"{args.threads} thread(s), "
          f"compile={args.compile}, {args.new_tokens} new tokens, prompts {args.prompt_len}+7i tokens; "
          + ", ".join(f"{label}: {Path(pkg.__file__).parent}" for label, pkg in packages.items()))
    print(f"{'batch':>5} {'mode':<16} {'version':<8} {'steps':>5} {'fwd/step':>8} {'tok/step':>8} {'step ms':>8} "
          f"{'fwd ms':>8} "
          f"{'attn ms':>8} {'ovh ms':>7} {'ovh %':>6} {'syncs':>6} {'ops out':>8} {'ops fwd':>8}")
    results = []
    for batch in args.batch:
        for mode in args.modes:
            for label, r in measure(versions, batch, mode, args).items():
                results.append(r)
                print(f"{batch:>5} {mode:<16} {label:<8} {r['steps']:>5} {r['forwards_per_step']:>8.2f} "
                      f"{r['tokens_per_step']:>8.2f} "
                      f"{r['step_ms']:>8.2f} {r['forward_ms']:>8.2f} {r['attention_ms']:>8.2f} "
                      f"{r['overhead_ms']:>7.2f} {r['overhead_pct']:>6.1f} {r['syncs_per_step']:>6.2f} "
                      f"{r['ops_outside']:>8.1f} {r['ops_forward']:>8.1f}", flush=True)
                if r.get("same_tokens_as_first") is False:
                    print("        (different tokens from the first version: not like for like)")
                for row in r.get("profile_top", []):
                    print(f"        {row['op']:<50} {row['self_cpu_us']:>9} us {row['calls']:>6} calls")
    record = dict(label=args.label or git_commit(ROOT), commit=git_commit(ROOT), baseline=args.baseline,
                  model=args.model, parameters=params, time=time.strftime("%Y-%m-%d %H:%M:%S"), dtype=args.dtype,
                  threads=args.threads, compile=args.compile, quantize=args.quantize,
                  steps_per_sync=args.steps_per_sync or llm.engine.steps_per_sync, new_tokens=args.new_tokens,
                  prompt_len=args.prompt_len,
                  repeats=args.repeats, lm_scale=args.lm_scale,
                  machine=dict(cpu=cpu_info.cpu_name(), cores=os.cpu_count(),
                               load=os.getloadavg(), torch=torch.__version__),
                  results=results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(runs + [record], indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
