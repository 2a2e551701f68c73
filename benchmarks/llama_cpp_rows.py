"""llama.cpp's forward time at 1-32 query rows on a random model of a given shape (for bench_sweep.py).

``write_random_gguf`` writes a GGUF of the shape (the ``llama`` architecture for SmolLM2's
config, ``qwen2`` with its q/k/v biases for the Qwen2 ones) with random weights, N(0, 1/fan_in)
matrices and N(0, 1) embeddings from its own seed, every matrix in one llama.cpp format (Q4_0 or
Q8_0: the formats that get llama.cpp's repacked and tinyBLAS multi-row CPU paths; norms and biases
F32), with a placeholder SentencePiece vocabulary of the shape's size (the benchmark feeds token ids,
never text). The weights are not fastdllm's random ones: forward time does not depend on the values.

``forward_ms`` loads it with llama-cpp-python (optional: ``pip install llama-cpp-python``), fills
``context`` positions of the KV cache, and times a forward of T new tokens after them (rewinding the
cache each time), best of ``repeats``, for each T. llama.cpp computes the logits of the last row
only; fastdllm's forwards in the sweep compute min(T, 8) rows (a sub-block's), a small advantage to
llama.cpp at T > 1 (the vocabulary projection of SmolLM2 is about a fifth of a row's work).
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FORMATS = ("Q4_0", "Q8_0")


PROBE = dict(model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, vocab_size=512, tie_word_embeddings=True, rope_theta=10000.0)


@functools.cache  # one probe per process: the sweep asks once per shape
def available() -> str | None:
    """None when llama-cpp-python is installed and decodes a tiny model, else why not. The probe runs
    in a child process: a build that crashes in ``llama_decode`` (seen with a source build of 0.3.36)
    must not take the sweep down with it."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (optional: pip install llama-cpp-python)"
    with tempfile.TemporaryDirectory() as tmp:
        probe = write_random_gguf(PROBE, Path(tmp) / "probe.gguf", "Q8_0")
        code = (f"import llama_cpp; m = llama_cpp.Llama(model_path={str(probe)!r}, n_ctx=32, verbose=False); "
                "m.eval([3, 4, 5])")
        try:
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return "llama-cpp-python did not decode a tiny model within 300 s"
    if r.returncode:
        why = f"signal {-r.returncode}" if r.returncode < 0 else f"exit {r.returncode}"
        return f"llama-cpp-python is installed but crashed decoding a tiny model ({why}): its build is broken here"
    return None


def write_random_gguf(cfg: dict, path: Path, fmt: str, seed: int = 0) -> Path:
    """A GGUF of the shape ``cfg`` (bench_sweep.SHAPES' keys) in llama.cpp format ``fmt``."""
    import gguf

    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    qtype = getattr(gguf.GGMLQuantizationType, fmt)
    arch = "qwen2" if cfg["model_type"] in ("qwen2", "Fast_dLLM_Qwen") else "llama"
    H, I, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    nq, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = H // nq
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(4096)
    w.add_embedding_length(H)
    w.add_block_count(L)
    w.add_feed_forward_length(I)
    w.add_head_count(nq)
    w.add_head_count_kv(nkv)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(d)
    w.add_vocab_size(V)
    w.add_file_type({"Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[fmt])
    w.add_tokenizer_model("llama")  # placeholder pieces: ids are fed directly
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
                     + [f"t{i}" for i in range(V - 259)])
    w.add_token_scores([0.0] * V)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (V - 259))  # unknown, control, byte, normal
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def matrix(name: str, rows: int, cols: int, std: float | None = None) -> None:
        a = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(std or cols ** -0.5)  # [out, in]
        w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)

    def vector(name: str, n: int, value: float | None) -> None:
        w.add_tensor(name, np.full(n, value, np.float32) if value is not None
                     else (0.02 * rng.standard_normal(n)).astype(np.float32))

    matrix("token_embd.weight", V, H, std=1.0)
    for i in range(L):
        b = f"blk.{i}."
        vector(b + "attn_norm.weight", H, 1.0)
        matrix(b + "attn_q.weight", nq * d, H)
        matrix(b + "attn_k.weight", nkv * d, H)
        matrix(b + "attn_v.weight", nkv * d, H)
        if arch == "qwen2":
            for n, size in (("q", nq * d), ("k", nkv * d), ("v", nkv * d)):
                vector(f"{b}attn_{n}.bias", size, None)
        matrix(b + "attn_output.weight", H, nq * d)
        vector(b + "ffn_norm.weight", H, 1.0)
        matrix(b + "ffn_gate.weight", I, H)
        matrix(b + "ffn_up.weight", I, H)
        matrix(b + "ffn_down.weight", H, I)
    vector("output_norm.weight", H, 1.0)
    if not cfg.get("tie_word_embeddings", True):
        matrix("output.weight", V, H)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def forward_ms(gguf_path: Path, rows_list: list[int], context: int, repeats: int, threads: int) -> dict[str, float]:
    """Best-of-``repeats`` ms of one forward of T tokens after ``context`` cached ones, per T."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=context + max(rows_list) + 16, n_batch=max(rows_list),
                          n_ubatch=max(rows_list), n_threads=threads, n_threads_batch=threads, verbose=False)
    try:
        rng = np.random.default_rng(1)
        V = llm.n_vocab()
        llm.reset()
        llm.eval(rng.integers(3, V, context).tolist())
        out = {}
        for t in rows_list:
            query = rng.integers(3, V, t).tolist()
            times = []
            for i in range(repeats + 1):  # one warm-up call
                llm.n_tokens = context  # rewind: eval drops the cache past n_tokens
                t0 = time.perf_counter()
                llm.eval(query)
                if i:
                    times.append(1e3 * (time.perf_counter() - t0))
            out[str(t)] = min(times)
        return out
    finally:
        llm.close()


def version() -> str:
    import llama_cpp

    return llama_cpp.__version__
