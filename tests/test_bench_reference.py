"""The reference benchmark's helpers: the opt-in one-line correction of the released generate."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fix_block_cache_inserts_the_reset_inside_the_block_loop():
    w = _load("reference_worker")
    src = ("def generate(self):\n    x = 1\n    for block_idx in range(num_blocks):\n"
           "        if done:\n            break\n    return x\n")
    out = w.fix_block_cache(src)
    lines = out.splitlines()
    assert lines[3] == "        block_past_key_values = None"
    assert out.replace("        block_past_key_values = None\n", "") == src
    ns: dict = {}
    exec(compile(out, "patched", "exec"), ns)  # still valid Python
    with pytest.raises(SystemExit, match="found 0"):
        w.fix_block_cache("def generate(self):\n    pass\n")
    with pytest.raises(SystemExit, match="found 2"):
        w.fix_block_cache(src + src)
