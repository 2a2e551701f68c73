"""Forward backends: how the engine's packed forwards run, chosen once when the engine is built.

The model maps ids + positions + an attention callable to hidden states, and hidden states to
logits (``fastdllm.model``); it does not know where its forwards run. A backend does: the engine's
runner holds one, picked by ``select_backend`` from the model and the runtime options
(``fastdllm.options.RuntimeOptions``, built by ``fastdllm.load``), and calls ``forward`` for every
packed step and ``greedy_run`` for a run of greedy AR steps. The backend hands the options'
kernel switches (oneDNN, compiled regions) to the model's linear layers (``kernels.onednn.bind``).

- ``TorchBackend``: the model's own layers in PyTorch, eager, or as compiled regions for decode
  steps of a few tokens where the compiled path is on (``fastdllm.kernels.compiled``).
- ``NativeStackBackend``: a quantised (int8/int4) float32 model on the CPU, every decoder layer of
  a forward in one C++ call (``fastdllm.kernels.stack``), and greedy AR runs with their vocabulary
  projection and picks in one call too.

A backend that cannot take a particular call (autograd on, attention that is not over the
engine's packed pool, a layer that left the native kernels) runs it as ``TorchBackend`` would:
these fallback rules live here, not in the model, and each reason is logged once and counted
(``fallbacks``). Every forward passes ``forward`` or ``greedy_run`` here, so the backend is where
the timing hooks are called and the forwards counted (``hooks.py``: ``hooks``, ``counters``).
Room is left for a CUDA-graph backend wrapping one of these.
"""

from __future__ import annotations

import logging

import torch

from ..errors import ModelLoadError
from ..kernels import native, onednn
from ..kernels import stack as native_stack
from ..kernels.compiled import CompiledKernels
from ..model import Transformer
from ..model.attention import AttentionFn
from ..model.transformer import LayerRunner
from ..options import RuntimeOptions
from .hooks import EngineHooks, PerfCounters
from .packed_attention import PackedAttention

log = logging.getLogger(__name__)


class TorchBackend:
    """The model's layers in PyTorch: eager, or compiled regions for decode steps where they apply."""

    name = "torch"
    reads_row_tables = False  # only a native stack reads ``PackedAttention.row_table``

    def __init__(self, model: Transformer, options: RuntimeOptions | None = None, reason: str = ""):
        self.model = model
        self.options = options or RuntimeOptions()
        self.reason = reason  # why this backend was chosen (reported once, ``describe``)
        self.fallbacks: dict[str, int] = {}  # calls a backend could not take itself, by reason
        self.hooks = EngineHooks()  # no-op unless replaced (``Engine.hooks``)
        self.counters = PerfCounters()
        self.compiled = CompiledKernels(self.options.compile)
        onednn.bind(model, self.options.onednn, self.compiled if self.compiled.enabled else None)
        if self.compiled.enabled and any(hasattr(m, "lora_A") for m in model.modules()):
            log.warning("fastdllm: unmerged LoRA layers are bypassed by the compiled decode path; "
                        "load with merge=True")

    def describe(self) -> str:
        return self.name + (f" ({self.reason})" if self.reason else "")

    def fall_back(self, why: str) -> None:
        """Count a call this backend hands to the eager path; say why the first time."""
        if why not in self.fallbacks:
            log.info("fastdllm: %s backend: a forward runs eagerly: %s", self.name, why)
        self.fallbacks[why] = self.fallbacks.get(why, 0) + 1

    def layer_runner(self, input_ids: torch.Tensor) -> LayerRunner | None:
        """The compiled decode regions where they apply to this forward, else None (the model's eager
        layers). They apply to float32 inference on the CPU of at most ``compiled.MAX_ROWS`` tokens."""
        m = self.model
        if m.quantization is not None or not self.compiled.applies_to_tokens(input_ids.numel(), m.dtype, m.device):
            return None
        n_q, n_kv = m.cfg.num_attention_heads, m.cfg.num_key_value_heads

        def run(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: AttentionFn) -> torch.Tensor:
            return self.compiled.decode_layers(m.layers, x, cos, sin, attend, n_q, n_kv)  # [B, T, hidden]
        return run

    def run_hidden(self, input_ids: torch.Tensor, positions: torch.Tensor,
                   attend: AttentionFn) -> tuple[torch.Tensor, str]:
        """input_ids, positions [B, T] -> (hidden states [B, T, hidden], the path that computed them)."""
        layers = self.layer_runner(input_ids)
        hidden = self.model.hidden_states(input_ids, positions, self.hooks.wrap_attention(attend), layers)
        return hidden, "eager" if layers is None else "compiled"

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attend: AttentionFn,
                logits_rows: torch.Tensor | None = None) -> torch.Tensor:
        """One packed forward: input_ids, positions [1, N] -> logits [R, vocab] of ``logits_rows`` (all when None)."""
        n = input_ids.numel()
        self.hooks.forward_start(n)
        hidden, path = self.run_hidden(input_ids, positions, attend)  # [1, N, hidden]
        logits = self.model.logits(hidden, logits_rows)  # [R, vocab]
        self.counters.count_forward(1, path)
        self.hooks.forward_end(n, 1, path)
        return logits

    def greedy_runner(self, attend: AttentionFn):
        """A callable running greedy AR forwards in one call over ``attend``'s pool, or None where
        this backend has none (the runner then runs the forwards one by one)."""
        return None

    def greedy_run(self, input_ids: torch.Tensor, positions: torch.Tensor, attend: AttentionFn, steps: int,
                   excluded: int | None) -> torch.Tensor | None:
        """``steps`` greedy AR forwards, each fed the last one's picks (the first maximum of the logits
        but column ``excluded``), in one call: input_ids, positions [1, N] of the first -> tokens
        [steps, N]; None where this backend has no such call."""
        run = self.greedy_runner(attend)
        if run is None:
            return None
        n = input_ids.numel()
        self.hooks.forward_start(n)
        out = run(input_ids, positions, attend, steps, excluded)  # [steps, N]
        self.counters.count_forward(steps, self.name)
        self.hooks.forward_end(n, steps, self.name)
        return out


class NativeStackBackend(TorchBackend):
    """A quantised model's forwards in fastdllm's C++ layer stack (``kernels/stack.py``).

    The stack holds the packed weights it was built from: it is built on first use and rebuilt
    when the model says its weights changed (``Transformer.weights_changed``).
    """

    name = "native-stack"
    reads_row_tables = True

    def __init__(self, model: Transformer, options: RuntimeOptions | None = None, reason: str = ""):
        super().__init__(model, options, reason)
        self.built_for: int | None = None  # the model's weights_version the stack was built from
        self.stack = None

    def current_stack(self):
        """The C++ stack for the model's current weights, or None (the reason counted as a fallback)."""
        if self.built_for != self.model.weights_version:
            self.built_for = self.model.weights_version
            self.stack = native_stack.build(self.model)
        if self.stack is None:
            self.fall_back(native_stack.unsupported(self.model) or "the stack could not be built")
        return self.stack

    def stack_for(self, attend: AttentionFn):
        """The stack where this call can take it, else None: it needs inference mode and attention
        over the engine's packed pool (which says where each row's keys live: ``row_table``)."""
        if torch.is_grad_enabled():
            self.fall_back("autograd is on")
            return None
        if self.model.device.type != "cpu" or self.model.dtype != torch.float32:
            self.fall_back("the model left float32 on the CPU")
            return None
        if not isinstance(attend, PackedAttention):
            self.fall_back(f"attention is {type(attend).__name__}, not over the packed pool")
            return None
        return self.current_stack()

    def run_hidden(self, input_ids: torch.Tensor, positions: torch.Tensor,
                   attend: AttentionFn) -> tuple[torch.Tensor, str]:
        stack = self.stack_for(attend)
        if stack is None:
            return super().run_hidden(input_ids, positions, attend)
        x = self.model.embed_tokens(input_ids)  # [B, T, hidden]
        B, T, H = x.shape
        # rotary embedding, every layer and the final norm in one C++ call
        hidden = stack.forward(x.view(B * T, H), positions, attend.cache.data, attend.row_table())  # [B*T, hidden]
        return hidden.view(B, T, H), self.name

    def greedy_runner(self, attend: AttentionFn):
        """Embedding, layers, vocabulary projection and the greedy pick of several forwards in one C++
        call (``QuantStack.greedy_run``); None where the stack or a native vocabulary projection is not there."""
        emb = self.model.embed_tokens.weight
        stack = self.stack_for(attend)
        if stack is None:
            return None
        head = native_stack.head_tensors(self.model)
        if head is None or not emb.is_contiguous():
            self.fall_back("the vocabulary projection is not on a native kernel")
            return None

        def run(input_ids, positions, attend, steps: int, excluded: int | None) -> torch.Tensor:
            return stack.greedy_run(input_ids.reshape(-1), positions.reshape(-1), attend.cache.data,
                                    attend.row_table(), steps, emb, *head, -1 if excluded is None else excluded)
        return run


ForwardBackend = TorchBackend  # the interface every backend implements


def select_backend(model: Transformer, options: RuntimeOptions | None = None) -> ForwardBackend:
    """The backend for ``model``'s engine forwards under ``options`` (defaults when None), with the
    reason for the choice (``backend.describe()``)."""
    options = options or RuntimeOptions()
    if options.native == "on" and model.quantization is not None and not native.available():
        raise ModelLoadError(f"native='on' but fastdllm's native kernels cannot run: {native.why_unavailable()}")
    why = "quant_stack=off" if not options.quant_stack else native_stack.unsupported(model)
    if why is None:
        return NativeStackBackend(model, options, "int8/int4 layers on the native kernels")
    if model.quantization is not None:  # a quantised model that could have taken the stack: say why not
        return TorchBackend(model, options, f"no native stack: {why}")
    return TorchBackend(model, options, "compiled decode regions" if options.compile else "")
