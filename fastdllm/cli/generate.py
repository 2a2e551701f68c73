"""``fastdllm generate``: generate a completion for one prompt, optionally with a live view."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from ..engine.acceptance import RULES
from ..engine.options import (DEFAULTS, FALLBACK_THRESHOLD, DecodeOptions, block_sizes, checkpoint_block_sizes,
                               context_cap, merge)
from ..errors import InvalidRequestError
from . import common
from .common import CLIError

MASK_GLYPH = "░"

EXAMPLES = """\
examples:
  fastdllm generate "What is the capital of France?"
  fastdllm generate --model Efficient-Large-Model/Fast_dLLM_v2_1.5B --stream "Why is the sky blue?"
  echo "Tell me a joke" | fastdllm generate --json -
  fastdllm generate --model ./tiny --prompt-ids 1,2,3 --mask-token-id 2047
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate", help="generate text for a prompt",
        description="Generate a completion for one prompt. The text goes to stdout, a stats line to stderr.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="?", help="the prompt text, or - to read it from stdin")
    p.add_argument("--prompt-ids", metavar="IDS",
                   help="the prompt as token ids instead of text, e.g. '1,2,3' (for checkpoints without a tokenizer)")
    common.add_model_arguments(p)

    d = p.add_argument_group("decoding")
    d.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens, metavar="N",
                   help="maximum number of generated tokens (default: %(default)s)")
    d.add_argument("--ar", action="store_true",
                   help="plain autoregressive decoding, one token per forward (default for non-diffusion models)")
    d.add_argument("--threshold", type=float,
                   help="confidence a masked token needs to be decoded in parallel, in [0, 1] (default: the "
                        f"checkpoint's threshold, else {FALLBACK_THRESHOLD:g})")
    d.add_argument("--acceptance", choices=RULES,
                   help="which confident positions a forward keeps: 'threshold' (Fast-dLLM v2: every one over "
                        "the threshold, and the most confident), 'prefix' (the leftmost masked one and the run "
                        "after it, each over the threshold), 'joint' (the leftmost and the run whose product of "
                        "confidences stays over it) (default: the checkpoint's, else threshold)")
    d.add_argument("--block-size", type=int, metavar="N", help="diffusion block size (default: the checkpoint's bd_size)")
    d.add_argument("--small-block-size", type=int, metavar="N",
                   help="sub-block size; must divide the block size (default: the checkpoint's small_block_size, "
                        f"else {checkpoint_block_sizes(None, None)[1]})")
    d.add_argument("--use-block-cache", action="store_true", help="reuse the block's KV cache across its sub-blocks")
    d.add_argument("--temperature", type=float, default=DEFAULTS.temperature, help="sampling temperature; 0 is greedy (default: %(default)s)")
    d.add_argument("--top-p", type=float, default=DEFAULTS.top_p, help="nucleus sampling mass, in (0, 1] (default: %(default)s)")
    d.add_argument("--top-k", type=int, default=DEFAULTS.top_k, help="sample among the k most likely tokens; 0 = all (default: %(default)s)")
    d.add_argument("--seed", type=int, help="random seed for sampling")
    d.add_argument("--stop", action="append", metavar="TEXT", help="stop when this text is generated (repeatable)")
    d.add_argument("--stop-token-id", action="append", type=int, metavar="ID",
                   help="stop at this token id (repeatable; default: the checkpoint's EOS ids)")

    i = p.add_argument_group("prompt and output")
    i.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                   help="wrap the prompt in the tokenizer's chat template (default: on)")
    i.add_argument("--system", metavar="TEXT", help="system message for the chat template")
    i.add_argument("--stream", action="store_true",
                   help="show decoding live (plain text increments when stdout is not a terminal)")
    i.add_argument("--json", action="store_true", help="print the result as a JSON object instead of text")
    i.add_argument("--plot", metavar="FILE",
                   help="save a picture of the decoding (which forward pass decoded each token) to FILE "
                        "(.png, .svg or .pdf)")
    i.add_argument("-v", "--verbose", action="store_true",
                   help="say on stderr, before decoding, how the model runs (dtype, quantisation and the kernel "
                        "of its products, the forward's backend) and how it decodes (each setting and where it "
                        "came from: a flag or the checkpoint)")
    return p


def describe_setup(llm, params, opts) -> list[str]:
    """What ``--verbose`` prints: how the loaded model runs and how it will decode, each decoding
    setting with its source (a flag, else the checkpoint's config, else fastdllm's default)."""
    from ..kernels import cpu_info
    from ..quant import Int8Linear

    model = llm.model
    a8 = any(m.activations == "int8" for m in model.modules() if isinstance(m, Int8Linear))
    quant = model.quantization or "none"
    if a8:
        isa = cpu_info.w8a8_isa()
        quant += f", int8 activations (W8A8 on {isa}: {cpu_info.W8A8_HOW[isa].strip('()')})"
    elif model.quantization:
        quant += ", float32 activations (weight-only)"
    lines = [f"model: {llm.checkpoint.path}, {'block diffusion' if llm.is_block_diffusion else 'autoregressive'}, "
             f"{str(model.dtype).replace('torch.', '')}, quantisation {quant}",
             f"forward: {llm.engine.backend.describe()}"]
    given = {k for k, v in vars(opts).items() if v is not None}  # a flag given: DecodeOptions leaves None otherwise
    cfg = llm.config

    def source(flag: str, in_config: bool) -> str:
        return "flag" if flag in given else ("checkpoint" if in_config else "default")

    if params.mode == "ar":
        why = "flag" if "mode" in given else "an autoregressive checkpoint"
        lines.append(f"decoding: autoregressive, one token a forward ({why})")
    else:
        lines.append("decoding: block diffusion, "
                     f"block {params.block_size} ({source('block_size', cfg.bd_size is not None)}), "
                     f"sub-block {params.small_block_size} "
                     f"({source('small_block_size', cfg.small_block_size is not None)}), "
                     f"threshold {params.threshold:g} ({source('threshold', cfg.threshold is not None)}), "
                     f"acceptance {params.acceptance} ({source('acceptance', cfg.acceptance is not None)}), "
                     f"sub-block cache {'on (flag)' if params.use_block_cache else 'off (default)'}")
    return [f"[{common.PROG}] {line}" for line in lines]


# ---- validation (before loading anything) ---------------------------------------------------

# the DecodeOptions fields the flags set; every other flag is named after its field
FLAGS = {"stop_token_ids": "--stop-token-id", "mode": "--ar"}


def flag_error(e: InvalidRequestError) -> CLIError:
    """The schema's message with its field names spelt as the flags that set them."""
    names = "|".join(sorted(DecodeOptions.__dataclass_fields__, key=len, reverse=True))
    return CLIError(re.sub(rf"(?<![\w-])({names})(?!\w)",
                           lambda m: FLAGS.get(m.group(1), "--" + m.group(1).replace("_", "-")), str(e)))


def decode_options(args: argparse.Namespace) -> DecodeOptions:
    """The flags as ``DecodeOptions`` (argparse's defaults are the schema's), checked."""
    given = dict(
        max_new_tokens=args.max_new_tokens, threshold=args.threshold, acceptance=args.acceptance,
        block_size=args.block_size,
        small_block_size=args.small_block_size, use_block_cache=args.use_block_cache or None,
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
        stop_token_ids=args.stop_token_id, stop=args.stop, mask_token_id=args.mask_token_id,
        mode="ar" if args.ar else None)
    try:
        return merge(given).validate()
    except InvalidRequestError as e:
        raise flag_error(e) from None


def check_arguments(args: argparse.Namespace) -> None:
    decode_options(args)
    for s in args.stop or []:
        if not s:
            raise CLIError("--stop needs a non-empty text")
    if args.stream and args.json:
        raise CLIError("--stream and --json cannot be combined")
    if args.plot and args.stream:
        raise CLIError("--plot and --stream cannot be combined")
    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise CLIError(f"--plot: {args.plot!r} must end in .png, .svg or .pdf")
    if args.system is not None and (not args.chat or args.prompt_ids is not None):
        raise CLIError("--system needs a chat prompt (not --no-chat or --prompt-ids)")
    common.check_model_arguments(args)


def read_prompt(args: argparse.Namespace) -> str | list[int]:
    """The prompt text (``-`` reads stdin) or the ids of --prompt-ids."""
    if args.prompt is not None and args.prompt_ids is not None:
        raise CLIError("give either a prompt or --prompt-ids, not both")
    if args.prompt_ids is not None:
        return parse_ids(args.prompt_ids)
    if args.prompt is None:
        raise CLIError("no prompt: pass the prompt text, - to read it from stdin, or --prompt-ids")
    text = args.prompt
    if text == "-":
        text = sys.stdin.read().rstrip("\r\n")
    if not text.strip():
        raise CLIError("empty prompt")
    return text


def parse_ids(spec: str) -> list[int]:
    parts = [p for p in re.split(r"[\s,]+", spec.strip().strip("[]")) if p]
    if not parts:
        raise CLIError("empty prompt: --prompt-ids has no token ids")
    ids = []
    for p in parts:
        try:
            tid = int(p)
        except ValueError:
            raise CLIError(f"--prompt-ids: {p!r} is not a token id (expected integers like '1,2,3')") from None
        if tid < 0:
            raise CLIError(f"--prompt-ids: token ids must be >= 0, got {tid}")
        ids.append(tid)
    return ids


def checkpoint_block_sizes_of(model: str | None) -> tuple[int | None, int | None] | None:
    """A local checkpoint directory's (bd_size, small_block_size), read from its config.json without
    loading it; None when it cannot be read."""
    if not model:
        return None
    try:
        directory = common.local_model_dir(model)
        if directory is None or not (directory / "config.json").is_file():
            return None
        cfg = json.loads((directory / "config.json").read_text())
        bd, sbs = cfg.get("bd_size"), cfg.get("small_block_size")
        return (int(bd) if bd else None), (int(sbs) if sbs else None)
    except (OSError, ValueError, TypeError, AttributeError):
        return None


# ---- run ------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    prompt = read_prompt(args)
    opts = decode_options(args)
    sizes = checkpoint_block_sizes_of(args.model or common.default_model())
    if sizes is not None:  # a block size the checkpoint's cannot take fails before loading
        try:
            block_sizes(opts, *sizes)
        except InvalidRequestError as e:
            raise flag_error(e) from None

    llm = common.load_model(args)
    try:
        params = llm.resolve(opts)
    except InvalidRequestError as e:
        raise flag_error(e) from None
    prompt_ids = encode_prompt(llm, prompt, args, context_cap(params, llm.config.max_position_embeddings))
    if args.verbose:
        print("\n".join(describe_setup(llm, params, opts)), file=sys.stderr, flush=True)
    mode = params.mode
    options = {**{k: v for k, v in vars(opts).items()}, "chat": False, "mode": mode}

    trace = None
    if args.stream:
        result = stream(llm, prompt_ids, options, mode)
    else:
        if args.plot:
            from ..visualize import record

            result, trace = record(llm, prompt_ids, **options)
        else:
            result = llm.generate(prompt_ids, **options)[0]
        if args.json:
            print(json.dumps(as_json(result, llm, args, mode), ensure_ascii=False))
        else:
            print(output_text(llm, result), flush=True)
    line = common.stats_line(result, mode)
    if mode == "diffusion":  # which rule decided: the checkpoint may set its own (config.json)
        line += f", threshold={params.threshold:g}, acceptance={params.acceptance}"
    print(line, file=sys.stderr, flush=True)
    if trace is not None:
        from ..visualize import plot_trace

        print(f"[{common.PROG}] wrote {plot_trace(trace, args.plot)}", file=sys.stderr, flush=True)
    return 0


def encode_prompt(llm, prompt: str | list[int], args: argparse.Namespace, context: int) -> list[int]:
    """Token ids of the prompt (chat template applied), checked against the model's context."""
    if isinstance(prompt, str):
        if llm.tokenizer is None:
            raise CLIError("this model has no tokenizer: pass the prompt as token ids with --prompt-ids 1,2,3")
        if args.system is not None:
            if not getattr(llm.tokenizer, "chat_template", None):
                raise CLIError("--system needs a chat template, and this model's tokenizer has none")
            prompt = [{"role": "system", "content": args.system}, {"role": "user", "content": prompt}]
    ids = llm.encode(prompt, chat=args.chat)
    if not ids:
        raise CLIError("empty prompt: it encodes to no tokens")
    if len(ids) >= context:
        raise CLIError(f"the prompt has {len(ids)} tokens but the model's context holds {context}; "
                       f"shorten the prompt")
    return ids


def output_text(llm, result) -> str:
    if llm.tokenizer is None:  # token-id checkpoints: print the generated ids
        return " ".join(map(str, result.token_ids))
    return result.text


def as_json(result, llm, args, mode: str) -> dict:
    return {
        "model": str(args.model),
        "mode": mode,
        "text": result.text,
        "token_ids": result.token_ids,
        "finish_reason": result.finish_reason,
        "prompt_token_ids": result.prompt_token_ids,
        "stats": result.stats.as_dict(),
        "load_seconds": getattr(llm, "load_seconds", None),
    }


# ---- streaming ------------------------------------------------------------------------------

def stream(llm, prompt_ids: list[int], options: dict, mode: str, console=None):
    """Decode with ``llm.stream``: a rich live view on a terminal (diffusion mode), else plain increments.

    Returns the ``GenerationResult``; the final text is printed here, the stats line by the caller.
    """
    if console is None:
        live = mode == "diffusion" and llm.tokenizer is not None and sys.stdout.isatty()
        if not live:
            return stream_plain(llm, prompt_ids, options)
        from rich.console import Console

        console = Console()
    return stream_live(llm, prompt_ids, options, console)


def _finish(llm, seq):
    # the same result ``LLM.generate`` builds from a finished sequence
    return llm.result(seq)


def shown_text(seq, tokenizer) -> str:
    """Committed text that is safe to print now (a stop string's possible start is held back)."""
    detok = getattr(seq, "detok", None)
    if detok is not None and hasattr(detok, "stable_text"):
        return detok.stable_text(seq.finished)
    text = tokenizer.decode(seq.output, skip_special_tokens=True)
    return text if seq.finished else text.rstrip("\ufffd")


def stream_plain(llm, prompt_ids: list[int], options: dict):
    """Print the committed output as it grows (text, or token ids for tokenizer-less models)."""
    out = sys.stdout
    printed, n_ids, seq = "", 0, None
    for event in llm.stream(prompt_ids, **options):
        seq = event.sequences.get(0, seq)
        if seq is None:
            continue
        if llm.tokenizer is None:
            new = seq.output[n_ids:]
            if new:
                out.write((" " if n_ids else "") + " ".join(map(str, new)))
                out.flush()
                n_ids = len(seq.output)
            continue
        text = shown_text(seq, llm.tokenizer)
        if len(text) > len(printed) and text.startswith(printed):
            out.write(text[len(printed):])
            out.flush()
            printed = text
    result = _finish(llm, seq)
    if llm.tokenizer is not None and result.text.startswith(printed):
        out.write(result.text[len(printed):])
    out.write("\n")
    out.flush()
    return result


def stream_live(llm, prompt_ids: list[int], options: dict, console):
    """A rich ``Live`` view: committed text, the current block (masks as ░), and a step/NFE/TPF footer."""
    from rich.live import Live

    started = time.perf_counter()
    seq = None
    with Live(console=console, refresh_per_second=12, transient=True) as live:
        for event in llm.stream(prompt_ids, **options):
            seq = event.sequences.get(0, seq)
            row = next((r for r in event.rows if r.index == 0), None)
            if seq is None or row is None:
                continue
            live.update(render_view(llm, seq, row, event.step, time.perf_counter() - started, console,
                                    options.get("mask_token_id")))
    result = _finish(llm, seq)
    console.print(output_text(llm, result), markup=False, highlight=False, soft_wrap=True)
    return result


def render_view(llm, seq, row, step: int, elapsed: float, console=None, mask_token_id: int | None = None):
    """One frame of the live view (a rich renderable)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    tok = llm.tokenizer
    mask_id = mask_token_id if mask_token_id is not None else llm.mask_token_id
    committed = tok.decode(seq.output, skip_special_tokens=True) if tok is not None else \
        " ".join(map(str, seq.output))
    height = console.size.height if console is not None else 24
    width = console.size.width if console is not None else 80
    body = Text(_tail(committed, max(3, height - 8), width))

    block = Text()
    fresh = set(row.new_positions)
    gen_from = getattr(seq, "gen_from", 0)
    for i, t in enumerate(row.block):
        if i < gen_from:
            continue  # the end of the prompt shares the first block
        if t == mask_id:
            block.append(MASK_GLYPH, style="grey50")
            continue
        piece = tok.decode([t]) if tok is not None else f"[{t}]"
        piece = piece.replace("\n", "⏎").replace("\t", "→") or "·"
        style = "bold black on green" if row.block_start + i in fresh else "cyan"
        block.append(piece, style=style)
    n = len(seq.output)
    tpf = n / seq.nfe if seq.nfe else 0.0
    footer = Text(f"step {step} · NFE {seq.nfe} · TPF {tpf:.2f} · {n} tokens · {elapsed:.1f} s", style="dim")
    title = f"block @ {row.block_start}" if row.block else "block"
    return Group(body, Panel(block, title=title, title_align="left", border_style="blue"), footer)


def _tail(text: str, max_lines: int, width: int) -> str:
    """The end of ``text`` that fits in about ``max_lines`` wrapped terminal lines."""
    lines = text.split("\n")
    kept, used = [], 0
    for line in reversed(lines):
        need = max(1, -(-len(line) // max(1, width)))
        if used + need > max_lines:
            if not kept:  # one very long line: keep its end
                kept.append("…" + line[-(max_lines * width - 1):])
            break
        kept.append(line)
        used += need
    return "\n".join(reversed(kept))
