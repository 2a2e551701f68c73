"""Trained models export as HF directories that fastdllm (block diffusion) and transformers load."""

from __future__ import annotations

import json

import pytest
import torch

import fastdllm
from fastdllm.api import MASK_TOKEN
from fastdllm.model.attention import DenseAttention, causal_mask
from fastdllm.loading import load_checkpoint
from fastdllm.training import TrainConfig, train
from fastdllm.training.vocab import find_or_add_mask_token
from tests.helpers import make_tiny_checkpoint
from tests.training_helpers import make_tokenizer, write_chat_data, write_ids_data

SMALL = dict(hidden=32, heads=4, kv_heads=2, inter=64)


def causal_logits(model, ids: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(len(ids))
    with torch.no_grad():
        return model(ids[None], pos[None], DenseAttention(causal_mask(pos, pos)[None, None], model.attn_scale))


def hf_logits(path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    with torch.no_grad():
        return m(input_ids=ids[None]).logits[0]


def run(tmp_path, base, data, **kw):
    opts = dict(model=str(base), data=str(data), output_dir=str(tmp_path / "out"), block_size=8, seq_len=64,
                max_steps=2, micro_batch_size=2, lr=1e-3, progress=False)
    opts.update(kw)
    return train(TrainConfig(**opts))


def test_qwen2_export_loads_as_block_diffusion_and_in_transformers(tmp_path):
    base = make_tiny_checkpoint(tmp_path / "base", "qwen2", vocab=300, **SMALL)
    result = run(tmp_path, base, write_ids_data(tmp_path / "d.jsonl", vocab=300))
    out = result.output_dir
    assert result.steps == 2 and result.loss > 0 and result.tokens_per_s > 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["bd_size"] == 8 and cfg["mask_token_id"] == 300
    assert cfg["vocab_size"] == 301
    assert (out / "generation_config.json").is_file()

    llm = fastdllm.load(str(out))
    assert llm.is_block_diffusion and llm.mask_token_id == 300 and llm.config.bd_size == 8
    res = llm.generate([[1, 2, 3, 4, 5]], max_new_tokens=6, small_block_size=4, stop_token_ids=[])[0]
    assert len(res.token_ids) == 6 and 300 not in res.token_ids

    ids = torch.randint(0, 301, (20,), generator=torch.Generator().manual_seed(0))
    ours = causal_logits(llm.model, ids)
    torch.testing.assert_close(hf_logits(out, ids), ours, rtol=1e-4, atol=1e-4)
    # the weights moved, and the mask row exists in both matrices
    before = load_checkpoint(base).model
    assert not torch.equal(before.embed_tokens.weight, llm.model.embed_tokens.weight[:300])
    assert llm.model.lm_head.weight.shape[0] == 301


def test_llama_tied_with_tokenizer_gets_mask_token(tmp_path):
    base = make_tiny_checkpoint(tmp_path / "base", "llama", vocab=46, tie=True, **SMALL)
    make_tokenizer().save_pretrained(str(base))
    result = run(tmp_path, base, write_chat_data(tmp_path / "chat.jsonl"), max_steps=2)
    out = result.output_dir
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["mask_token_id"] == 46 and cfg["vocab_size"] == 47
    llm = fastdllm.load(str(out))
    assert llm.tokenizer.convert_tokens_to_ids(MASK_TOKEN) == 46 == llm.mask_token_id
    assert MASK_TOKEN in llm.tokenizer.all_special_tokens or MASK_TOKEN in llm.tokenizer.get_added_vocab()
    ids = torch.randint(0, 47, (12,), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(hf_logits(out, ids), causal_logits(llm.model, ids), rtol=1e-4, atol=1e-4)


def test_mask_token_rows_start_as_mean(tmp_path):
    base = make_tiny_checkpoint(tmp_path / "base", "qwen2", vocab=64, **SMALL)
    model = load_checkpoint(base).model
    old_emb, old_head = model.embed_tokens.weight.clone(), model.lm_head.weight.clone()
    tok = make_tokenizer()  # 46 tokens, no |<MASK>|: the new id 46 is an existing (unused) row
    mask = find_or_add_mask_token(model, tok)
    assert mask.id == 46 and not mask.resized and model.cfg.vocab_size == 64
    torch.testing.assert_close(model.embed_tokens.weight[46], old_emb.mean(0))
    torch.testing.assert_close(model.lm_head.weight[46], old_head.mean(0))
    assert torch.equal(model.embed_tokens.weight[:46], old_emb[:46])
    # no tokenizer: append a row
    model = load_checkpoint(base).model
    mask = find_or_add_mask_token(model, None)
    assert mask.id == 64 and mask.resized and model.embed_tokens.weight.shape == (65, 32)
    torch.testing.assert_close(model.embed_tokens.weight[64], old_emb.mean(0))
    # the checkpoint's own mask token wins
    fd = make_tiny_checkpoint(tmp_path / "fd", "fast_dllm", vocab=64, **SMALL)
    assert find_or_add_mask_token(load_checkpoint(fd).model, tok).id == 63


def test_ar_from_scratch_learns_and_exports_plain_ar(tmp_path):
    config = json.loads((make_tiny_checkpoint(tmp_path / "cfg", "qwen2", vocab=64, **SMALL) / "config.json")
                        .read_text())
    data = tmp_path / "rep.jsonl"
    data.write_text("".join(json.dumps({"input_ids": [1, 2, 3, 4, 5, 6, 7, 8] * 3}) + "\n" for _ in range(8)))
    result = train(TrainConfig(init_from_scratch=True, model_config=config, data=str(data), objective="ar",
                               output_dir=str(tmp_path / "ar"), max_steps=30, micro_batch_size=4, lr=3e-3,
                               seq_len=64, progress=False))
    assert result.losses[-1] < 0.5 * result.losses[0]
    cfg = json.loads((result.output_dir / "config.json").read_text())
    assert "bd_size" not in cfg and cfg["vocab_size"] == 64
    llm = fastdllm.load(str(result.output_dir))
    assert not llm.is_block_diffusion
    assert llm.generate([[1, 2, 3, 4]], max_new_tokens=4, stop_token_ids=[])[0].token_ids == [5, 6, 7, 8]


@pytest.mark.parametrize("complementary", [True, False])
def test_diffusion_training_lowers_the_loss(tmp_path, complementary):
    base = make_tiny_checkpoint(tmp_path / "base", "qwen2", vocab=64, **SMALL)
    data = tmp_path / "rep.jsonl"
    data.write_text("".join(json.dumps({"input_ids": list(range(1, 17)) * 2}) + "\n" for _ in range(8)))
    result = run(tmp_path, base, data, max_steps=40, micro_batch_size=4, lr=3e-3,
                 complementary_mask=complementary)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.5 * first
