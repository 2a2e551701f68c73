"""Runtime options: the switches of the kernels and the forward backend, explicit and frozen.

``fastdllm.load`` builds one ``RuntimeOptions`` (from its arguments, over the environment) and
hands it to the model's engine: the forward backend and the kernels it binds take their switches
from it, not from process-wide state, so two models loaded with different options in one process
keep them. ``llm.runtime`` is the effective value after load, and ``fastdllm kernels status``
prints the one the environment gives.

This is the one module of the library that reads environment variables (``cli/`` reads the
command line's own, such as ``FASTDLLM_MODEL``, and ``training/`` the launcher's). They apply
at the edge, as defaults of ``RuntimeOptions.from_env``:

- ``FASTDLLM_NATIVE=0``: ``native="off"`` (quantised layers on torch's kernels);
- ``FASTDLLM_QUANT_STACK=0``: ``quant_stack=False`` (no C++ layer stack);
- ``FASTDLLM_ONEDNN=0``: ``onednn=False`` (linear layers on ``F.linear``);
- ``FASTDLLM_COMPILE=1``: ``compile=True`` (the compiled decode regions);
- ``FASTDLLM_THREADS=N``: ``threads=N``;
- ``CXX``: the C++ compiler the native kernels are built with (``cxx_from_env``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

NATIVE_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class RuntimeOptions:
    """How a loaded model's forwards run. Changing one needs a new engine (a reload), not a new request."""

    native: str = "auto"       # fastdllm's int8/int4 C++ kernels: "auto" where they build, "on" (or fail), "off"
    quant_stack: bool = True   # a quantised model's layers in one C++ call (NativeStackBackend) where it applies
    onednn: bool = True        # float linear layers on oneDNN, weights prepacked (``kernels/onednn.py``)
    compile: bool = False      # the compiled decode regions (``kernels/compiled.py``): seconds once, faster steps
    threads: int | None = None  # torch's intra-op threads, set at load (process-wide by torch's design); None: leave

    def __post_init__(self):
        if self.native not in NATIVE_MODES:
            raise ValueError(f"native must be one of {NATIVE_MODES}, not {self.native!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "RuntimeOptions":
        """The defaults with the environment's switches applied, then ``overrides`` (None: not given)."""
        env = os.environ if environ is None else environ
        values: dict = {}
        if env.get("FASTDLLM_NATIVE", "") == "0":
            values["native"] = "off"
        if env.get("FASTDLLM_QUANT_STACK", "") == "0":
            values["quant_stack"] = False
        if env.get("FASTDLLM_ONEDNN", "") == "0":
            values["onednn"] = False
        if env.get("FASTDLLM_COMPILE", "") == "1":
            values["compile"] = True
        if env.get("FASTDLLM_THREADS", ""):
            values["threads"] = int(env["FASTDLLM_THREADS"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes) -> "RuntimeOptions":
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line: ``native=auto quant_stack=on onednn=on compile=off threads=default``."""
        def word(v):
            return "on" if v is True else "off" if v is False else "default" if v is None else str(v)
        return " ".join(f"{f.name}={word(getattr(self, f.name))}" for f in dataclasses.fields(self))


def cxx_from_env() -> str | None:
    """The C++ compiler named by ``CXX``, if any."""
    return os.environ.get("CXX") or None
