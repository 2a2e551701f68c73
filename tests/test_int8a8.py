"""W8A8 (int8 weights x int8 activations per row and block of 32): every instruction-set path this
CPU has against a float64 reference of the same quantised arithmetic, bit-identical across paths
and row counts; the layer, the C++ layer stack and the engine with int8 activations."""

from __future__ import annotations

import pytest
import torch

from fastdllm.kernels import cpu_info, native
from fastdllm.quant import Int8Linear, Int8Weight, quantize_model, set_activations
from tests.test_engine import prompt_of, random_llm
from tests.test_quant import (STACK_PARTS, assert_near_oracle, ckpts, needs_native,  # noqa: F401 (fixture)
                              packed_forward)

ISA_NEEDS = {"avx2": ("avx2",), "avx512-vnni": cpu_info.VNNI512, "amx": cpu_info.VNNI512 + cpu_info.AMX_INT8}


def isa_param(isa: str):
    missing = [f for f in ISA_NEEDS[isa] if f not in cpu_info.flags()]
    return pytest.param(isa, marks=pytest.mark.skipif(bool(missing), reason=f"this CPU lacks {', '.join(missing)}"))


ISAS = [isa_param(i) for i in ISA_NEEDS]


def reference(x, q, scale, bias):
    """float64: sum over blocks of (block scale x exact integer sum), times the weight scale, plus bias."""
    M, K = x.shape
    N = q.shape[0]
    xq, xs = native.quantize_activations(x)  # [M, Kp] int8, [M, Kp/32]
    qp = torch.zeros(N, xq.shape[1], dtype=torch.float64)
    qp[:, :K] = q.double()
    sums = torch.einsum("mbk,nbk->mnb", xq.double().view(M, -1, 32), qp.view(N, -1, 32))  # [M, N, blocks]
    y = (sums * xs.double()[:, None, :]).sum(-1) * scale.double()
    return y if bias is None else y + bias.double()


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("K", [576, 40, 1000, 7, 13, 32])  # whole blocks of 32, tails of a block, under one block
@pytest.mark.parametrize("N", [45, 16, 7])  # a last group of 13 outputs, one whole group, a part group only
def test_int8a8_against_float64(isa, K, N):
    torch.manual_seed(K * 100 + N)
    q = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    scale, bias = torch.rand(N) / 50, torch.randn(N)
    x = torch.randn(35, K)
    x[3, : min(K, 32)] = 0  # an all-zero block: scale 0
    x[4, 0] = 50.0  # an outlier: its block's other inputs round coarsely, the other blocks do not
    packed = native.pack_int8_a8(q)
    assert torch.equal(native.unpack_int8_a8(packed, N, K), q)
    y = native.int8a8_linear(x, packed, scale, bias, isa)
    assert y.dtype == torch.float32 and y.shape == (35, N)
    torch.testing.assert_close(y.double(), reference(x, q, scale, bias), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(native.int8a8_linear(x, packed, scale, None, isa).double(),
                               reference(x, q, scale, None), rtol=1e-5, atol=1e-4)
    for m in (1, 2, 3, 5, 7, 8, 13, 16, 17, 33):  # row counts take different tiles (AMX: chunks of rows
        # of equal height, 17 = 9 + 8 with a zero row padded): a row's result must not change
        assert torch.equal(native.int8a8_linear(x[:m], packed, scale, bias, isa), y[:m])
    assert torch.equal(native.int8a8_linear(x[5:6], packed, scale, bias, isa), y[5:6])
    # every path gives the same bits (integer sums, one float epilogue)
    assert torch.equal(native.int8a8_linear(x, packed, scale, bias, "auto"), y)


@needs_native
def test_int8a8_errors():
    q = torch.randint(-127, 128, (20, 64), dtype=torch.int8)
    packed, scale = native.pack_int8_a8(q), torch.ones(20)
    with pytest.raises(RuntimeError, match="pack_int8_a8"):
        native.int8a8_linear(torch.randn(2, 64), packed[:-1].contiguous(), scale, None)
    with pytest.raises(RuntimeError, match="float32"):
        native.int8a8_linear(torch.randn(2, 64).double(), packed, scale, None)
    with pytest.raises(ValueError, match="-127"):
        native.pack_int8_a8(torch.full((4, 4), -128, dtype=torch.int8))
    for isa, needs in ISA_NEEDS.items():
        if not all(f in cpu_info.flags() for f in needs):
            with pytest.raises(RuntimeError, match="not available"):
                native.int8a8_linear(torch.randn(2, 64), packed, scale, None, isa)


@needs_native
def test_int8a8_layer_switches_and_matches_its_reference():
    torch.manual_seed(0)
    w, b = torch.randn(70, 96) / 11, torch.randn(70)
    layer = Int8Linear(Int8Weight.from_float(w), b, torch.float32, "cpu")
    x = torch.randn(9, 96)
    with torch.inference_mode():
        y32 = layer(x)
        assert layer.set_activations("int8") and layer.activations == "int8"
        q = layer.weight_rows()
        assert torch.equal(q, Int8Weight.from_float(w).q)  # repacked, same weights
        y8 = layer(x)
        torch.testing.assert_close(y8.double(), reference(x, q, layer.scales, b), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(y8, y32, rtol=0.05, atol=0.05)  # int8 activations: close, not equal
        for m in (1, 4, 7):
            assert torch.equal(layer(x[:m]), y8[:m])
        assert layer.set_activations("float32") and torch.equal(layer(x), y32)
    bf16 = Int8Linear(Int8Weight.from_float(w), None, torch.bfloat16, "cpu")
    assert not bf16.set_activations("int8") and bf16.activations == "float32"  # no native kernel: unchanged


@needs_native
@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_quant_stack_with_int8_activations(ckpts, family):  # noqa: F811
    from fastdllm.loading import load_checkpoint

    model = load_checkpoint(ckpts[family], quantize="int8").model
    assert set_activations(model, "int8") == 4 * model.cfg.num_hidden_layers + 1
    eager, eager_cache, _ = packed_forward(model, STACK_PARTS, stack=False)
    fused, fused_cache, backend = packed_forward(model, STACK_PARTS, stack=True)
    assert backend.stack and not backend.fallbacks
    assert not fused.isnan().any()
    torch.testing.assert_close(fused, eager, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused_cache.data.nan_to_num(), eager_cache.data.nan_to_num(), rtol=1e-4, atol=1e-4)


def a8_llm(seed: int = 0, lm_scale: float = 6.0):
    from fastdllm.api import LLM
    from fastdllm.loading import Checkpoint

    llm = random_llm(seed=seed, lm_scale=lm_scale, dtype=torch.float32)  # block diffusion
    model = quantize_model(llm.model, "int8", torch.float32)
    set_activations(model, "int8")
    return LLM(Checkpoint(model, model.cfg, None, llm.checkpoint.path, {}))


@needs_native
@pytest.mark.parametrize("decoding", ["ar", "diffusion"])
def test_int8_activations_batch_invariance(decoding):
    llm = a8_llm(seed=4)
    prompts = [prompt_of(n) for n in (3, 31, 45)]
    kw = dict(max_new_tokens=40, stop_token_ids=[], mode=decoding)
    alone = [llm.generate([p], **kw)[0].token_ids for p in prompts]
    assert [r.token_ids for r in llm.generate(prompts, **kw)] == alone


@needs_native
def test_engine_against_oracle_int8_activations():
    """As test_quant's: same layers, attention summed in another order; the first tokens agree."""
    assert_near_oracle(a8_llm(), (1, 16, 33))


@needs_native
def test_set_activations_switches_int8_layers_only(ckpts):  # noqa: F811
    from fastdllm.errors import ModelLoadError
    from fastdllm.loading import load_checkpoint
    from fastdllm.quant import Int4Linear, load_path

    model = load_checkpoint(ckpts["qwen2"], quantize="int4").model
    L = model.cfg.num_hidden_layers
    assert set_activations(model, "int8") == 2 * L + 1  # qkv, down and the vocabulary projection stay int8
    assert all(m.activations == "int8" for m in model.modules() if isinstance(m, Int8Linear))
    assert all(not hasattr(m, "activations") for m in model.modules() if isinstance(m, Int4Linear))
    assert set_activations(model, "float32") == 2 * L + 1
    with pytest.raises(ModelLoadError, match="activations"):
        set_activations(model, "int4")
    llm = load_path("int8-a8", str(ckpts["qwen2"]))
    assert llm.model.quantization == "int8"
    assert all(m.activations == "int8" for m in llm.model.modules() if isinstance(m, Int8Linear))
    with pytest.raises(ModelLoadError, match="int3"):
        load_path("int3-a8", str(ckpts["qwen2"]))
    with pytest.raises(ModelLoadError, match="not a path"):
        load_path("none-a8", str(ckpts["qwen2"]))


@needs_native
def test_load_with_int8_activations(ckpts):  # noqa: F811
    """quantize="int8-a8" is quantize="int8" with every int8 layer switched to int8 activations: the
    same layers and the same tokens as switching them by hand; "int4-a8" switches int4's int8 layers."""
    import fastdllm
    from fastdllm.quant import Int4Linear

    path = str(ckpts["qwen2"])
    a8 = fastdllm.load(path, quantize="int8-a8")
    layers = [m for m in a8.model.modules() if isinstance(m, Int8Linear)]
    assert layers and {m.activations for m in layers} == {"int8"}
    by_hand = fastdllm.load(path, quantize="int8")
    assert set_activations(by_hand.model, "int8") == len(layers)
    prompt = [[3, 14, 15, 92, 65]]
    assert (a8.generate(prompt, mode="ar", max_new_tokens=10)[0].token_ids
            == by_hand.generate(prompt, mode="ar", max_new_tokens=10)[0].token_ids)
    w4 = fastdllm.load(path, quantize="int4-a8")
    assert {m.activations for m in w4.model.modules() if isinstance(m, Int8Linear)} == {"int8"}
    assert any(isinstance(m, Int4Linear) for m in w4.model.modules())  # int4 layers keep float activations


def test_int8_activations_refused_where_they_cannot_run(caplog):
    from fastdllm.errors import ModelLoadError
    from fastdllm.loading.plan import plan_load
    from fastdllm.quant import split_activations

    assert split_activations("int8-a8") == ("int8", "int8") and split_activations("int4") == ("int4", "float32")
    with pytest.raises(ModelLoadError, match="int8-a8 or int4-a8"):
        split_activations("int4-gptq-a8")
    with pytest.raises(ModelLoadError, match="CPU kernels"):
        plan_load("word-problems", device="meta", quantize="int8-a8")


def test_load_with_int8_activations_without_native_kernels_says_so(ckpts, caplog):  # noqa: F811
    import fastdllm
    from fastdllm.options import RuntimeOptions

    llm = fastdllm.load(str(ckpts["qwen2"]), quantize="int8-a8", runtime=RuntimeOptions(native="off"))
    assert {m.activations for m in llm.model.modules() if isinstance(m, Int8Linear)} == {"float32"}
    assert "keep float activations" in caplog.text

