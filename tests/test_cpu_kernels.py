"""The compiled decode path gives the eager path's numbers, per row, whatever the batch."""

import pytest
import torch

from fastdllm.api import LLM
from fastdllm.engine.backend import TorchBackend
from fastdllm.engine.cached_attention import CachedAttention, Segment
from fastdllm.engine.kv_cache import KVCache
from fastdllm.kernels import onednn
from fastdllm.kernels.compiled import CompiledKernels
from fastdllm.options import RuntimeOptions
from tests.test_engine import prompt_of, random_llm

COMPILED = RuntimeOptions(compile=True)



@pytest.fixture(scope="module", autouse=True)
def compiled_decode_path():
    if not CompiledKernels(True).enabled:
        pytest.skip("torch.compile unavailable on this machine")


def compiled(llm: LLM) -> LLM:
    """``llm``'s checkpoint on an engine with the compiled decode path on."""
    out = LLM(llm.checkpoint, runtime=COMPILED)
    assert out.engine.backend.compiled.enabled
    return out


@pytest.fixture(scope="module")
def llm32():
    return compiled(random_llm("qwen2", seed=11, lm_scale=1.0, dtype=torch.float32))


def _decode_logits(model, n_rows, fast: bool):
    cfg = model.cfg
    cache = KVCache(cfg.num_hidden_layers, n_rows, cfg.num_key_value_heads, 64, cfg.head_dim, torch.float32, "cpu")
    torch.manual_seed(0)
    cache.k.normal_()
    cache.v.normal_()
    ids = torch.arange(n_rows)[None] + 7
    pos = torch.tensor([[20 + 3 * i for i in range(n_rows)]])
    segs = [Segment(i, i, 1, int(pos[0, i]), int(pos[0, i]) + 1) for i in range(n_rows)]
    backend = TorchBackend(model, RuntimeOptions(compile=fast))
    with torch.inference_mode():
        assert (backend.layer_runner(ids) is not None) == fast
        return backend.forward(ids, pos, CachedAttention(cache, segs, model.attn_scale))


@pytest.mark.parametrize("rows", [1, 3])
def test_compiled_decode_matches_eager(llm32, rows):
    fast = _decode_logits(llm32.model, rows, True)
    eager = _decode_logits(llm32.model, rows, False)
    torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-4)


def test_fast_path_only_where_it_applies():
    x = torch.zeros(1, 4, 64)
    kernels = CompiledKernels(True)
    with torch.inference_mode():
        assert kernels.applies(x)
        assert not kernels.applies(torch.zeros(1, 5, 64))          # too many rows: MKL GEMM wins
        assert not kernels.applies(x.double())                      # float64 stays exact eager math
        assert not CompiledKernels(False).applies(x)                # off unless the runtime options say on
    assert not kernels.applies(x.requires_grad_())                  # training never compiles


def test_float32_ar_batch_invariance(llm32):
    prompts = [prompt_of(n) for n in (3, 17, 40)]
    kw = dict(max_new_tokens=30, stop_token_ids=[], mode="ar")
    alone = [llm32.generate([p], **kw)[0].token_ids for p in prompts]
    assert [r.token_ids for r in llm32.generate(prompts, **kw)] == alone


@pytest.mark.skipif(not onednn.onednn_available(), reason="oneDNN linear ops unavailable")
def test_onednn_linear_matches_f_linear_and_is_row_invariant():
    torch.manual_seed(0)
    lin = onednn.Linear(96, 300)
    x = torch.randn(40, 96)
    with torch.inference_mode():
        y = lin(x)
        torch.testing.assert_close(y, torch.nn.functional.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
        for m in (1, 3, 8, 33):
            assert torch.equal(lin(x[:m]), y[:m])  # a row's result does not depend on the batch
        with torch.no_grad():
            lin.weight.mul_(2)  # repacked after an in-place update
        torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cache", [False, True])
def test_float32_diffusion_batch_invariance(cache):
    llm = compiled(random_llm(seed=4, dtype=torch.float32))
    prompts = [prompt_of(n) for n in (3, 31, 45)]
    kw = dict(max_new_tokens=40, stop_token_ids=[], use_block_cache=cache)
    alone = [llm.generate([p], **kw)[0].token_ids for p in prompts]
    assert [r.token_ids for r in llm.generate(prompts, **kw)] == alone
