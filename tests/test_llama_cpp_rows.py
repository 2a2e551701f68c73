"""benchmarks/llama_cpp_rows.py: the random GGUF the size sweep gives llama.cpp, and its timing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("llama_cpp_rows", ROOT / "benchmarks" / "llama_cpp_rows.py")
LC = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(LC)

TINY = {"llama": dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=320, tie_word_embeddings=True,
                      rope_theta=100000.0),
        "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=320, tie_word_embeddings=False,
                      rope_theta=1e6)}


@pytest.mark.parametrize("arch,fmt", [("llama", "Q4_0"), ("qwen2", "Q8_0")])
def test_random_gguf_has_the_shape_format_and_scale(tmp_path, arch, fmt):
    cfg = TINY[arch]
    path = LC.write_random_gguf(cfg, tmp_path / "m.gguf", fmt)
    r = gguf.GGUFReader(str(path))
    assert r.fields["general.architecture"].contents() == arch
    assert r.fields[f"{arch}.block_count"].contents() == 2
    assert len(r.fields["tokenizer.ggml.tokens"].contents()) == cfg["vocab_size"]
    t = {x.name: x for x in r.tensors}
    names = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                          "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    if arch == "qwen2":
        names |= {f"blk.{i}.attn_{n}.bias" for i in range(2) for n in "qkv"} | {"output.weight"}
    assert set(t) == names
    q = getattr(gguf.GGMLQuantizationType, fmt)
    for name, x in t.items():
        assert x.tensor_type == (q if name.endswith(".weight") and "norm" not in name else gguf.GGMLQuantizationType.F32)
    down = gguf.quants.dequantize(t["blk.0.ffn_down.weight"].data, q)  # [hidden, intermediate]
    assert down.shape == (64, 96)
    assert np.std(down) == pytest.approx(96 ** -0.5, rel=0.15)  # N(0, 1/fan_in)
    assert np.all(gguf.quants.dequantize(t["blk.1.ffn_norm.weight"].data, gguf.GGMLQuantizationType.F32) == 1.0)


def test_availability_says_why_or_decodes():
    why = LC.available()
    assert why is None or why.startswith("llama-cpp-python")
    if importlib.util.find_spec("llama_cpp") is None:
        assert "not installed" in why


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Q4_0, Q8_0"):
        LC.write_random_gguf(TINY["llama"], tmp_path / "m.gguf", "Q4_1")


def test_llama_cpp_times_every_row_count(tmp_path):
    why = LC.available()
    if why:
        pytest.skip(why)
    path = LC.write_random_gguf(TINY["llama"], tmp_path / "m.gguf", "Q8_0")
    ms = LC.forward_ms(path, [1, 3, 8], context=20, repeats=2, threads=1)
    assert list(ms) == ["1", "3", "8"] and all(v > 0 for v in ms.values())
