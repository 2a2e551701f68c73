"""Read a llama.cpp GGUF file (Llama or Qwen2) as a Hugging Face config, tensors and tokenizer.

GGUF keeps a model in llama.cpp's layout: its own tensor names, dimensions listed innermost
first, quantized blocks, and (Llama only) q/k rows permuted for llama.cpp's rotary kernel.
``read_gguf`` undoes all of that, so the strict safetensors path (``weights.build_model``)
loads the result unchanged. Weights come back dequantized to float32, except with
``keep_q4=True``: then Q4_0 / Q4_1 matrices come back as their own 4-bit codes with per-block
scales and zero points (``fastdllm.quant.Int4Weight``, group size 32), which torch's int4
kernels multiply directly. The codes, scales (``d``) and minima (``m``) are the file's; only the
zero point ``m + 8 d`` of Q4_1 is computed (in float32).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelLoadError, UnsupportedModelError
from ..quant.formats import Int4Weight
from .quiet import quiet_transformers

ARCHITECTURES = ("llama", "qwen2")
GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
LAYER_TENSORS = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_MISSING = object()


def read_gguf(path: Path, keep_q4: bool = False) -> tuple[dict, dict[str, torch.Tensor], object]:
    """Returns (hf_config_dict, hf_named_tensors_float32, transformers_tokenizer_or_None)."""
    path = Path(path)
    reader = _open(path)
    config = hf_config(reader, path)
    tensors = hf_tensors(reader, config, path, keep_q4)
    return config, tensors, load_tokenizer(reader, path)


def holds_q4(path: Path) -> bool:
    """Whether the file holds Q4_0 / Q4_1 matrices (which ``keep_q4`` keeps as int4 codes)."""
    from gguf import GGMLQuantizationType as Q

    return any(t.tensor_type in (Q.Q4_0, Q.Q4_1) and len(t.shape) == 2 for t in _open(Path(path)).tensors)


def _open(path: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    except Exception as e:  # bad magic, truncated header or data, unknown value types...
        raise ModelLoadError(f"cannot read GGUF file {path} (corrupt or truncated?): {e}") from e


def _value(reader, key: str, path: Path, default=_MISSING):
    """A scalar or string metadata value (None-safe via ``default``)."""
    from gguf import GGUFValueType

    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise ModelLoadError(f"{path}: GGUF metadata has no {key!r}")
        return default
    if field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    if field.types[0] == GGUFValueType.ARRAY or len(field.data) != 1:
        raise UnsupportedModelError(f"{path}: GGUF metadata {key!r} is an array; fastdllm expects one value")
    value = field.parts[field.data[0]][0]
    if isinstance(value, np.float32):  # shortest float32 repr: 1e-5, not 9.99999974e-06
        return float(str(value))
    return value.item()


def hf_config(reader, path: Path) -> dict:
    """The config.json a Hugging Face checkpoint of this model would have."""
    arch = _value(reader, "general.architecture", path)
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"{path}: GGUF architecture {arch!r} is not supported (fastdllm reads {', '.join(ARCHITECTURES)})")

    def get(key, default=_MISSING):
        return _value(reader, f"{arch}.{key}", path, default)

    names = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in names:
        raise ModelLoadError(f"{path}: GGUF file has no token_embd.weight tensor")
    if "rope_freqs.weight" in names:  # Llama 3.1-style scaling baked into a tensor, no metadata to rebuild it
        raise UnsupportedModelError(f"{path}: per-dimension RoPE frequency factors (rope_freqs.weight) are not supported")
    n_heads = get("attention.head_count")
    cfg = {
        "model_type": arch,
        "hidden_act": "silu",
        "vocab_size": int(names["token_embd.weight"].shape[-1]),  # GGUF dims are innermost first
        "hidden_size": get("embedding_length"),
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": get("attention.head_count_kv", n_heads),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "rope_theta": get("rope.freq_base", 10000.0),
        "max_position_embeddings": get("context_length"),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
    }
    head_dim = get("attention.key_length", None)
    if head_dim is not None:
        cfg["head_dim"] = head_dim
    head_dim = head_dim or cfg["hidden_size"] // n_heads
    if get("attention.value_length", head_dim) != head_dim or get("rope.dimension_count", head_dim) != head_dim:
        raise UnsupportedModelError(f"{path}: value length or partial rotary dimension differs from the head dimension")
    kind = get("rope.scaling.type", None)
    if kind not in (None, "none"):
        scaling = {"rope_type": kind, "factor": get("rope.scaling.factor", 1.0)}
        original = get("rope.scaling.original_context_length", None)
        if original is not None:
            scaling["original_max_position_embeddings"] = original
        cfg["rope_scaling"] = scaling
    elif get("rope.scale_linear", None) is not None:  # older files
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": get("rope.scale_linear")}

    def token(name):
        return _value(reader, f"tokenizer.ggml.{name}_token_id", path, None)

    cfg["bos_token_id"] = token("bos")
    # llama.cpp also stops at end-of-turn / end-of-message tokens; so should generation here
    eos = list(dict.fromkeys(t for t in (token("eos"), token("eot"), token("eom")) if t is not None))
    cfg["eos_token_id"] = eos[0] if len(eos) == 1 else (eos or None)
    if token("padding") is not None:
        cfg["pad_token_id"] = token("padding")
    return cfg


def hf_tensors(reader, cfg: dict, path: Path, keep_q4: bool = False) -> dict[str, torch.Tensor | Int4Weight]:
    """Every tensor dequantized to float32 (Q4_0/Q4_1 matrices kept as ``Int4Weight`` with
    ``keep_q4``), under its Hugging Face name and in its HF shape.

    Names this module does not know are kept as they are, so the strict shape check that
    follows reports them rather than this module dropping them silently.
    """
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize

    heads = {"q": cfg["num_attention_heads"], "k": cfg["num_key_value_heads"]}
    out: dict[str, torch.Tensor | Int4Weight] = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        name = _hf_name(t.name)
        m = LAYER_NAME.fullmatch(t.name)
        llama_qk = cfg["model_type"] == "llama" and m is not None and m.group(2) in ("attn_q", "attn_k")
        if keep_q4 and t.tensor_type in (Q.Q4_0, Q.Q4_1) and len(shape) == 2:
            q4 = q4_blocks(np.asarray(t.data), t.tensor_type == Q.Q4_1, shape, t.name, path)
            out[name] = q4.map_rows(lambda r: unpermute(r, heads[m.group(2)[-1]])) if llama_qk else q4
            continue
        try:
            w = dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise ModelLoadError(f"{path}: tensor {t.name} has type {t.tensor_type.name}, which the gguf package "
                                 f"cannot dequantize") from e
        except Exception as e:  # e.g. data cut short by a truncated file
            raise ModelLoadError(f"{path}: cannot read tensor {t.name}: {e}") from e
        w = np.asarray(w, dtype=np.float32)
        if not w.flags.writeable:  # F32 data is a view of the read-only file mapping
            w = w.copy()
        try:  # quantized data arrives as [rows, bytes per row]; the float result may need the real shape back
            w = torch.from_numpy(w.reshape(shape))
        except ValueError as e:
            raise ModelLoadError(f"{path}: tensor {t.name} has {w.size} values, not the {shape} it declares") from e
        if llama_qk:
            w = unpermute(w, heads[m.group(2)[-1]])
        out[name] = w
    return out


def q4_blocks(data: np.ndarray, with_min: bool, shape: tuple[int, int], name: str, path: Path) -> Int4Weight:
    """A Q4_0 / Q4_1 matrix as its codes, scales and zero points (no rounding of the file's values).

    A block holds 32 weights: ``d`` (float16), for Q4_1 also ``m`` (float16), then 16 bytes of
    codes, weight j in the low nibble of byte j and weight j + 16 in its high nibble.
    Q4_0: ``w = d (q - 8)``; Q4_1: ``w = d q + m = d (q - 8) + (m + 8 d)``.
    """
    N, K = shape
    head = 4 if with_min else 2
    try:
        blocks = data.reshape(N, K // 32, head + 16)  # [N, G, bytes]
    except ValueError as e:
        raise ModelLoadError(f"{path}: tensor {name} has {data.size} bytes, not the {shape} it declares") from e
    d = np.ascontiguousarray(blocks[..., 0:2]).view(np.float16)[..., 0].astype(np.float32)  # [N, G]
    qs = blocks[..., head:]  # [N, G, 16]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(N, K)  # [N, K] codes 0..15
    if with_min:
        m = np.ascontiguousarray(blocks[..., 2:4]).view(np.float16)[..., 0].astype(np.float32)  # [N, G]
        zero = m + np.float32(8) * d
    else:
        zero = np.zeros_like(d)
    return Int4Weight(torch.from_numpy(q.astype(np.uint8)), torch.from_numpy(d), torch.from_numpy(zero))


def _hf_name(name: str) -> str:
    base, _, kind = name.rpartition(".")
    if base in GLOBAL_TENSORS:
        return f"{GLOBAL_TENSORS[base]}.{kind}"
    m = LAYER_NAME.fullmatch(name)
    if m and m.group(2) in LAYER_TENSORS:
        return f"model.layers.{m.group(1)}.{LAYER_TENSORS[m.group(2)]}.{m.group(3)}"
    return name


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Llama q/k row order: per head it interleaves the two rotary halves
    (rows [a0, b0, a1, b1, ...]); Hugging Face keeps them apart ([a0, a1, ..., b0, b1, ...])."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape).contiguous()


def load_tokenizer(reader, path: Path):
    """A transformers tokenizer built from the GGUF vocabulary, or None if the file has none."""
    if "tokenizer.ggml.tokens" not in reader.fields:
        return None
    # The tokenizer class directly, not AutoTokenizer: that one parses the whole file again for a config.
    from transformers import PreTrainedTokenizerFast

    with quiet_transformers():
        try:
            tok = PreTrainedTokenizerFast.from_pretrained(str(path.parent), gguf_file=path.name)
        except Exception as e:
            raise ModelLoadError(f"{path}: transformers cannot build a tokenizer from this GGUF file: {e}") from e
    template = _value(reader, "tokenizer.chat_template", path, None)
    if template is not None and not tok.chat_template:
        tok.chat_template = template
    return tok
