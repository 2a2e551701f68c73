"""Checkpoint loading: sharding, strict tensor checks, errors, hub-cache resolution, and the
real Fast-dLLM v2 config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastdllm.model.attention import DenseAttention, causal_mask
from fastdllm.model.config import ModelConfig
from fastdllm.errors import ModelLoadError, UnsupportedModelError
from fastdllm.loading import load_checkpoint
from fastdllm.loading.weights import expected_hf_shapes
from tests.helpers import RELEASE_7B as REAL_DIR, make_tiny_checkpoint, random_ids


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A single-file and a sharded checkpoint with identical weights (never modified)."""
    root = tmp_path_factory.mktemp("pristine")
    single = make_tiny_checkpoint(root / "single", "qwen2", seed=3)
    sharded = make_tiny_checkpoint(root / "sharded", "qwen2", seed=3, shard=True)
    return single, sharded


@pytest.fixture
def single_copy(pristine, tmp_path):
    """A private, modifiable copy of the single-file checkpoint."""
    return Path(shutil.copytree(pristine[0], tmp_path / "ckpt"))


def rewrite_tensors(file: Path, edit) -> None:
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def logits(model, n: int = 16) -> torch.Tensor:
    ids, pos = random_ids(n, model.cfg.vocab_size, seed=11), torch.arange(n)
    with torch.no_grad():
        return model(ids[None], pos[None], DenseAttention(causal_mask(pos, pos)[None, None], model.attn_scale))


# ---------------------------------------------------------------------------------------------
# Sharding


def test_sharded_matches_single_file(pristine):
    single, sharded = pristine
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (sharded / "model.safetensors").exists()
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)

    a, b = load_checkpoint(single), load_checkpoint(sharded)
    assert a.config.raw == b.config.raw
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert torch.equal(logits(a.model), logits(b.model))


def test_missing_shard_file(pristine, tmp_path):
    ckpt = Path(shutil.copytree(pristine[1], tmp_path / "sharded"))
    victim = sorted(ckpt.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(ModelLoadError, match=victim.name):
        load_checkpoint(ckpt)


def test_tensor_missing_from_a_shard(pristine, tmp_path):
    """The index lists a tensor that its shard does not hold."""
    ckpt = Path(shutil.copytree(pristine[1], tmp_path / "sharded"))
    weight_map = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.1.self_attn.v_proj.bias"
    rewrite_tensors(ckpt / weight_map[name], lambda t: t.pop(name))
    with pytest.raises(ModelLoadError, match=r"missing .*" + name.replace(".", r"\.")):
        load_checkpoint(ckpt)


# ---------------------------------------------------------------------------------------------
# Strict tensor checks


def test_missing_tensor(single_copy):
    name = "model.layers.1.mlp.up_proj.weight"
    rewrite_tensors(single_copy / "model.safetensors", lambda t: t.pop(name))
    with pytest.raises(ModelLoadError, match=r"missing 1 tensor\(s\): " + name.replace(".", r"\.")):
        load_checkpoint(single_copy)


def test_missing_bias_is_an_error(single_copy):
    """Qwen2 has q/k/v biases: a checkpoint without them does not match its config."""
    rewrite_tensors(single_copy / "model.safetensors", lambda t: t.pop("model.layers.0.self_attn.q_proj.bias"))
    with pytest.raises(ModelLoadError, match=r"model\.layers\.0\.self_attn\.q_proj\.bias"):
        load_checkpoint(single_copy)


def test_extra_tensor(single_copy):
    name = "model.layers.0.self_attn.extra_proj.weight"
    rewrite_tensors(single_copy / "model.safetensors", lambda t: t.__setitem__(name, torch.zeros(3, 4)))
    with pytest.raises(ModelLoadError, match=r"unexpected 1 tensor\(s\): " + name.replace(".", r"\.")):
        load_checkpoint(single_copy)


def test_extra_layer_is_unexpected(single_copy):
    """A checkpoint with more layers than its config says."""
    def add_layer(t):
        for k in [k for k in t if k.startswith("model.layers.1.")]:
            t[k.replace("layers.1.", "layers.2.")] = t[k].clone()
    rewrite_tensors(single_copy / "model.safetensors", add_layer)
    with pytest.raises(ModelLoadError, match=r"unexpected \d+ tensor\(s\): model\.layers\.2\."):
        load_checkpoint(single_copy)


def test_wrong_shape(single_copy):
    name = "model.layers.0.self_attn.k_proj.weight"  # (2 kv heads * 16, 64)
    rewrite_tensors(single_copy / "model.safetensors", lambda t: t.__setitem__(name, torch.zeros(31, 64)))
    with pytest.raises(ModelLoadError, match=r"wrong shape: " + name.replace(".", r"\.") + r" \(31, 64\)") as e:
        load_checkpoint(single_copy)
    assert "(32, 64)" in str(e.value)  # the expected shape is reported too


def test_config_disagreeing_with_weights(single_copy):
    cfg_file = single_copy / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["intermediate_size"] = 128
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"mlp\.(down|gate|up)_proj\.weight"):
        load_checkpoint(single_copy)


def test_inv_freq_extras_are_ignored(pristine, single_copy):
    def add(t):
        t["model.rotary_emb.inv_freq"] = torch.ones(8)
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
        t["model.layers.1.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    rewrite_tensors(single_copy / "model.safetensors", add)
    got = load_checkpoint(single_copy).model
    ref = load_checkpoint(pristine[0]).model
    assert torch.equal(logits(got), logits(ref))  # the bogus inv_freq values were not used


def test_tied_checkpoint_may_store_lm_head(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "tied", "llama", tie=True)
    clean = load_checkpoint(ckpt).model
    rewrite_tensors(ckpt / "model.safetensors",
                    lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"].clone()))
    model = load_checkpoint(ckpt).model
    assert model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()
    assert torch.equal(logits(model), logits(clean))


def test_untied_checkpoint_needs_lm_head(single_copy):
    rewrite_tensors(single_copy / "model.safetensors", lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ModelLoadError, match=r"lm_head\.weight"):
        load_checkpoint(single_copy)


def test_corrupt_safetensors(single_copy):
    f = single_copy / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load_checkpoint(single_copy)


def test_no_weights(single_copy):
    (single_copy / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load_checkpoint(single_copy)


# ---------------------------------------------------------------------------------------------
# Configs, paths and options


def test_unsupported_model_type(single_copy):
    cfg_file = single_copy / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["model_type"] = "gpt2"
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        load_checkpoint(single_copy)
    assert issubclass(UnsupportedModelError, ModelLoadError)


def test_missing_config(single_copy):
    (single_copy / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_checkpoint(single_copy)


@pytest.mark.parametrize("kind", ["absolute", "relative", "nested"])
def test_nonexistent_path(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = {"absolute": str(tmp_path / "no-such-model"), "relative": "./no-such-model",
              "nested": "no/such/model"}[kind]
    with pytest.raises(ModelLoadError, match="not found"):
        load_checkpoint(source)


def test_plain_file_is_not_a_checkpoint(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="neither a checkpoint directory nor a .gguf"):
        load_checkpoint(f)


@pytest.mark.parametrize("dtype", ["float8", "int8", "bf17", torch.int32])
def test_bad_dtype(dtype, pristine):
    with pytest.raises(ModelLoadError, match="dtype"):
        load_checkpoint(pristine[0], dtype=dtype)


@pytest.mark.parametrize("dtype,expected", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                            ("double", torch.float64), (torch.float32, torch.float32),
                                            (None, torch.float32)])
def test_dtype_aliases(dtype, expected, pristine):
    assert load_checkpoint(pristine[0], dtype=dtype).model.dtype == expected


def test_bad_device(pristine):
    with pytest.raises(ModelLoadError, match="device"):
        load_checkpoint(pristine[0], device="nonsense")


def test_checkpoint_metadata(pristine):
    ckpt = load_checkpoint(pristine[0])
    assert ckpt.path == pristine[0]
    assert ckpt.tokenizer is None  # the tiny checkpoints have no tokenizer files
    assert isinstance(ckpt.generation_config, dict)
    assert ckpt.config.model_type == "qwen2" and not ckpt.config.is_block_diffusion
    assert ckpt.model.cfg is ckpt.config
    assert not ckpt.model.training


# ---------------------------------------------------------------------------------------------
# Hub ids resolved from a local cache, offline

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty HF hub cache in tmp_path, with offline mode on (env and huggingface_hub's constants,
    which are read from the environment only at import time)."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert hf_constants.is_offline_mode()
    return cache


def put_in_cache(cache: Path, repo_id: str, source: Path, commit: str = COMMIT) -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    return snapshot


def test_hub_id_from_offline_cache(offline_hub, pristine):
    snapshot = put_in_cache(offline_hub, "tiny-org/tiny-qwen", pristine[1])  # sharded
    ckpt = load_checkpoint("tiny-org/tiny-qwen")
    assert ckpt.path.resolve() == snapshot.resolve()
    assert torch.equal(logits(ckpt.model), logits(load_checkpoint(pristine[0]).model))


def test_hub_id_with_commit_revision(offline_hub, pristine):
    snapshot = put_in_cache(offline_hub, "tiny-org/tiny-qwen", pristine[0])
    ckpt = load_checkpoint("tiny-org/tiny-qwen", revision=COMMIT)
    assert ckpt.path.resolve() == snapshot.resolve()


def test_hub_id_absent_offline(offline_hub, pristine):
    put_in_cache(offline_hub, "tiny-org/tiny-qwen", pristine[0])
    with pytest.raises(ModelLoadError, match=r"(?i)offline|cache") as e:
        load_checkpoint("tiny-org/not-cached")
    assert "tiny-org/not-cached" in str(e.value)


def test_hub_id_unknown_branch_offline(offline_hub, pristine):
    put_in_cache(offline_hub, "tiny-org/tiny-qwen", pristine[0])
    with pytest.raises(ModelLoadError, match=r"(?i)offline|cache"):
        load_checkpoint("tiny-org/tiny-qwen", revision="no-such-branch")


# ---------------------------------------------------------------------------------------------
# The released Fast-dLLM v2 7B config


def test_real_fast_dllm_config_and_index():
    cfg = ModelConfig.from_file(REAL_DIR / "config.json")
    assert cfg.model_type == "Fast_dLLM_Qwen" and cfg.is_block_diffusion and cfg.bd_size == 32
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (3584, 28, 28, 4)
    assert cfg.head_dim == 128 and cfg.vocab_size == 152064 and cfg.intermediate_size == 18944
    assert cfg.attention_bias and not cfg.tie_word_embeddings and not cfg.mlp_bias
    assert cfg.rope_theta == 1e6 and cfg.rope_scaling is None
    assert cfg.eos_token_id == [151645]

    names = set(json.loads((REAL_DIR / "model.safetensors.index.json").read_text())["weight_map"])
    expected = set(expected_hf_shapes(cfg))
    assert names == expected, (f"missing {sorted(expected - names)[:5]}, unexpected {sorted(names - expected)[:5]}")
    assert len(expected) == 3 + 28 * 12
