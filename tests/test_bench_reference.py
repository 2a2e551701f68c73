"""The reference benchmark's helpers: telling the release from a fork that carries the sub-block cache over."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fastdllm.benchmarking import reference_worker as w


FORK = ("def generate(self):\n    x = 1\n    for block_idx in range(num_blocks):\n"
        "        if done:\n            break\n        while True:\n            step()\n    return x\n")
RELEASE = FORK.replace("range(num_blocks):\n", "range(num_blocks):\n        block_past_key_values = None\n")


def test_the_release_is_told_from_a_fork_that_carries_the_cache_over():
    assert w.resets_block_cache(RELEASE)
    assert not w.resets_block_cache(FORK)
    # a reset inside the step loop, or after the block loop, is not the release's per-block reset
    assert not w.resets_block_cache(FORK.replace("            step()\n",
                                                 "            step()\n            block_past_key_values = None\n"))
    assert not w.resets_block_cache(FORK + "block_past_key_values = None\n")


def test_restore_block_reset_puts_the_line_back_inside_the_block_loop():
    out = w.restore_block_reset(FORK)
    assert out == RELEASE and w.resets_block_cache(out)
    assert w.restore_block_reset(RELEASE) == RELEASE  # the release is left as it is
    exec(compile(out, "patched", "exec"), {})  # still valid Python
    with pytest.raises(SystemExit, match="found 0"):
        w.restore_block_reset("def generate(self):\n    pass\n")
    with pytest.raises(SystemExit, match="found 2"):
        w.restore_block_reset(FORK + FORK)


def test_the_worker_imports_nothing_from_fastdllm():
    """It runs under the released code's transformers (4.53), where fastdllm may not import."""
    tree = ast.parse(Path(w.__file__).read_text())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += ["." * n.level + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert "torch" in modules and "__future__" in modules
    assert not [m for m in modules if m.startswith((".", "fastdllm"))]


def test_a_prompt_of_exactly_one_block_is_the_one_the_release_skips():
    from fastdllm.benchmarking.reference import release_skips_prompt

    # the release prefills prompts longer than a block and pads shorter ones into the first block
    assert [release_skips_prompt(n, 32) for n in (5, 31, 32, 33, 64)] == [False, False, True, False, False]
    assert release_skips_prompt(16, 16) and not release_skips_prompt(32, 16)
