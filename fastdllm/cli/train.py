"""``fastdllm train``: fine-tune a model into a block-diffusion model (or train AR) from JSONL data.

The flags are generated from ``fastdllm.training.TrainConfig``: one flag per option, same
name with dashes. ``--config FILE`` (YAML or JSON) sets any of them; flags given on the
command line override the file. Under ``torchrun`` every process runs this command.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

from . import common

EXAMPLES = """\
examples:
  fastdllm train --model Qwen/Qwen2.5-0.5B-Instruct --data chat.jsonl --output-dir out --max-steps 1000
  fastdllm train --config train.yaml --lora --lr 1e-4
  fastdllm train --config train.yaml --resume
  torchrun --nproc_per_node 2 -m fastdllm.cli.main train --config train.yaml
"""

GROUPS = {"model": "model", "data": "data", "objective": "objective (block diffusion)",
          "recipe": "adaptation levers (block diffusion; all off by default)",
          "optimisation": "optimisation", "lora": "LoRA", "hardware": "hardware and scale-out", "output": "output"}
METAVARS = {"data": "FILE", "output_dir": "DIR", "device": "DEVICE", "model_config": "FILE"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..training.config import TrainConfig, default_of

    p = subparsers.add_parser(
        "train", help="train a block-diffusion model from a pretrained AR model",
        description="Fine-tune a model with the Fast-dLLM v2 block-diffusion recipe (or plain AR with "
                    "--objective ar). Every option can also be set in --config FILE.yaml|json (same names, "
                    "underscores or dashes); command-line flags override the file.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file of training options")
    groups = {key: p.add_argument_group(title) for key, title in GROUPS.items()}
    for f in fields(TrainConfig):
        meta = f.metadata
        kind = str(f.type)
        default = default_of(f)
        flag = "--" + f.name.replace("_", "-")
        help_text = meta["help"] + _default_text(default)
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if meta.get("choices"):
            kw.update(choices=meta["choices"], metavar="{" + ",".join(meta["choices"]) + "}")
        elif kind.startswith("bool"):
            kw["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("int"):
            kw.update(type=int, metavar="N")
        elif kind.startswith("float"):
            kw.update(type=float, metavar="X")
        elif kind.startswith("list"):
            kw.update(type=_csv, metavar="A,B")
        else:
            kw["metavar"] = METAVARS.get(f.name, "PATH")
        groups[meta["group"]].add_argument(flag, **kw)
    return p


def _default_text(default) -> str:
    if default is None:
        return ""
    if isinstance(default, bool):
        return f" (default: {'on' if default else 'off'})"
    if isinstance(default, list):
        return f" (default: {','.join(map(str, default)) or 'none'})"
    return f" (default: {default})"


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_config(args: argparse.Namespace):
    """The file's options (if any), overridden by the flags given on the command line."""
    from ..training.config import TrainConfig, read_config_file

    values = read_config_file(args.config) if args.config else {}
    names = {f.name for f in fields(TrainConfig)}
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return TrainConfig.from_dict(values).validate()


def run(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    common.quiet_libraries()
    from ..training import train

    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[{common.PROG}] {result.steps} steps, loss {result.loss:.4f}, {result.tokens_per_s:,.0f} tok/s, "
              f"{result.seconds:.1f} s -> {result.output_dir}", file=sys.stderr, flush=True)
    return 0
