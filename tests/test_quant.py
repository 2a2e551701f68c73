"""Weight-only int8 / int4: the formats, the layers against F.linear, row (batch) invariance, whole
models against float32 within stated tolerances, and the engine against the oracle in the same
quantised arithmetic. GGUF Q4 blocks are tested in test_gguf.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastdllm
from fastdllm.api import LLM
from fastdllm.engine.backend import NativeStackBackend, TorchBackend, select_backend
from fastdllm.errors import ModelLoadError
from fastdllm.kernels import native
from fastdllm.loading import Checkpoint, load_checkpoint
from fastdllm.model.attention import DenseAttention, causal_mask
from fastdllm.options import RuntimeOptions
from fastdllm.quant import (Int4Linear, Int4Weight, Int8Linear, Int8Weight, QuantLinear, parse_quantize,
                            parse_quantized_list, quantize_model, quantized_linear, set_activations)
from fastdllm.engine.reference import naive_autoregressive
from fastdllm.engine.sampling import SamplingParams, make_sampler
from tests.helpers import make_tiny_checkpoint, random_ids
from tests.test_engine import EOS, oracle, prompt_of, random_llm

# Relative error of the logits (L2 over all positions) against float32, on tiny random models.
# Random Gaussian weights are the hard case for min-max quantisation (no outlier structure to
# exploit), so these bounds are loose for trained models.
LOGIT_TOLERANCE = {"int8": 0.03, "int4": 0.25}


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(len(ids))
    with torch.inference_mode():
        return model(ids[None], pos[None], DenseAttention(causal_mask(pos, pos)[None, None], model.attn_scale))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    return {"qwen2": make_tiny_checkpoint(root / "qwen2", "qwen2", hidden=64, inter=160, rope_theta=1e6),
            "llama": make_tiny_checkpoint(root / "llama", "llama", hidden=64, inter=160, tie=True, mlp_bias=True,
                                          attention_bias=True),
            # heads of 104 = 64 + 32 + 8 values: every block size of the C++ attention's value sums
            "wide-heads": make_tiny_checkpoint(root / "wide", "qwen2", hidden=64, inter=160, heads=2, kv_heads=1,
                                               head_dim=104),
            # heads of 112 = 64 + 32 + 16, a multiple of 16: the C++ attention's blocked path, where the
            # query heads of a KV head (3 here, as SmolLM2's) share each key and value
            "gqa-112": make_tiny_checkpoint(root / "gqa", "qwen2", hidden=64, inter=160, heads=6, kv_heads=2,
                                            head_dim=112)}


# ---- formats --------------------------------------------------------------------------------

def test_int8_format_round_trip():
    torch.manual_seed(0)
    w = torch.randn(48, 96)
    q = Int8Weight.from_float(w)
    assert q.q.dtype == torch.int8 and q.q.abs().max() == 127 and q.scale.shape == (48,)
    err = (q.dequantize() - w).abs()
    assert (err <= q.scale[:, None] / 2 + 1e-7).all()  # round to nearest: half a step at most
    fused = Int8Weight.cat([q, Int8Weight.from_float(2 * w)])
    assert fused.shape == (96, 96) and torch.equal(fused.dequantize()[:48], q.dequantize())


def test_int4_format_round_trip():
    torch.manual_seed(0)
    w = torch.randn(32, 128)
    q = Int4Weight.from_float(w, 32)
    assert q.group_size == 32 and q.scale.shape == (32, 4) and int(q.q.max()) <= 15
    err = (q.dequantize() - w).abs().reshape(32, 4, 32)
    assert (err <= q.scale[..., None] / 2 + 1e-6).all()
    # the group's extremes are represented (min exactly, max up to rounding)
    g = w.reshape(32, 4, 32)
    torch.testing.assert_close(q.dequantize().reshape(32, 4, 32).amin(-1), g.amin(-1), rtol=0, atol=1e-6)
    perm = torch.randperm(32)
    assert torch.equal(q.map_rows(lambda t: t[perm]).dequantize(), q.dequantize()[perm])
    with pytest.raises(ValueError):
        Int4Weight.from_float(torch.randn(16, 48), 32)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_parse_quantize(mode):
    assert parse_quantize(mode) == mode and parse_quantize(mode.upper()) == mode
    assert parse_quantize(None) is None and parse_quantize("none") is None
    with pytest.raises(ModelLoadError, match="int8, int4 or int4-gptq"):
        parse_quantize("int3")


def test_parse_quantized_list():
    """What the benchmarks comparing quantised paths with float32 accept (``--paths``)."""
    assert parse_quantized_list(" INT8, int4-gptq,,") == ["int8", "int4-gptq"]
    assert parse_quantized_list("") == []
    for bad in ("int8,none", "int3"):  # float32 is the reference itself, not a path to compare
        with pytest.raises(ModelLoadError, match="int8, int4 or int4-gptq"):
            parse_quantized_list(bad)


# ---- layers ---------------------------------------------------------------------------------

def _reference(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """What the layer computes: its effective weight, input rounded to the kernel dtype, float32 sums."""
    xk = x.to(layer.kernel_dtype).float()
    y = F.linear(xk, layer.dequantize())
    return y if layer.bias is None else y + layer.bias


@pytest.mark.parametrize("cls,fmt", [(Int8Linear, Int8Weight.from_float),
                                     (Int4Linear, lambda w: Int4Weight.from_float(w, 32))])
def test_layer_matches_its_dequantised_weight_and_is_row_invariant(cls, fmt):
    torch.manual_seed(0)
    w, b = torch.randn(320, 128) / 11, torch.randn(320) / 10
    layer = cls(fmt(w), b, torch.float32, "cpu")
    # torch's x86 kernels are vectorised for bfloat16 input; fastdllm's kernels take float32
    assert layer.native == native.available()
    assert layer.kernel_dtype == (torch.float32 if layer.native else torch.bfloat16)
    x = torch.randn(40, 128)
    with torch.inference_mode():
        y = layer(x)
        assert y.dtype == torch.float32
        # the kernel returns bfloat16: compare at bfloat16 resolution
        torch.testing.assert_close(y, _reference(layer, x), rtol=1e-2, atol=1e-2)
        for m in (1, 3, 8, 33):
            assert torch.equal(layer(x[:m]), y[:m])  # a row's result does not depend on the batch
        # and the dequantised weight is the format's own (scales rounded to bfloat16 for the kernel)
        torch.testing.assert_close(layer.dequantize(), fmt(w).dequantize(), rtol=1e-2, atol=1e-2)


needs_native = pytest.mark.skipif(not native.available(), reason="fastdllm's int8 CPU kernel could not be built "
                                  "here (no AVX2, compiler or ninja; see the log)")


@needs_native
@pytest.mark.parametrize("K", [576, 40, 1000, 7, 13])  # whole 8-input chunks, a tail only, both
def test_native_int8_kernel_against_float64(K):
    torch.manual_seed(K)
    N = 45  # a last group of 5 rows (3 padding)
    q = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    scale, bias = torch.rand(N) / 50, torch.randn(N)
    x = torch.randn(35, K)
    ref = F.linear(x.double(), q.double()) * scale.double() + bias.double()  # [M, N]
    packed = native.pack_int8(q)
    assert torch.equal(native.unpack_int8(packed, N, K), q)
    y = native.int8_linear(x, packed, scale, bias)
    assert y.dtype == torch.float32 and y.shape == (35, N)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(native.int8_linear(x, packed, scale, None).double(), ref - bias.double(), rtol=1e-5,
                               atol=1e-4)
    for m in (1, 2, 3, 4, 5, 8):  # row counts take different tiles: a row's sums must not change
        assert torch.equal(native.int8_linear(x[:m], packed, scale, bias), y[:m])
    assert torch.equal(native.int8_linear(x[5:6], packed, scale, bias), y[5:6])
    with pytest.raises(RuntimeError, match="float32"):
        native.int8_linear(x.bfloat16(), packed, scale, bias)
    with pytest.raises(RuntimeError, match="pack_int8"):
        native.int8_linear(x, q.flatten()[:-1].contiguous(), scale, bias)


@needs_native
def test_int8_layer_uses_the_native_kernel_for_float32_models_only():
    torch.manual_seed(0)
    w = torch.randn(64, 96) / 11
    f32 = Int8Linear(Int8Weight.from_float(w), None, torch.float32, "cpu")
    bf16 = Int8Linear(Int8Weight.from_float(w), None, torch.bfloat16, "cpu")
    assert f32.native and f32.kernel_dtype == torch.float32 and not bf16.native
    x = torch.randn(4, 96)
    with torch.inference_mode():
        # float32 activations: the layer is its dequantised weight to float32 rounding, far
        # tighter than the bfloat16-input kernel's tolerance above
        torch.testing.assert_close(f32(x), F.linear(x, f32.dequantize()), rtol=1e-5, atol=1e-5)
        assert bf16(x.bfloat16()).dtype == torch.bfloat16


def test_int8_falls_back_to_torchs_kernel_without_the_native_one():
    """native="off" (FASTDLLM_NATIVE=0; or no compiler / AVX2): torch's bfloat16-input kernel."""
    assert RuntimeOptions.from_env({"FASTDLLM_NATIVE": "0"}).native == "off"
    torch.manual_seed(0)
    layer = Int8Linear(Int8Weight.from_float(torch.randn(32, 64)), None, torch.float32, "cpu", use_native=False)
    assert not layer.native and layer.kernel_dtype == torch.bfloat16
    x = torch.randn(3, 64)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-2, atol=1e-2)


def test_kernel_sources_ship_with_the_package():
    """The kernels compile on the user's machine: every source and the header must be package data."""
    import fnmatch
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["fastdllm.kernels"]
    for path in [*native.SOURCES, *native.HEADERS]:
        assert path.is_file(), path
        rel = path.relative_to(native.CSRC.parent).as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), (rel, globs)


def test_a_killed_builds_lock_is_cleared(tmp_path, monkeypatch):
    """torch's extension builder waits forever on the lock file of a build that was killed."""
    import os
    import time

    monkeypatch.setattr(native, "build_dir", lambda: tmp_path)
    lock = tmp_path / "lock"
    lock.touch()
    native.clear_stale_lock()
    assert lock.exists()  # a build may be running now: left alone
    old = time.time() - native.STALE_LOCK_SECONDS - 5
    os.utime(lock, (old, old))
    native.clear_stale_lock()
    assert not lock.exists()
    native.clear_stale_lock()  # and no lock is no error


def test_int8_kernel_input_alignment_in_bfloat16():
    """The CPU int8 kernel uses aligned loads: a bfloat16 view at an odd offset must be copied."""
    torch.manual_seed(0)
    layer = Int8Linear(Int8Weight.from_float(torch.randn(64, 64)), None, torch.bfloat16, "cpu")
    base = torch.randn(1000, dtype=torch.bfloat16)
    x = base[3:3 + 2 * 64].view(2, 64)
    with torch.inference_mode():
        assert torch.equal(layer(x), layer(x.clone()))


def test_generic_paths_match_the_cpu_kernels():
    """The dequantise-then-F.linear paths (what runs on CUDA) give the CPU kernels' numbers."""
    torch.manual_seed(0)
    w, x = torch.randn(64, 128) / 11, torch.randn(5, 128)
    i8 = Int8Linear(Int8Weight.from_float(w), None, torch.float32, "cpu")
    generic8 = Int8Linear(Int8Weight.from_float(w), None, torch.float32, "cpu")
    generic8.cpu_kernel = generic8.native = False
    i4 = Int4Linear(Int4Weight.from_float(w, 32), None, torch.float32, "cpu", layout="cpu")
    generic4 = Int4Linear(Int4Weight.from_float(w, 32), None, torch.float32, "cpu", layout="plain")
    with torch.inference_mode():
        torch.testing.assert_close(generic8(x), i8(x), rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(generic4(x), i4(x), rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(generic4.dequantize(), i4.dequantize(), rtol=0, atol=0)


@needs_native
def test_native_int4_layer_is_its_format():
    """fastdllm's int4 kernel: float32 scales, so the layer is Int4Weight's own weight to float32
    rounding, rows are invariant, the packing round-trips, and a padded last group of rows works."""
    torch.manual_seed(0)
    w, b = torch.randn(45, 96) / 11, torch.randn(45)
    fmt = Int4Weight.from_float(w, 32)
    layer = Int4Linear(fmt, b, torch.float32, "cpu")
    assert layer.layout == "native" and layer.kernel_dtype == torch.float32
    assert torch.equal(native.unpack_int4(layer.qweight, 45, 96), fmt.q)
    torch.testing.assert_close(layer.dequantize(), fmt.dequantize(), rtol=1e-6, atol=1e-6)
    x = torch.randn(7, 96)
    with torch.inference_mode():
        y = layer(x)
        ref = F.linear(x.double(), fmt.dequantize().double(), b.double())
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
        for m in (1, 2, 3, 6):
            assert torch.equal(layer(x[:m]), y[:m])
        assert torch.equal(layer(x[3:4]), y[3:4])
    # other group sizes and input sizes stay on torch's kernel
    assert Int4Linear(Int4Weight.from_float(torch.randn(48, 128), 64), None, torch.float32, "cpu").layout == "cpu"


def test_shapes_the_kernels_cannot_take():
    torch.manual_seed(0)
    # int8 with K not a multiple of 16: the generic path, still correct
    odd = quantized_linear(torch.randn(32, 40), None, "int8", torch.float32, "cpu")
    assert isinstance(odd, Int8Linear) and not odd.cpu_kernel
    x = torch.randn(3, 40)
    with torch.inference_mode():
        torch.testing.assert_close(odd(x), _reference(odd, x), rtol=1e-2, atol=1e-2)
    # int4 needs K divisible by the group and N by 16 on the CPU: such layers become int8
    assert isinstance(quantized_linear(torch.randn(32, 48), None, "int4", torch.float32, "cpu"), Int8Linear)
    assert isinstance(quantized_linear(torch.randn(40, 64), None, "int4", torch.float32, "cpu"), Int8Linear)
    assert isinstance(quantized_linear(torch.randn(48, 64), None, "int4", torch.float32, "cpu"), Int4Linear)


# ---- whole models ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["qwen2", "llama"])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantised_logits_close_to_float32(ckpts, family, mode):
    ref_model = load_checkpoint(ckpts[family]).model
    model = load_checkpoint(ckpts[family], quantize=mode).model
    assert model.quantization == mode and model.dtype == torch.float32
    layers = {n: type(m) for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert len(layers) == 4 * model.cfg.num_hidden_layers + 1
    assert layers.pop("lm_head") is Int8Linear  # the vocabulary projection never goes below int8
    kept = {n: layers.pop(n) for n in list(layers) if n.endswith(("mlp.down_proj", "self_attn.qkv_proj"))}
    assert len(kept) == 2 * model.cfg.num_hidden_layers
    assert set(kept.values()) == {Int8Linear}  # nor, made from float weights, the qkv and down projections
    assert set(layers.values()) == {Int8Linear if mode == "int8" else Int4Linear}
    assert model.embed_tokens.weight.dtype == torch.float32  # embeddings stay in the model's dtype
    ids = random_ids(48, model.cfg.vocab_size, seed=1)
    ref, got = logits(ref_model, ids), logits(model, ids)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < LOGIT_TOLERANCE[mode], rel


def test_quantize_model_equals_quantised_load(ckpts):
    built = quantize_model(load_checkpoint(ckpts["qwen2"]).model, "int8")
    loaded = load_checkpoint(ckpts["qwen2"], quantize="int8").model
    ids = random_ids(20, 512, seed=2)
    assert torch.equal(logits(built, ids), logits(loaded, ids))


def test_load_api_and_errors(ckpts):
    llm = fastdllm.load(str(ckpts["qwen2"]), quantize="int4")
    assert llm.model.quantization == "int4"
    assert len(llm.generate([[1, 2, 3]], max_new_tokens=5, stop_token_ids=[])[0].token_ids) == 5
    with pytest.raises(ModelLoadError, match="int8, int4 or int4-gptq"):
        fastdllm.load(str(ckpts["qwen2"]), quantize="fp8")


def test_cli_quantize_flag(ckpts, capsys):
    import json

    from fastdllm.cli.main import main

    argv = ["generate", "--model", str(ckpts["qwen2"]), "--prompt-ids", "1,2,3", "--max-new-tokens", "4", "--json",
            "--no-chat", "--stop-token-id", "0"]
    code = main(argv + ["--quantize", "int8"])
    out, err = capsys.readouterr()
    assert code == 0, err
    llm = fastdllm.load(str(ckpts["qwen2"]), quantize="int8")
    assert json.loads(out)["token_ids"] == llm.generate([[1, 2, 3]], max_new_tokens=4, stop_token_ids=[0])[0].token_ids
    code = main(argv + ["--quantize", "int3"])
    assert code == 2 and "--quantize" in capsys.readouterr().err


# ---- the engine in quantised arithmetic -------------------------------------------------------

def quantised_llm(mode: str, model_type="Fast_dLLM_Qwen", seed=0, lm_scale=6.0) -> LLM:
    """test_engine's random model (hidden 48: int4 takes the layers whose input is 96 wide, the
    others fall back to int8), quantised in float32."""
    llm = random_llm(model_type, seed=seed, lm_scale=lm_scale, dtype=torch.float32)
    model = quantize_model(llm.model, mode, torch.float32)
    return LLM(Checkpoint(model, model.cfg, None, llm.checkpoint.path, {}))


# ---- the C++ int8 layer stack ----------------------------------------------------------------

# (slot, base, write_pos, length, kv_end, kind, block_size): a block, a causal prefill chunk, a
# block-causal chunk, AR steps, in one packed forward
STACK_PARTS = [(0, 0, 40, 8, 48, "full", 0), (0, 60, 0, 5, 5, "causal", 0), (0, 100, 16, 16, 32, "block_causal", 8),
               (0, 140, 30, 1, 31, "causal", 0), (0, 180, 12, 1, 13, "full", 0)]


def packed_forward(model, parts, stack: bool):
    """One packed forward over ``parts`` on a cache that is NaN outside their spans, on the native
    stack's backend (``stack``) or the eager one: (logits, cache, backend). A part's cached keys and
    values and its tokens are drawn from seeds of its own (its base), whatever parts go with it."""
    from fastdllm.engine.kv_cache import KVCache
    from fastdllm.engine.packed_attention import PackedAttention
    from tests.test_packed_attention import segments

    cfg = model.cfg
    cache = KVCache(cfg.num_hidden_layers, 1, cfg.num_key_value_heads, 200, cfg.head_dim, torch.float32, "cpu")
    cache.data.fill_(float("nan"))
    for slot, base, _, _, kv_end, *_ in parts:
        span = cache.data[:, slot, base:base + kv_end]
        span.copy_(torch.randn(span.shape, generator=torch.Generator().manual_seed(1 + base)))
    ids = torch.cat([random_ids(p[3], cfg.vocab_size, seed=4 + p[1]) for p in parts])
    pos = torch.tensor([wp + i for _, _, wp, length, *_ in parts for i in range(length)])
    backend = NativeStackBackend(model) if stack else TorchBackend(model)
    with torch.inference_mode():
        out = backend.forward(ids[None], pos[None], PackedAttention(cache, segments(parts), model.attn_scale))
    return out, cache, backend


@needs_native
@pytest.mark.parametrize("mode", ["int8", "int4"])  # int4: int4 projections beside int8 qkv and down ones
# qkv bias; tied, o/MLP biases; head sizes
@pytest.mark.parametrize("family", ["qwen2", "llama", "wide-heads", "gqa-112"])
@pytest.mark.parametrize("parts", [STACK_PARTS, STACK_PARTS[3:4], STACK_PARTS[:1]], ids=["mixed", "ar-step", "block"])
def test_quant_stack_matches_the_eager_layers(ckpts, family, parts, mode):
    model = load_checkpoint(ckpts[family], quantize=mode).model
    eager, eager_cache, _ = packed_forward(model, parts, stack=False)
    fused, fused_cache, backend = packed_forward(model, parts, stack=True)
    assert backend.stack and not backend.fallbacks  # built and used
    assert not fused.isnan().any()  # nothing read outside a sequence's span or its mask
    torch.testing.assert_close(fused, eager, rtol=1e-4, atol=1e-4)
    # the same keys and values, written at the same places and nowhere else
    assert torch.equal(fused_cache.data.isnan(), eager_cache.data.isnan())
    torch.testing.assert_close(fused_cache.data.nan_to_num(), eager_cache.data.nan_to_num(), rtol=1e-4, atol=1e-4)


@needs_native
@pytest.mark.parametrize("mode", ["int8", "int8-a8", "int4"])
@pytest.mark.parametrize("family", ["qwen2", "wide-heads", "gqa-112"])
def test_quant_stack_batched_equals_one_by_one(ckpts, family, mode):
    """A sequence's logits and keys/values have the same bits whatever else shares its forward: the
    attention tasks group rows and query heads, the products split rows into tiles (W8A8 on AMX: chunks
    padded with zero rows), none of which may change a row's sums."""
    model = load_checkpoint(ckpts[family], quantize=mode.split("-")[0]).model
    if mode == "int8-a8":
        set_activations(model, "int8")
    together, together_cache, backend = packed_forward(model, STACK_PARTS, stack=True)
    assert backend.stack and not backend.fallbacks
    row = 0
    for part in STACK_PARTS:
        alone, alone_cache, _ = packed_forward(model, [part], stack=True)
        assert torch.equal(alone, together[row:row + part[3]]), part
        slot, base, _, _, kv_end, *_ = part
        span = (slice(None), slot, slice(base, base + kv_end))
        assert torch.equal(alone_cache.data[span], together_cache.data[span]), part
        row += part[3]


@needs_native
def test_quant_stack_past_its_rotary_table(ckpts, monkeypatch):
    """Positions past the stack's cos/sin table are computed on the spot, to the same results."""
    from fastdllm.kernels import stack

    monkeypatch.setattr(stack, "TABLE_POSITIONS", 20)  # STACK_PARTS run to position 47
    model = load_checkpoint(ckpts["qwen2"], quantize="int8").model
    eager, _, _ = packed_forward(model, STACK_PARTS, stack=False)
    fused, _, backend = packed_forward(model, STACK_PARTS, stack=True)
    assert backend.stack and not backend.fallbacks
    torch.testing.assert_close(fused, eager, rtol=1e-4, atol=1e-4)


@needs_native
def test_quant_stack_only_where_it_applies(ckpts, monkeypatch):
    from fastdllm.engine.kv_cache import KVCache
    from fastdllm.engine.packed_attention import PackedAttention
    from tests.test_packed_attention import segments

    model = load_checkpoint(ckpts["qwen2"], quantize="int8").model
    cfg = model.cfg
    cache = KVCache(cfg.num_hidden_layers, 1, cfg.num_key_value_heads, 200, cfg.head_dim, torch.float32, "cpu")
    packed = PackedAttention(cache, segments(STACK_PARTS[:1]), model.attn_scale)
    dense = DenseAttention(None, model.attn_scale)
    backend = select_backend(model)
    assert backend.name == "native-stack"
    with torch.inference_mode():
        assert backend.stack_for(packed) is not None
        assert backend.stack_for(dense) is None  # the oracle and training attend densely: eager
    assert backend.stack_for(packed) is None  # autograd on
    assert set(backend.fallbacks) == {"attention is DenseAttention, not over the packed pool", "autograd is on"}
    int4 = load_checkpoint(ckpts["qwen2"], quantize="int4").model
    float32 = load_checkpoint(ckpts["qwen2"]).model
    assert select_backend(float32).name == "torch"
    int4_backend = select_backend(int4)
    with torch.inference_mode():
        assert int4_backend.stack_for(packed) is not None
        int4.layers[1].mlp.down_proj.native = False  # one projection off the native kernels: no stack
        int4.weights_changed()
        assert int4_backend.stack_for(packed) is None
        assert select_backend(int4).name == "torch"
    off = select_backend(model, RuntimeOptions.from_env({"FASTDLLM_QUANT_STACK": "0"}))
    assert off.name == "torch" and off.describe() == "torch (no native stack: quant_stack=off)"


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_engine_against_oracle_quantised(mode):
    """Engine and oracle share the quantised layers, but their attention sums in a different order
    (cached per segment vs dense), and the quantised product rounds its input to bfloat16: a
    float32 difference in the last bit can move that rounding. So token-for-token is not
    guaranteed; required: the first tokens agree and >= 90% of positions overall."""
    assert_near_oracle(quantised_llm(mode), (1, 7, 16, 33, 50))


def assert_near_oracle(llm, lengths) -> None:
    """For prompts of each length, cache off and on: the engine's first 4 tokens equal the oracle's,
    and >= 90% of all positions agree."""
    agree = total = 0
    for L in lengths:
        for cache in (False, True):
            prompt = prompt_of(L)
            kw = dict(block_size=32, small_block_size=8, threshold=0.9, use_block_cache=cache)
            got = llm.generate([prompt], max_new_tokens=48, stop_token_ids=[EOS], **kw)[0].token_ids
            want = oracle(llm, prompt, max_new_tokens=48, stop_ids={EOS}, **kw)
            assert got[:4] == want[:4], (L, cache)
            agree += sum(a == b for a, b in zip(got, want))
            total += max(len(got), len(want))
    assert agree / total >= 0.9, (agree, total)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_ar_against_naive_ar_quantised(mode):
    llm = quantised_llm(mode, "qwen2", seed=3, lm_scale=1.0)
    for L in (1, 9, 40):
        prompt = prompt_of(L)
        got = llm.generate([prompt], max_new_tokens=25, stop_token_ids=[EOS], mode="ar")[0].token_ids
        want = naive_autoregressive(llm.model, prompt, max_new_tokens=25, stop_ids={EOS},
                                    sampler=make_sampler(SamplingParams(), None))
        assert got[:4] == want[:4] and sum(a == b for a, b in zip(got, want)) >= 0.8 * len(want)


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("decoding", ["ar", "diffusion"])
def test_quantised_batch_invariance(mode, decoding):
    """Quantised kernels are row-invariant, so a batched request gets the tokens it gets alone."""
    llm = quantised_llm(mode, seed=4)
    prompts = [prompt_of(n) for n in (3, 31, 45)]
    kw = dict(max_new_tokens=40, stop_token_ids=[], mode=decoding)
    alone = [llm.generate([p], **kw)[0].token_ids for p in prompts]
    assert [r.token_ids for r in llm.generate(prompts, **kw)] == alone


# ---- CUDA -----------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_cuda_quantised_close_to_float32(ckpts, mode):
    ref = logits(load_checkpoint(ckpts["qwen2"]).model, random_ids(48, 512, seed=1))
    model = load_checkpoint(ckpts["qwen2"], dtype="bfloat16", device="cuda", quantize=mode).model
    ids = random_ids(48, 512, seed=1).cuda()
    pos = torch.arange(48, device="cuda")
    with torch.inference_mode():
        got = model(ids[None], pos[None], DenseAttention(causal_mask(pos, pos)[None, None], model.attn_scale))
    rel = ((got.float().cpu() - ref).norm() / ref.norm()).item()
    assert rel < LOGIT_TOLERANCE[mode] + 0.03, rel
    llm = fastdllm.load(str(ckpts["qwen2"]), device="cuda", quantize=mode)
    assert llm.model.dtype == torch.bfloat16  # "auto" on CUDA
    assert len(llm.generate([[1, 2, 3]], max_new_tokens=5, stop_token_ids=[])[0].token_ids) == 5
