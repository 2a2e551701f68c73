"""``fastdllm bench``: one run, one table: block diffusion against AR, transformers and the released code."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..engine.options import FALLBACK_THRESHOLD, DecodeOptions
from ..errors import InvalidRequestError, UnsupportedModelError
from ..model.config import parse_threshold
from . import common
from .common import CLIError

DEFAULT_OUT = "bench_results/bench.json"
AR_PARENT_DIR = "ar_parent"

EXAMPLES = """\
examples:
  fastdllm bench                                   # the default model on 100 of its held-out problems
  fastdllm bench --threshold 0.9,0.7 --batch-size 8 --limit 0
  fastdllm bench --model ./my-bd-model --ar-model ./its-ar-parent --prompts prompts.jsonl
  fastdllm bench --reference-code DIR --reference-python /tmp/refenv/bin/python   # + the released generate

prompts file: JSONL lines with "prompt", "question" or "messages" (optional integer "answer", graded
against the output's 'The answer is N.' line), or plain text, one prompt per line.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="benchmark block diffusion against AR decoding and transformers",
        description="Decode the same prompts greedily with fastdllm's block diffusion (per threshold), fastdllm's "
                    "AR decoding of the AR parent (or of the same weights), transformers' generate and, with "
                    "--reference-code, the released Fast-dLLM v2 generate; at batch 1 and at --batch-size. Prints "
                    "a table (accuracy, tokens, NFE, TPF, tokens/s, speed-up over AR at the same batch size) and "
                    "writes JSON and a PNG plot.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = common.add_model_arguments(p, adapter=False, quantize=False)
    m.add_argument("--ar-model", metavar="DIR",
                   help=f"the AR parent for the AR and transformers rows (default: MODEL/{AR_PARENT_DIR} when it "
                        f"exists, else the model's own weights decoded autoregressively)")

    w = p.add_argument_group("workload")
    w.add_argument("--prompts", metavar="FILE",
                   help="JSONL (prompt/question/messages, optional answer) or plain-text prompts (default: "
                        "MODEL/heldout.jsonl when it exists, else 8 built-in chat prompts)")
    w.add_argument("--limit", type=int, default=100, metavar="N",
                   help="use the first N prompts; 0 = all (default: %(default)s)")
    w.add_argument("--threshold", metavar="T[,T...]",
                   help="block-diffusion confidence threshold(s) in [0, 1]; a list sweeps (default: the "
                        f"checkpoint's config.json threshold, else {FALLBACK_THRESHOLD:g}); the accept rule is "
                        "the checkpoint's (config.json acceptance, else Fast-dLLM v2's)")
    w.add_argument("--batch-size", type=int, default=16, metavar="N",
                   help="the batched rows' batch size; batch 1 always runs (default: %(default)s)")
    w.add_argument("--max-new-tokens", type=int, default=320, metavar="N",
                   help="tokens to generate at most per prompt (default: %(default)s)")
    w.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                   help="wrap text prompts in the tokenizer's chat template (default: on)")
    w.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")

    e = p.add_argument_group("engines")
    e.add_argument("--no-transformers", dest="transformers", action="store_false",
                   help="skip the transformers generate rows")
    e.add_argument("--reference-code", metavar="DIR",
                   help="directory with the released Fast-dLLM v2 modeling.py and configuration.py: adds its "
                        "generate (batch 1), run in --reference-python")
    e.add_argument("--reference-python", default=sys.executable, metavar="PYTHON",
                   help="interpreter with transformers 4.53 for the released code (default: this one)")

    o = p.add_argument_group("output")
    o.add_argument("--out", default=DEFAULT_OUT, metavar="FILE.json",
                   help="results as JSON: settings, machine, every row with per-prompt outputs (default: %(default)s)")
    o.add_argument("--plot", metavar="FILE.png",
                   help="the plot: tokens/s and accuracy per row (default: --out with .png)")
    o.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    o.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars on stderr (default: on)")
    return p


# ---- validation (before loading anything) ---------------------------------------------------

def parse_thresholds(spec: str) -> list[float]:
    values = []
    for part in spec.split(","):
        part = part.strip()
        try:
            t = float(part)
        except ValueError:
            raise CLIError(f"--threshold: {part!r} is not a number (expected e.g. 0.9 or 0.9,0.7)") from None
        try:
            DecodeOptions(threshold=t).validate()  # the schema's range
        except InvalidRequestError:
            raise CLIError(f"--threshold must be in [0, 1], got {part}") from None
        if t not in values:
            values.append(t)
    return values


def check_arguments(args: argparse.Namespace) -> None:
    args.thresholds = None if args.threshold is None else parse_thresholds(args.threshold)  # None: the checkpoint's
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.limit < 0:
        raise CLIError(f"--limit must be >= 0 (0 = all), got {args.limit}")
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    if args.ar_model is not None and not (Path(args.ar_model) / "config.json").is_file():
        raise CLIError(f"--ar-model: {args.ar_model} is not a checkpoint directory (no config.json)")
    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise CLIError(f"--plot: {args.plot!r} must end in .png, .svg or .pdf")
    if args.reference_code is not None:
        from ..benchmarking.reference import check_python, check_reference_code

        check_reference_code(args.reference_code)
        check_python(args.reference_python)
    common.check_model_arguments(args)


def checkpoint_threshold(model_dir: Path | None) -> float:
    """The threshold a checkpoint directory's config.json names (the one its decoding was chosen
    with), else Fast-dLLM v2's; a config that cannot be read counts as naming none (loading reports it)."""
    if model_dir is None:
        return FALLBACK_THRESHOLD
    try:  # the same check as loading (model.config.parse_threshold)
        value = parse_threshold(json.loads((model_dir / "config.json").read_text()).get("threshold"))
    except (OSError, ValueError, AttributeError, UnsupportedModelError):
        value = None
    return FALLBACK_THRESHOLD if value is None else value


def ar_parent(model_dir: Path | None) -> Path | None:
    """``MODEL/ar_parent`` when it is a checkpoint directory (the default model ships its AR parent there)."""
    if model_dir is None:
        return None
    path = model_dir / AR_PARENT_DIR
    return path if (path / "config.json").is_file() else None


# ---- run ------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from ..benchmarking import BenchSettings, default_prompts, read_prompts_file, run_bench
    from ..benchmarking.report import plot, print_table, write_json
    from ..loading.hub import resolve

    args.model = args.model or common.default_model()
    model_path = resolve(args.model)  # a missing model is a user error before anything runs
    model_dir = model_path if model_path.is_dir() else None
    if args.prompts is not None:
        prompts, source = read_prompts_file(args.prompts), str(args.prompts)
    else:
        prompts, source = default_prompts(model_dir)
    if args.limit:
        prompts = prompts[:args.limit]
    ar_model = args.ar_model or ar_parent(model_dir)
    if args.thresholds is None:
        args.thresholds = [checkpoint_threshold(model_dir)]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    common.quiet_libraries()

    settings = BenchSettings(
        model=args.model, prompts=prompts, prompts_source=source, thresholds=args.thresholds,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        ar_model=str(ar_model) if ar_model else None, transformers=args.transformers,
        reference_code=args.reference_code, reference_python=args.reference_python,
        dtype=common.resolved_dtype(args), device=args.device, mask_token_id=args.mask_token_id, compile=args.compile,
        steps_per_sync=args.steps_per_sync, chat=args.chat, progress=args.progress)
    log = lambda msg: print(f"[{common.PROG}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    log(f"{len(prompts)} prompts from {source}; thresholds {', '.join(f'{t:g}' for t in args.thresholds)}; "
        f"batch sizes {', '.join(map(str, settings.batch_sizes))}")
    results = run_bench(settings, log=log)

    print_table(results)
    print(f"wrote {write_json(results, args.out)}")
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401  (an optional dependency: pip install matplotlib)
        except ImportError:
            log("no plot: matplotlib is not installed (pip install matplotlib)")
        else:
            print(f"wrote {plot(results, args.plot or Path(args.out).with_suffix('.png'))}")
    return 0
