"""What a benchmark ran on: CPU model, threads, device and library versions (recorded with the numbers)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str | torch.device = "cpu") -> dict:
    import os

    import transformers

    from .. import __version__

    dev = torch.device(device)
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "device": str(dev),
            "torch": torch.__version__, "transformers": transformers.__version__, "fastdllm": __version__,
            "python": platform.python_version()}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info
