"""Trainer options: memory switches that must not change the numbers, schedule, checkpoint files."""

from __future__ import annotations

import pytest

from fastdllm.training import TrainConfig, train
from fastdllm.training import checkpoint as ckpt_io
from fastdllm.training.optim import lr_factor
from tests.helpers import make_tiny_checkpoint
from tests.training_helpers import write_ids_data


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("trainer")
    base = make_tiny_checkpoint(d / "base", "qwen2", vocab=120, hidden=32, heads=4, kv_heads=2, inter=64)
    return base, write_ids_data(d / "d.jsonl", n=10, vocab=120)


def opts(setup, out, **kw):
    base, data = setup
    o = dict(model=str(base), data=str(data), output_dir=str(out), block_size=8, seq_len=64, max_steps=3,
             micro_batch_size=2, lr=1e-3, progress=False)
    o.update(kw)
    return TrainConfig(**o)


def test_checkpointing_and_loss_chunks_leave_the_numbers_alone(tmp_path, setup):
    plain = train(opts(setup, tmp_path / "a")).losses
    assert train(opts(setup, tmp_path / "b", gradient_checkpointing=True)).losses == plain
    chunked = train(opts(setup, tmp_path / "c", loss_chunk_size=5)).losses
    assert chunked == pytest.approx(plain, rel=1e-6)


def test_epochs_set_the_step_count(tmp_path, setup):
    r = train(opts(setup, tmp_path / "e", max_steps=None, epochs=2.0, micro_batch_size=3))
    assert r.steps == 7  # ceil(2 * 10 / 3)


def test_checkpoint_files(tmp_path, setup):
    out = tmp_path / "k"
    root = ckpt_io.checkpoint_root(out)
    root.mkdir(parents=True)
    (root / "step-00000099").mkdir()  # an old run's checkpoint: a fresh run removes it
    train(opts(setup, out, max_steps=7, save_every=2, keep_checkpoints=2))
    assert [p.name for p in ckpt_io.list_checkpoints(root)] == ["step-00000004", "step-00000006"]
    assert not (root / "step-00000099").exists()
    state = ckpt_io.load(root / "step-00000006")
    assert state["step"] == 6 and state["samples_seen"] == 12
    assert {"model", "optimizer", "scheduler", "rng", "tokens", "elapsed", "config"} <= set(state)
    # a half-written checkpoint (killed before its rename) is ignored, then cleaned up
    stale = root / ".tmp-step-00000008-123"
    stale.mkdir()
    (stale / "state.pt").write_bytes(b"partial")
    assert ckpt_io.latest(root).name == "step-00000006"
    ckpt_io.save(root, 8, {"x": 1}, keep=2)
    assert not stale.exists() and ckpt_io.latest(root).name == "step-00000008"


def test_resume_without_checkpoint_starts_fresh(tmp_path, setup):
    r = train(opts(setup, tmp_path / "r", resume=True))
    assert r.steps == 3 and len(r.losses) == 3


def test_learning_rate_schedule():
    assert [lr_factor(s, 10, 4, "constant", 0.0) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = [lr_factor(s, 10, 2, "cosine", 0.1) for s in range(11)]
    assert cos[:3] == [0.5, 1.0, 1.0] and cos[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(cos[2:], cos[3:]))
