"""The decoding trace and its picture: the trace must agree with the generation it records."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fastdllm
from fastdllm.visualize import plot_trace, record
from tests.helpers import make_tiny_checkpoint


@pytest.fixture(scope="module")
def bd(tmp_path_factory):
    d = make_tiny_checkpoint(tmp_path_factory.mktemp("vis") / "m", "fast_dllm", vocab=300, max_pos=256,
                             confident=True)
    return d, fastdllm.load(str(d))


@pytest.mark.parametrize("mode,threshold", [("diffusion", 0.9), ("diffusion", 0.3), ("ar", 0.9)])
def test_trace_agrees_with_generate(bd, mode, threshold):
    _, llm = bd
    prompt = list(range(1, 20))
    opts = dict(max_new_tokens=70, threshold=threshold, mode=mode, stop_token_ids=[])
    result, trace = record(llm, prompt, **opts)
    ref = llm.generate([prompt], **opts)[0]
    assert result.token_ids == ref.token_ids == trace.token_ids and result.nfe == ref.nfe
    assert trace.nfe == ref.nfe and trace.prompt_len == len(prompt)
    assert sum(trace.tokens_per_forward) == len(ref.token_ids)
    # a block opens only after the previous one is complete: its tokens come from later forwards
    bs = trace.block_size
    by_block: dict[int, list[int]] = {}
    for i, step in enumerate(trace.step_of):
        by_block.setdefault((trace.prompt_len + i) // bs, []).append(step)
    blocks = sorted(by_block)
    assert len(blocks) >= 2
    for a, b in zip(blocks, blocks[1:]):
        assert min(by_block[b]) > max(by_block[a])
    if mode == "ar":
        assert trace.step_of == list(range(1, len(ref.token_ids) + 1))
        assert trace.tokens_per_forward == [1] * ref.nfe
    elif threshold == 0.3:
        assert max(trace.tokens_per_forward) > 1  # a confident model decodes in parallel


def test_plot_and_cli(bd, tmp_path):
    d, llm = bd
    _, trace = record(llm, list(range(1, 20)), max_new_tokens=40, threshold=0.5, stop_token_ids=[])
    out = plot_trace(trace, tmp_path / "t.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    png = tmp_path / "cli.svg"
    r = subprocess.run([sys.executable, "-m", "fastdllm", "generate", "--model", str(d), "--prompt-ids", "1,2,3,4",
                        "--max-new-tokens", "24", "--plot", str(png)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert png.read_text().lstrip().startswith(("<?xml", "<svg")) and "wrote" in r.stderr
    bad = subprocess.run([sys.executable, "-m", "fastdllm", "generate", "--model", str(d), "--prompt-ids", "1,2",
                          "--plot", str(tmp_path / "x.txt")], capture_output=True, text=True)
    assert bad.returncode == 2 and "--plot" in bad.stderr
