"""The reference benchmark's helpers: the opt-in one-line correction of the released generate."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fastdllm.benchmarking import reference_worker as w


def test_fix_block_cache_inserts_the_reset_inside_the_block_loop():
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


def test_the_worker_imports_nothing_from_fastdllm():
    """It runs under the released code's transformers (4.53), where fastdllm may not import."""
    tree = ast.parse(Path(w.__file__).read_text())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += ["." * n.level + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert "torch" in modules and "__future__" in modules
    assert not [m for m in modules if m.startswith((".", "fastdllm"))]
