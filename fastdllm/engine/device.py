"""Host-device transfers of the engine's step: metadata up, results down.

A step sends small integer tensors (token ids, positions, KV rows, segment tables) to the
device before its forward, and reads its decisions back once after it. On CUDA an upload from
pageable memory waits for the device to finish its queued work, so uploads go through pinned
memory without blocking; ``download`` is the step's one synchronising read.
"""

from __future__ import annotations

import torch


def upload(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``values`` (a list, possibly nested) as a tensor on ``device``, without waiting for the device."""
    t = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t if device.type == "cpu" else t.to(device)


def download(t: torch.Tensor) -> list:
    """The tensor's values on the host (waits for the device: call it once per step)."""
    return t.tolist()
