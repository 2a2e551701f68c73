"""``fastdllm kernels``: build fastdllm's CPU kernels now, or say what this machine will run.

    fastdllm kernels status   # compiler, the CPU's instruction sets, the build cache, kernel per path
    fastdllm kernels build    # compile now (the compiler's progress shown), then the status
"""

from __future__ import annotations

import argparse
import time

from ..options import RuntimeOptions
from . import common


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "kernels", help="build fastdllm's CPU kernels, or show which kernels this machine runs",
        description="fastdllm's int8/int4 CPU kernels are C++ compiled on first use (a few minutes). "
                    "'build' compiles them now; 'status' shows the compiler, the CPU's instruction sets, "
                    "whether a build is cached and which kernel each dtype / quantisation runs on.",
        epilog=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("status", "build"))
    return p


def _status(native_ok: bool | None) -> list[str]:
    from ..kernels import cpu_info, native

    cxx, version = cpu_info.compiler()
    lines = [f"cpu:        {cpu_info.cpu_name()} ({__import__('os').cpu_count()} logical CPUs)",
             "isa:        " + " ".join(f"{f}{'+' if on else '-'}" for f, on in cpu_info.isa_summary().items()),
             f"compiler:   {cxx + ' (' + version + ')' if cxx else version}",
             f"ninja:      {cpu_info.ninja() or 'not found'}",
             f"build:      {native.build_name()} " + ("cached" if native.built() else "not built yet")
             + (f" ({native.build_dir()})" if native.build_dir() else "")]
    if native_ok is None:  # status does not compile: judge by what would happen
        why = None if native.built() else native.unbuildable()
        if not native.cpu_supported():
            why = "the CPU has no AVX2"
        native_ok = why is None
    else:
        why = None if native_ok else native.why_unavailable()
    if why:
        lines.append(f"fallback:   quantised layers use torch's bfloat16-input kernels: {why}")
    lines.append(f"runtime:    {RuntimeOptions.from_env().describe()} (from the environment; load() arguments "
                 "override it, llm.runtime says what a model got)")
    lines.append("kernels (float32 model on the CPU):")
    lines += [f"  {path:24s} {kernel}" for path, kernel in cpu_info.kernel_table(native_ok)]
    return lines


def run(args: argparse.Namespace) -> int:
    from ..kernels import native

    if args.action == "build":
        t0 = time.perf_counter()
        was = native.built()
        ok = native.kernels(verbose=not was) is not None
        if ok:
            print(f"fastdllm: kernels {'already built' if was else f'built in {time.perf_counter() - t0:.0f} s'}: "
                  f"{native.build_name()}", flush=True)
        print("\n".join(_status(ok)))
        if not ok:
            raise common.CLIError(f"the kernels could not be built: {native.why_unavailable()}")
        return 0
    print("\n".join(_status(None)))
    return 0
