"""``fastdllm eval``: run lm-evaluation-harness tasks on a model decoded by fastdllm."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..engine.acceptance import RULES
from ..engine.options import DecodeOptions
from . import common
from .common import CLIError

EXAMPLES = """\
examples:
  fastdllm eval --model Efficient-Large-Model/Fast_dLLM_v2_1.5B --tasks gsm8k --limit 100 --apply-chat-template
  fastdllm eval --model ./my-bd-model --tasks my_task --include-path ./tasks --threshold 0.7 --output results.json
  fastdllm eval --model ./my-bd-model --tasks hellaswag --num-fewshot 0 --batch-size 16
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help="evaluate on lm-evaluation-harness tasks",
        description="Evaluate a model on lm-evaluation-harness tasks (generation tasks decode with fastdllm's "
                    "engine, block diffusion by default for block-diffusion checkpoints; log-likelihood tasks "
                    "score with a causal forward). Prints lm-eval's table and the decoding statistics.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_arguments(p)
    t = p.add_argument_group("tasks")
    t.add_argument("--tasks", required=True, help="comma-separated lm-eval task or group names")
    t.add_argument("--include-path", metavar="DIR", help="directory of extra task YAML files")
    t.add_argument("--limit", type=float, help="examples per task (a fraction if < 1)")
    t.add_argument("--num-fewshot", type=int, metavar="K", help="few-shot examples (default: the task's)")
    t.add_argument("--apply-chat-template", action="store_true", help="format prompts with the chat template")
    t.add_argument("--fewshot-as-multiturn", action="store_true", help="few-shot examples as chat turns")
    t.add_argument("--system-instruction", metavar="TEXT", help="system message for every prompt")
    t.add_argument("--seed", type=int, default=0, help="seed for few-shot sampling and sampling (default: 0)")
    t.add_argument("--batch-size", type=int, default=8, metavar="N", help="sequences per batch (default: 8)")
    d = p.add_argument_group("decoding (generation tasks)")
    d.add_argument("--ar", action="store_true", help="decode autoregressively")
    d.add_argument("--threshold", type=float,
                   help="confidence threshold in [0, 1] (default: the checkpoint's, else 0.9)")
    d.add_argument("--acceptance", choices=RULES,
                   help="accept rule (see fastdllm generate --help; default: the checkpoint's, else threshold)")
    d.add_argument("--block-size", type=int, metavar="N", help="block size (default: the checkpoint's bd_size)")
    d.add_argument("--small-block-size", type=int, metavar="N",
                   help="sub-block size (default: the checkpoint's small_block_size, else 8)")
    d.add_argument("--use-block-cache", action="store_true", help="reuse the block's KV across its sub-blocks")
    d.add_argument("--max-gen-toks", type=int, default=256, metavar="N",
                   help="tokens to generate when the task does not say (default: 256)")
    o = p.add_argument_group("output")
    o.add_argument("--output", metavar="FILE", help="write results, config and decoding statistics as JSON")
    o.add_argument("--log-samples", action="store_true", help="include every sample's prompt and output in --output")
    return p


def check_arguments(args: argparse.Namespace) -> None:
    if not [t for t in args.tasks.split(",") if t.strip()]:
        raise CLIError("--tasks is empty")
    if args.limit is not None and args.limit <= 0:
        raise CLIError(f"--limit must be positive, got {args.limit}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise CLIError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if args.batch_size <= 0:
        raise CLIError(f"--batch-size must be positive, got {args.batch_size}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise CLIError(f"--threshold must be in [0, 1], got {args.threshold}")
    sbs = args.small_block_size
    if (sbs is not None and sbs <= 0) or (args.block_size is not None and
                                          (args.block_size <= 0 or (sbs and args.block_size % sbs))):
        raise CLIError("--small-block-size must be positive and divide --block-size")
    if args.max_gen_toks <= 0:
        raise CLIError(f"--max-gen-toks must be positive, got {args.max_gen_toks}")
    if args.include_path and not Path(args.include_path).is_dir():
        raise CLIError(f"--include-path: {args.include_path} is not a directory")
    common.check_model_arguments(args)


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import make_table
    except ImportError:
        raise CLIError("evaluation needs lm-evaluation-harness: pip install 'fastdllm[eval]'") from None
    from ..evaluation.harness import FastDLLMLM

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    manager = TaskManager(include_path=args.include_path)
    missing = [t for t in tasks if not manager.match_tasks([t])]
    if missing:
        raise CLIError(f"unknown task(s): {', '.join(missing)} (see 'lm-eval ls tasks', or --include-path "
                       f"for your own YAML tasks)")

    llm = common.load_model(args, max_batch_size=args.batch_size)
    lm = FastDLLMLM(llm=llm, pretrained=args.model, batch_size=args.batch_size, max_gen_toks=args.max_gen_toks,
                    threshold=args.threshold, acceptance=args.acceptance, block_size=args.block_size,
                    small_block_size=args.small_block_size,
                    use_block_cache=args.use_block_cache, mode="ar" if args.ar else None)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=manager, num_fewshot=args.num_fewshot, limit=args.limit,
        apply_chat_template=args.apply_chat_template, fewshot_as_multiturn=args.fewshot_as_multiturn,
        system_instruction=args.system_instruction, log_samples=args.log_samples, random_seed=args.seed,
        numpy_random_seed=args.seed, torch_random_seed=args.seed, fewshot_random_seed=args.seed)
    if results is None:
        return 0
    print(make_table(results))
    summary = lm.decoding_summary()
    if args.ar or not llm.is_block_diffusion:
        mode = "ar"
    else:
        p = llm.resolve(DecodeOptions(threshold=args.threshold, acceptance=args.acceptance))
        mode = f"diffusion, threshold {p.threshold:g}, {p.acceptance} rule"
    if summary["requests"]:
        print(f"[{common.PROG}] generation ({mode}): {summary['requests']} requests, "
              f"{summary['generated_tokens']} tokens, NFE {summary['nfe']}, TPF {summary['tpf']:.2f}, "
              f"{summary['tokens_per_second']:.1f} tok/s", file=sys.stderr)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {k: results[k] for k in ("results", "groups", "configs", "versions", "n-shot", "n-samples")
                   if k in results}
        payload["fastdllm"] = {"model": args.model, "decoding": mode, "generation": summary}
        if args.log_samples:
            payload["samples"] = results.get("samples", {})
        out.write_text(json.dumps(payload, indent=2, default=str))
        print(f"[{common.PROG}] wrote {out}", file=sys.stderr)
    return 0
