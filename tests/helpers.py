"""Reusable test helpers: tiny random Hugging Face checkpoints and a transformers oracle.

Everything here is a plain function so it can be imported directly
(``from tests.helpers import make_tiny_checkpoint``) or used through the fixtures in
``tests/conftest.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

FAMILIES = ("qwen2", "llama", "fast_dllm")

#: config.json keys the released Fast-dLLM v2 checkpoint carries on top of a Qwen2 config.
FAST_DLLM_MODEL_TYPE = "Fast_dLLM_Qwen"
DATA = Path(__file__).resolve().parent / "data"
#: The released Fast-dLLM v2 7B's small files (config, weight index, tokenizer settings, chat template);
#: not its weights, vocab.json or merges.txt (see tests/data/README.md).
RELEASE_7B = DATA / "fast_dllm_v2_7b"
#: Decoding vectors recorded with the released decoder on a tiny checkpoint (see its README.md).
CONFORMANCE_DIR = DATA / "conformance"
FAST_DLLM_ARCH = "Fast_dLLM_QwenForCausalLM"
FAST_DLLM_ONLY_KEYS = ("bd_size", "mask_token_id", "auto_map", "conplemenrary_mask")


def _config_class(family: str):
    from transformers import LlamaConfig, Qwen2Config

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: use one of {FAMILIES}")
    return LlamaConfig if family == "llama" else Qwen2Config


def _model_class(family: str):
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    return LlamaForCausalLM if family == "llama" else Qwen2ForCausalLM


@torch.no_grad()
def randomize_weights(model: torch.nn.Module, seed: int = 0, lm_head_scale: float = 1.0) -> None:
    """Give every parameter a non-trivial random value (seeded).

    transformers initialises biases to zero and norms to one, which would hide bugs in how
    those tensors are loaded; here matrices get std 1/sqrt(fan_in), embeddings std 1, norm
    weights 1 + N(0, 0.1) and biases N(0, 0.1), so that each tensor visibly affects the logits.
    """
    g = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=True):
        if id(p) in seen:
            continue
        seen.add(id(p))
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if name.endswith("norm.weight"):
            value = 1.0 + 0.1 * noise
        elif name.endswith(".bias"):
            value = 0.1 * noise
        elif "embed_tokens" in name:
            value = noise
        else:
            value = noise / math.sqrt(p.shape[-1])
        p.copy_(value.to(p.dtype))
    if lm_head_scale != 1.0:
        model.get_output_embeddings().weight.mul_(lm_head_scale)  # shared with embed_tokens if tied


def make_tiny_checkpoint(
    directory: str | Path,
    family: str = "qwen2",
    *,
    vocab: int = 512,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    inter: int = 160,
    tie: bool = False,
    shard: bool = False,
    seed: int = 0,
    max_pos: int = 1024,
    confident: bool = False,
    confidence_scale: float = 4.0,
    head_dim: int | None = None,
    rope_theta: float = 10000.0,
    rope_scaling: dict | None = None,
    legacy_rope: bool | None = None,
    attention_bias: bool | None = None,
    mlp_bias: bool = False,
    eos_token_id: int | list[int] | None = None,
) -> Path:
    """Build a tiny random transformers model of ``family`` and save it in the HF layout.

    ``family``: "qwen2" and "fast_dllm" use Qwen2ForCausalLM, "llama" LlamaForCausalLM.
    For "fast_dllm" config.json is rewritten into the released Fast-dLLM v2 layout
    (``model_type: Fast_dLLM_Qwen``, ``bd_size: 32``, ``mask_token_id = vocab - 1``).

    ``shard``: force several safetensors shards (writes ``model.safetensors.index.json``).
    ``confident``: multiply the output projection by ``confidence_scale`` so greedy decoding
    usually has a clear winner.
    ``rope_scaling``: RoPE scaling parameters without ``rope_theta`` (e.g. llama3).
    ``legacy_rope``: write RoPE settings the way transformers 4.x did (top-level
    ``rope_theta`` + ``rope_scaling``) instead of the v5 ``rope_parameters`` dict; the
    released Fast-dLLM checkpoint uses the legacy layout, so it is the default there.
    ``attention_bias``: llama only (q/k/v/o biases); Qwen2 always has q/k/v biases.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if legacy_rope is None:
        legacy_rope = family == "fast_dllm"
    rope_parameters = {"rope_type": "default", **(rope_scaling or {}), "rope_theta": float(rope_theta)}
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=inter,
        tie_word_embeddings=tie,
        max_position_embeddings=max_pos,
        rope_parameters=rope_parameters,
        rms_norm_eps=1e-6,
    )
    if head_dim is not None:
        kwargs["head_dim"] = head_dim
    if family == "llama":
        kwargs["attention_bias"] = bool(attention_bias)
        kwargs["mlp_bias"] = mlp_bias
    elif attention_bias is False or mlp_bias:
        raise ValueError("Qwen2 always has q/k/v biases and no MLP bias")
    if eos_token_id is not None:
        kwargs["eos_token_id"] = eos_token_id
    config = _config_class(family)(**kwargs)

    torch.manual_seed(seed)
    model = _model_class(family)(config).to(torch.float32)
    randomize_weights(model, seed, confidence_scale if confident else 1.0)
    model.save_pretrained(directory, max_shard_size="100KB" if shard else "10GB")
    if shard:
        assert (directory / "model.safetensors.index.json").exists(), "sharding did not happen"
    else:
        assert (directory / "model.safetensors").exists()

    cfg_file = directory / "config.json"
    cfg = json.loads(cfg_file.read_text())
    if legacy_rope:
        params = dict(cfg.pop("rope_parameters", None) or rope_parameters)
        cfg["rope_theta"] = float(params.pop("rope_theta", rope_theta))
        cfg["rope_scaling"] = params if params.get("rope_type", "default") != "default" else None
    if family == "fast_dllm":
        cfg["model_type"] = FAST_DLLM_MODEL_TYPE
        cfg["architectures"] = [FAST_DLLM_ARCH]
        cfg["auto_map"] = {
            "AutoConfig": "configuration.Fast_dLLM_QwenConfig",
            "AutoModel": "modeling.Fast_dLLM_QwenModel",
            "AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM",
        }
        cfg["bd_size"] = 32
        cfg["mask_token_id"] = vocab - 1
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return directory


def hf_config_dict(directory: str | Path) -> dict:
    return json.loads((Path(directory) / "config.json").read_text())


def hf_reference_model(directory: str | Path, dtype: torch.dtype = torch.float64):
    """Load ``directory`` with transformers (SDPA attention, eval mode) as a numerical oracle.

    Fast-dLLM directories are loaded as Qwen2ForCausalLM with a config converted on the fly
    (their ``auto_map`` points at remote code that is not there).
    """
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    directory = Path(directory)
    raw = hf_config_dict(directory)
    if raw.get("model_type") == FAST_DLLM_MODEL_TYPE:
        d = {k: v for k, v in raw.items()
             if k not in FAST_DLLM_ONLY_KEYS + ("model_type", "architectures", "transformers_version")}
        config = Qwen2Config(**d)
        model = Qwen2ForCausalLM.from_pretrained(directory, config=config, dtype=dtype, attn_implementation="sdpa")
    else:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


@torch.no_grad()
def hf_logits(model, ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Causal logits [T, vocab] of the transformers model for one sequence ``ids`` [T]."""
    if positions is None:
        positions = torch.arange(ids.shape[0])
    out = model(input_ids=ids[None], position_ids=positions[None], use_cache=False)
    return out.logits[0]


def random_ids(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g)


def release_like_tokenizer(vocab_size: int = 1200):
    """A small byte-level BPE tokenizer set up like the released Fast-dLLM v2 (Qwen2.5) one.

    Same pre-tokenizer (Qwen2's split), the release's 23 added tokens in its order and with its
    special flags (``<|endoftext|>`` ... ``|<MASK>|``), EOS ``<|im_end|>``, pad ``<|endoftext|>``, no
    BOS and the release's chat template; only the learned merges are fewer (trained here in well
    under a second), so the ids differ from the release's 151643+.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from examples.word_problems import problems as wp
    from examples.word_problems.tokenizer import SPLIT_PATTERN, corpus_texts

    settings = json.loads((RELEASE_7B / "tokenizer_config.json").read_text())
    added = [settings["added_tokens_decoder"][k] for k in sorted(settings["added_tokens_decoder"], key=int)]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # word problems, English prose (the default model's card) and the template's system prompt: so that
    # the tests' chat prompts take a few dozen tokens, as with the release's tokenizer
    prose = (Path(__file__).resolve().parents[1] / "fastdllm" / "models" / "word_problems" / "README.md").read_text()
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    tk.train_from_iterator([*corpus_texts(wp.make_split(300, seed=0, held_out=False)), prose, system * 50], trainer)
    # after the learned vocabulary, as in the release (its added tokens follow the 151643 BPE tokens)
    tk.add_tokens([AddedToken(a["content"], special=a["special"], normalized=False) for a in added])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=settings["eos_token"],
                                  pad_token=settings["pad_token"],
                                  additional_special_tokens=settings["additional_special_tokens"])
    tok.chat_template = (RELEASE_7B / "chat_template.jinja").read_text()
    return tok


def make_tiny_chat_checkpoint(directory: str | Path) -> Path:
    """A tiny random, confident Fast-dLLM checkpoint with a release-like tokenizer and the release's chat
    template and generation config (``release_like_tokenizer``). As in the release, the model's
    vocabulary is padded past the tokenizer's (to a multiple of 64); config.json's mask, EOS and BOS ids
    are the tokenizer's ``|<MASK>|``, ``<|im_end|>`` and ``<|endoftext|>``. Needs nothing outside the
    repository."""
    directory = Path(directory)
    tok = release_like_tokenizer()
    vocab = -(-len(tok) // 64) * 64
    d = make_tiny_checkpoint(directory, "fast_dllm", vocab=vocab, hidden=16, layers=1, heads=2, kv_heads=1,
                             inter=32, confident=True, max_pos=256)
    ids = {name: tok.convert_tokens_to_ids(name) for name in ("<|endoftext|>", "<|im_end|>", "|<MASK>|")}
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(mask_token_id=ids["|<MASK>|"], eos_token_id=ids["<|im_end|>"], bos_token_id=ids["<|endoftext|>"])
    (d / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tok.save_pretrained(d)
    # the release's generation settings, its ids mapped to this tokenizer's (EOS: <|im_end|>, then <|endoftext|>)
    gen = json.loads((RELEASE_7B / "generation_config.json").read_text())
    gen.update(bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
               eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]])
    (d / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return d


def make_tiny_word_checkpoint(directory: str | Path, problems: int = 300, seed: int = 0) -> Path:
    """A tiny random, confident block-diffusion checkpoint with a real tokenizer and chat template.

    The tokenizer is the default model's byte-level BPE (``examples/word_problems/tokenizer.py``),
    trained here in a second on a few hundred word problems; the model's vocabulary is the
    tokenizer's, its mask and EOS ids the tokenizer's ``|<MASK>|`` and ``<|im_end|>``. Five
    held-out problems go to ``heldout.jsonl``, as in the shipped default model. Needs nothing
    outside the repository (unlike ``make_tiny_chat_checkpoint``).
    """
    from examples.word_problems import problems as wp
    from examples.word_problems import tokenizer as wt

    directory = Path(directory)
    tok = wt.train_tokenizer(wt.corpus_texts(wp.make_split(problems, seed=seed, held_out=False)), vocab_size=400)
    vocab = len(tok)
    make_tiny_checkpoint(directory, "fast_dllm", vocab=vocab, hidden=32, layers=2, heads=2, kv_heads=1, inter=64,
                         confident=True, max_pos=512, seed=seed)
    cfg_file = directory / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["mask_token_id"] = tok.convert_tokens_to_ids(wt.MASK)
    cfg["eos_token_id"] = tok.convert_tokens_to_ids(wt.EOS)
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tok.save_pretrained(directory)
    with (directory / "heldout.jsonl").open("w") as f:
        for p in wp.make_split(5, seed=seed, held_out=True):
            f.write(json.dumps({"question": p.question, "kind": p.kind}) + "\n")
    return directory
