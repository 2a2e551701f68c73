"""LoRA: adapter-only save, merged vs unmerged loads, fastdllm.load(adapter=...), frozen base."""

from __future__ import annotations

import json

import torch

import fastdllm
from fastdllm.model.attention import DenseAttention, block_causal_mask
from fastdllm.loading import load_checkpoint
from fastdllm.loading.adapter import load_with_adapter
from fastdllm.training import TrainConfig, train
from tests.helpers import make_tiny_checkpoint
from tests.training_helpers import write_ids_data


def logits(model, ids: torch.Tensor, block: int = 8) -> torch.Tensor:
    pos = torch.arange(len(ids))
    with torch.no_grad():
        return model(ids[None], pos[None], DenseAttention(block_causal_mask(pos, pos, block)[None, None],
                                                          model.attn_scale))


def test_lora_adapter_roundtrip(tmp_path):
    base = make_tiny_checkpoint(tmp_path / "base", "qwen2", vocab=200, hidden=32, heads=4, kv_heads=2, inter=64)
    out = tmp_path / "lora"
    result = train(TrainConfig(model=str(base), data=str(write_ids_data(tmp_path / "d.jsonl", vocab=200)),
                               output_dir=str(out), lora=True, lora_r=4, lr=1e-2, block_size=8, seq_len=64,
                               max_steps=3, micro_batch_size=2, export_merged=True, progress=False))
    assert result.steps == 3
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "fastdllm_adapter.json",
            "mask_token_rows.safetensors"} <= files
    assert "model.safetensors" not in files  # the adapter on its own
    meta = json.loads((out / "fastdllm_adapter.json").read_text())
    assert meta["mask_token_id"] == 200 and meta["vocab_size"] == 201 and meta["bd_size"] == 8
    from safetensors.torch import load_file

    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any("qkv_proj" in k for k in adapter) and any("gate_up_proj" in k for k in adapter)

    merged = load_with_adapter(str(base), out, merge=True)
    live = load_with_adapter(str(base), out, merge=False)
    plain = load_checkpoint(base).model
    assert merged.config.is_block_diffusion and merged.config.mask_token_id == 200
    ids = torch.tensor([1, 5, 9, 200, 200, 3, 7, 11, 13, 200, 2])
    a, b = logits(merged.model, ids), logits(live.model, ids)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the adapter changes the model (LoRA B starts at zero, so this shows it trained)
    ids_base = ids.clamp(max=199)
    assert (logits(merged.model, ids_base)[:, :200] - logits(plain, ids_base)).abs().max() > 1e-4

    llm = fastdllm.load(str(base), adapter=str(out))
    assert llm.is_block_diffusion and llm.mask_token_id == 200
    torch.testing.assert_close(logits(llm.model, ids), a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(fastdllm.load(str(out / "merged")).model, ids), a, rtol=1e-5, atol=1e-5)
    direct = llm.generate([[1, 2, 3]], max_new_tokens=5, small_block_size=4, stop_token_ids=[])[0]
    assert len(direct.token_ids) == 5
    quantised = fastdllm.load(str(base), adapter=str(out), quantize="int8")  # quantised after the merge
    assert quantised.model.quantization == "int8" and quantised.mask_token_id == 200
    assert (logits(quantised.model, ids) - a).norm() / a.norm() < 0.05

    # the command line merges the same adapter
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "fastdllm", "generate", "--model", str(base), "--adapter", str(out),
           "--prompt-ids", "1,2,3", "--max-new-tokens", "5", "--small-block-size", "4", "--json"]
    r = subprocess.run(cmd + ["--stop-token-id", "0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ref = llm.generate([[1, 2, 3]], max_new_tokens=5, small_block_size=4, stop_token_ids=[0])[0]
    assert json.loads(r.stdout)["token_ids"] == ref.token_ids
    bad = subprocess.run(cmd[:7] + [str(tmp_path)] + cmd[8:], capture_output=True, text=True)
    assert bad.returncode == 2 and "--adapter" in bad.stderr

    # inference with an adapter needs peft, never the training package
    probe = ("import sys, fastdllm; fastdllm.load(sys.argv[1], adapter=sys.argv[2]); "
             "print(sorted(m for m in sys.modules if m.startswith('fastdllm.training')))")
    r = subprocess.run([sys.executable, "-c", probe, str(base), str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_lora_keeps_base_weights_frozen(tmp_path):
    from fastdllm.training.trainer import Trainer

    base = make_tiny_checkpoint(tmp_path / "base", "llama", vocab=100, hidden=32, heads=4, kv_heads=2, inter=64)
    cfg = TrainConfig(model=str(base), data=str(write_ids_data(tmp_path / "d.jsonl", vocab=100)),
                      output_dir=str(tmp_path / "o"), lora=True, lr=1e-2, block_size=8, seq_len=64, max_steps=2,
                      micro_batch_size=2, progress=False)
    t = Trainer(cfg)
    frozen = {k: v.clone() for k, v in t.model.state_dict().items() if "lora_" not in k}
    trainable = {n for n, p in t.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    t.fit()
    after = t.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
