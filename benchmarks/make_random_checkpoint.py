"""Write a random Fast_dLLM_Qwen checkpoint in the released Hugging Face layout.

The default dimensions are SmolLM2-135M's (hidden 576, intermediate 1536, 30 layers, 9 query
heads, 3 KV heads) on the Qwen2 body that the released Fast-dLLM v2 models use (QKV bias,
untied ``lm_head``, RoPE theta 1e6), with the real Qwen2.5 tokenizer files copied from the
released 7B checkpoint (vocabulary 151936, ``|<MASK>|`` = 151665). It is a stand-in for the
real model when benchmarking speed: same code paths, same shapes per layer, no download.

    python benchmarks/make_random_checkpoint.py /tmp/bench_ckpt
    python benchmarks/make_random_checkpoint.py /tmp/tiny --layers 2 --confidence-scale 1
    # SmolLM2's own vocabulary (49,152 tokens; a tokenizer directory saved from its GGUF, see
    # benchmarks/smollm2_tokenizer.py), the mask on its last token:
    python benchmarks/make_random_checkpoint.py /tmp/bench_ckpt49k --vocab-size 49152 \
        --tokenizer-dir /tmp/smollm2_tokenizer --mask-token-id 49151 --bos-token-id 1 --eos-token-id 2

What is written to OUT_DIR:

- ``model.safetensors``: float32 (or ``--save-dtype``) weights under the Hugging Face names
  (``model.layers.N.self_attn.q_proj.weight`` ...), built with ``transformers.Qwen2Config`` /
  ``Qwen2ForCausalLM`` and then re-initialised from a seeded generator in sorted-name order,
  so the file depends only on the arguments (same arguments -> byte-identical file):
  matrices ~ N(0, 1/fan_in), embeddings ~ N(0, 1), RMSNorm weights 1, biases ~ N(0, 0.02^2).
- ``config.json``: the key set of the released config (``model_type: Fast_dLLM_Qwen``,
  ``architectures: [Fast_dLLM_QwenForCausalLM]``, ``bd_size: 32``, top-level ``rope_theta``,
  ``layer_types`` ...), written by this script rather than by transformers' serializer so
  that it keeps the transformers-4.x layout the released checkpoints have. There is no
  ``auto_map``: the released ``modeling.py`` / ``configuration.py`` are not shipped here
  (``benchmarks/bench_reference.py`` adds them, with ``auto_map``, to a temporary view).
- the tokenizer files and ``generation_config.json`` of ``--tokenizer-dir``.

``--confidence-scale S`` multiplies ``lm_head`` by S. With the initialisation above the final
hidden state has unit RMS and each logit is a dot product with a random row of norm ~1, so
the logits of a position are roughly i.i.d. N(0, S^2) over the vocabulary. S = 1 gives a
model that is never confident (top probability ~1e-4: block diffusion then decodes exactly
one token per forward); S = 10 (the default) puts the top probability above the 0.9
threshold at roughly a quarter of the positions, so block-diffusion decoding sometimes fills
several positions in one forward, as a trained model does. (With 151936 i.i.d. Gaussian
logits: S = 6 -> ~6 % of positions above 0.9, 10 -> ~25 %, 15 -> ~44 %, 20 -> ~57 %.)

The ``lm_head`` row of the mask token is zeroed (``--keep-mask-row`` keeps it): the
released ``generate`` takes a plain argmax over the whole vocabulary, so a random mask row
could let it "decode" the mask token, which fastdllm never emits; a zero logit cannot win
against 151935 random ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOKENIZER_DIR = REPO_ROOT.parent / "shared" / "fast_dllm_v2_7b"
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json",
                   "special_tokens_map.json", "chat_template.jinja", "generation_config.json")
SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MASK_TOKEN_ID = 151665
BOS_ID, EOS_ID = 151643, 151645


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path, help="directory to write (created; existing files are overwritten)")
    p.add_argument("--vocab-size", type=int, default=151936)
    p.add_argument("--hidden-size", type=int, default=576)
    p.add_argument("--intermediate-size", type=int, default=1536)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--max-position-embeddings", type=int, default=8192)
    p.add_argument("--rope-theta", type=float, default=1e6)
    p.add_argument("--bd-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--confidence-scale", type=float, default=10.0,
                   help="multiply lm_head by this (logit std ~ this value; 1 = never confident)")
    p.add_argument("--keep-mask-row", action="store_true", help="do not zero the mask token's lm_head row")
    p.add_argument("--mask-token-id", type=int, default=MASK_TOKEN_ID,
                   help="written to config.json as mask_token_id when it is not the released one")
    p.add_argument("--bos-token-id", type=int, default=BOS_ID)
    p.add_argument("--eos-token-id", type=int, default=EOS_ID)
    p.add_argument("--save-dtype", choices=sorted(SAVE_DTYPES), default="float32")
    p.add_argument("--tokenizer-dir", type=Path, default=DEFAULT_TOKENIZER_DIR,
                   help="where the tokenizer files and generation_config.json are copied from "
                        f"(default {DEFAULT_TOKENIZER_DIR}); pass '' to write no tokenizer")
    return p.parse_args(argv)


def released_config(a: argparse.Namespace) -> dict:
    """config.json with the keys (and order) of the released Fast-dLLM v2 config."""
    cfg = {
        "architectures": ["Fast_dLLM_QwenForCausalLM"],
        "attention_dropout": 0.0,
        "bd_size": a.bd_size,
        "bos_token_id": a.bos_token_id,
        "conplemenrary_mask": True,  # sic: the released key
        "eos_token_id": a.eos_token_id,
        "hidden_act": "silu",
        "hidden_size": a.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": a.intermediate_size,
        "layer_types": ["full_attention"] * a.layers,
        "max_position_embeddings": a.max_position_embeddings,
        "max_window_layers": a.layers,
        "model_type": "Fast_dLLM_Qwen",
        "num_attention_heads": a.heads,
        "num_hidden_layers": a.layers,
        "num_key_value_heads": a.kv_heads,
        "pad_token_id": a.eos_token_id,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": a.rope_theta,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": a.save_dtype,
        "transformers_version": "4.53.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": a.vocab_size,
    }
    if a.mask_token_id != MASK_TOKEN_ID:  # another vocabulary (e.g. SmolLM2's): say where the mask is
        cfg["mask_token_id"] = a.mask_token_id
    return cfg


@torch.no_grad()
def build_state_dict(a: argparse.Namespace) -> dict[str, torch.Tensor]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if a.hidden_size % a.heads or a.heads % a.kv_heads:
        raise SystemExit("hidden size must divide into heads, and heads into KV-head groups")
    cfg = Qwen2Config(vocab_size=a.vocab_size, hidden_size=a.hidden_size, intermediate_size=a.intermediate_size,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                      max_position_embeddings=a.max_position_embeddings, tie_word_embeddings=False,
                      rms_norm_eps=1e-6, bos_token_id=a.bos_token_id, eos_token_id=a.eos_token_id,
                      pad_token_id=a.eos_token_id)
    torch.manual_seed(a.seed)
    model = Qwen2ForCausalLM(cfg).to(torch.float32)
    gen = torch.Generator().manual_seed(a.seed)
    params = dict(model.named_parameters())
    for name in sorted(params):  # an order that does not depend on how transformers builds the module
        p = params[name]
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name.endswith(".bias"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        elif "embed_tokens" in name:
            p.copy_(torch.randn(p.shape, generator=gen))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    head = params["lm_head.weight"]
    head.mul_(a.confidence_scale)
    if not a.keep_mask_row and 0 <= a.mask_token_id < a.vocab_size:
        head[a.mask_token_id].zero_()
    dt = SAVE_DTYPES[a.save_dtype]
    sd = {k: v.detach().to(dt).contiguous() for k, v in model.state_dict().items()
          if not k.endswith("rotary_emb.inv_freq")}
    if "lm_head.weight" not in sd or sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr():
        raise SystemExit("expected an untied lm_head")
    return sd


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    out: Path = a.out_dir
    out.mkdir(parents=True, exist_ok=True)
    sd = build_state_dict(a)
    save_file(dict(sorted(sd.items())), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(released_config(a), indent=2) + "\n")
    copied = []
    if str(a.tokenizer_dir):
        src = Path(a.tokenizer_dir)
        if not (src / "tokenizer_config.json").exists():
            raise SystemExit(f"{src / 'tokenizer_config.json'} not found (pass --tokenizer-dir)")
        for name in TOKENIZER_FILES:  # a fast tokenizer's directory may have tokenizer.json only
            if (src / name).exists():
                shutil.copyfile(src / name, out / name)
                copied.append(name)
        added = src / "added_tokens.json"
        mask = json.loads(added.read_text()).get("|<MASK>|") if added.exists() else None
        if mask is not None and mask != a.mask_token_id:
            print(f"warning: the tokenizer's |<MASK>| is {mask}, not {a.mask_token_id}", file=sys.stderr)
    n_params = sum(t.numel() for t in sd.values())
    print(f"wrote {out}: {n_params / 1e6:.1f}M parameters ({a.save_dtype}), {a.layers} layers, "
          f"vocab {a.vocab_size}, confidence scale {a.confidence_scale:g}"
          + (f", tokenizer files: {len(copied)}" if copied else ", no tokenizer"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
