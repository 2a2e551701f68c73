"""The model spread over processes: DDP or FSDP wrapping, gradient sync, full state dicts.

``Parallel`` hides which of plain / DDP / FSDP2 is in use from the trainer. Checkpoints and
exports always hold full (unsharded) tensors under the model's own names, so a run can
resume with or without FSDP and the export is the same either way.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .config import TrainConfigError
from .distributed import Layout


class Parallel:
    def __init__(self, objective: nn.Module, layout: Layout, fsdp: bool, lora: bool):
        self.objective, self.model = objective, objective.model
        self.fsdp = fsdp and layout.distributed
        self.lora = lora
        self.module = self._wrap(objective, layout)

    def _wrap(self, module: nn.Module, layout: Layout) -> nn.Module:
        if not layout.distributed:
            return module
        if self.fsdp:
            if self.lora:
                raise TrainConfigError("--fsdp with --lora is not supported; use DDP (drop --fsdp) for LoRA")
            from torch.distributed.fsdp import fully_shard

            for layer in self.model.layers:
                fully_shard(layer)
            return fully_shard(module)
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = layout.device
        return DDP(module, device_ids=[dev.index] if dev.type == "cuda" else None)

    def __call__(self, batch) -> torch.Tensor:
        return self.module(batch)

    def sync(self, on: bool):
        """Context for one micro-batch: gradients are all-reduced only when ``on`` (the last one)."""
        m = self.module
        if hasattr(m, "set_requires_gradient_sync"):  # FSDP2
            m.set_requires_gradient_sync(on)
        elif not on and hasattr(m, "no_sync"):  # DDP
            return m.no_sync()
        return contextlib.nullcontext()

    # ---- full state dicts (collective under FSDP) --------------------------------------------
    def model_state(self) -> dict:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            sd = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return {k.removeprefix("model."): v for k, v in sd.items()}
        sd = self.model.state_dict()
        return {k: v for k, v in sd.items() if "lora_" in k} if self.lora else sd

    def optim_state(self, optimizer: torch.optim.Optimizer) -> dict:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(self.module, optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return optimizer.state_dict()

    def load(self, model_state: dict, optimizer: torch.optim.Optimizer, optim_state: dict) -> None:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.module, {"model." + k: v for k, v in model_state.items()}, options=opts)
            set_optimizer_state_dict(self.module, optimizer, optim_state, options=opts)
            return
        self.model.load_state_dict(model_state, strict=not self.lora)
        optimizer.load_state_dict(optim_state)
