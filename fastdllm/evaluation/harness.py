"""fastdllm as an lm-evaluation-harness model: ``lm_eval`` model name ``fastdllm``.

    import fastdllm.evaluation.harness  # registers the model
    lm_eval.simple_evaluate(model="fastdllm", model_args="pretrained=DIR,threshold=0.9", tasks=[...])

or ``fastdllm eval`` (``fastdllm/cli/eval.py``). Generation tasks (``generate_until``) decode
with the engine, block diffusion by default for block-diffusion checkpoints, with the task's
``until`` strings as stop strings; ``mode=ar`` decodes autoregressively. Log-likelihood tasks
score continuations with a causal forward (``scoring.py``). Tokenization of context /
continuation pairs and the rolling windows of perplexity tasks follow lm-eval's own
HuggingFace model, so scores are comparable with ``--model hf`` on the same checkpoint.
The decoding statistics of generation requests (tokens, forward passes, TPF, tokens/s) are
kept in ``stats`` and reported by ``fastdllm eval``.
"""

from __future__ import annotations

import time
from collections import defaultdict

from lm_eval import utils as lm_utils
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from ..errors import InvalidRequestError
from .scoring import score_continuations

GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k", "seed"}


def _bool(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


@register_model("fastdllm")
class FastDLLMLM(LM):
    def __init__(self, pretrained: str | None = None, llm=None, dtype: str = "float32", device: str = "cpu",
                 batch_size: int | str = 8, max_gen_toks: int = 256, threshold: float | None = None,
                 acceptance: str | None = None,
                 block_size: int | None = None, small_block_size: int | None = None, use_block_cache: bool = False,
                 mode: str | None = None, mask_token_id: int | None = None, add_bos_token: bool = False,
                 compile: bool | None = None, progress: bool = True, quantize: str | None = "auto", **unknown):
        super().__init__()
        if unknown:
            raise InvalidRequestError(f"unknown fastdllm model_args: {', '.join(sorted(unknown))}")
        if llm is None:
            import fastdllm

            bs = 8 if batch_size in ("auto", None) else int(batch_size)
            llm = fastdllm.load(pretrained, dtype=dtype, device=device, max_batch_size=bs,
                                mask_token_id=None if mask_token_id is None else int(mask_token_id),
                                compile=None if compile is None else _bool(compile), quantize=quantize)
        if llm.tokenizer is None:
            raise InvalidRequestError("lm-eval needs a checkpoint with a tokenizer")
        self.llm = llm
        self.tokenizer = llm.tokenizer
        self.name = str(pretrained or "fastdllm")
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else llm.engine.max_batch_size
        self.max_gen_toks = int(max_gen_toks)
        self.add_bos_token = _bool(add_bos_token)
        self.progress = _bool(progress)
        self.decode_options = {"use_block_cache": _bool(use_block_cache)}  # threshold, rule: the checkpoint's
        if threshold is not None:
            self.decode_options["threshold"] = float(threshold)
        if acceptance is not None:
            self.decode_options["acceptance"] = str(acceptance)
        if small_block_size is not None:
            self.decode_options["small_block_size"] = int(small_block_size)
        if block_size is not None:
            self.decode_options["block_size"] = int(block_size)
        if mode is not None:
            self.decode_options["mode"] = mode
        self._device = llm.model.device
        self.stats = {"requests": 0, "generated_tokens": 0, "nfe": 0, "seconds": 0.0}

    # ---- tokenization, as lm-eval's HF model does it ----------------------------------------------
    @property
    def max_length(self) -> int:
        return self.llm.config.max_position_embeddings

    @property
    def prefix_token_id(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def tok_encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if self.add_bos_token and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id] + ids
        return list(ids)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if not context:
            return [self.prefix_token_id], self.tok_encode(continuation)
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:  # trailing spaces belong to the continuation's first token
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx):]

    # ---- chat templates -------------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return self.name.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) if chat_template is not False else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # ---- log-likelihood -------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*r.args) for r in requests]
        results = self._score(pairs, disable_tqdm, "loglikelihood")
        for r, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", r.args, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, r in enumerate(requests):
            (text,) = r.args
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((ctx, cont))
                owner.append(i)
        scores = self._score(windows, disable_tqdm, "loglikelihood_rolling")
        totals = [0.0] * len(requests)
        for i, (lp, _) in zip(owner, scores):
            totals[i] += lp
        for r, t in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, t)
        return totals

    def _score(self, pairs, disable_tqdm: bool, desc: str) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool]] = []
        step = max(1, self.batch_size) * 8
        with tqdm(total=len(pairs), desc=desc, disable=disable_tqdm or not self.progress) as bar:
            for i in range(0, len(pairs), step):
                out += score_continuations(self.llm.model, pairs[i:i + step], self.max_length, self.batch_size,
                                           pad_id=self.prefix_token_id)
                bar.update(len(pairs[i:i + step]))
        return out

    # ---- generation -------------------------------------------------------------------------------------
    def _generate_options(self, gen_kwargs: dict) -> dict:
        unknown = set(gen_kwargs) - GEN_KWARGS
        if unknown:
            raise InvalidRequestError(f"unsupported generation kwargs: {', '.join(sorted(unknown))}")
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        opts = dict(self.decode_options, max_new_tokens=int(gen_kwargs.get("max_gen_toks", self.max_gen_toks)),
                    stop=[u for u in until if u] or None)
        sample = _bool(gen_kwargs.get("do_sample", False))
        temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0)
        if sample and temperature > 0:
            opts.update(temperature=temperature, top_p=float(gen_kwargs.get("top_p", 1.0) or 1.0),
                        top_k=int(gen_kwargs.get("top_k", 0) or 0))
            if gen_kwargs.get("seed") is not None:
                opts["seed"] = int(gen_kwargs["seed"])
        return opts

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[repr(sorted(r.args[1].items()))].append(i)
        bar = tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm or not self.progress)
        for idx in groups.values():
            opts = self._generate_options(requests[idx[0]].args[1])
            budget = self.max_length - opts["max_new_tokens"]
            for b in range(0, len(idx), self.batch_size):
                chunk = idx[b:b + self.batch_size]
                # contexts cut from the left to leave room for the answer, as lm-eval's HF model does
                prompts = [self.tok_encode(requests[i].args[0])[-max(1, budget):] for i in chunk]
                t0 = time.perf_counter()
                results = self.llm.generate(prompts, **opts)
                self.stats["seconds"] += time.perf_counter() - t0
                for i, r in zip(chunk, results):
                    out[i] = r.text
                    self.stats["generated_tokens"] += len(r.token_ids)
                    self.stats["nfe"] += r.stats.nfe
                    self.stats["requests"] += 1
                    self.cache_hook.add_partial("generate_until", requests[i].args, r.text)
                bar.update(len(chunk))
        bar.close()
        return out  # type: ignore[return-value]

    def decoding_summary(self) -> dict:
        s = dict(self.stats)
        s["tpf"] = s["generated_tokens"] / s["nfe"] if s["nfe"] else 0.0
        s["tokens_per_second"] = s["generated_tokens"] / s["seconds"] if s["seconds"] else 0.0
        return s
