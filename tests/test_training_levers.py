"""The adaptation levers of ``fastdllm train``: what each option means, checked on its definition.

- attention annealing: causal in-block attention at its first step (the clean stream is then
  the AR model's forward), the block-diffusion mask from its last step on, the split back end
  equal to the dense one in between;
- block-size curriculum: the schedule, and the noise and attention of a step use its size;
- auxiliary AR loss: alpha = 0 leaves the diffusion loss bit for bit, the AR part is the
  causal LM loss, and the trainer's gradient is that of (alpha AR + diffusion) / (1 + alpha);
- position-dependent masking and mask-rate sampling: the asked shapes, over many draws.
"""

from __future__ import annotations

import pytest
import torch

from fastdllm.model.attention import DenseAttention, causal_mask
from fastdllm.training import TrainConfig
from fastdllm.training.config import TrainConfigError
from fastdllm.training.masks import block_diffusion_mask
from fastdllm.training.noise import (MaskRates, ar_batch, block_size_at, diffusion_batch, draw_masked,
                                     open_pairs_at, sample_generator)
from fastdllm.training.objective import TrainingObjective
from tests.test_training_objective import BS, MASK, model, samples  # noqa: F401  (model: the tiny model fixture)

N = 24


# ---- attention annealing ----------------------------------------------------------------------

def _rule(n: int, bs: int, streams: int, in_block) -> torch.Tensor:
    """The training mask written out pair by pair, with ``in_block(q, k)`` for same-block pairs."""
    T = (streams + 1) * n
    m = torch.zeros(T, T, dtype=torch.bool)
    for q in range(T):
        for k in range(T):
            sq, sk, pq, pk = q // n, k // n, q % n, k % n
            same = pq // bs == pk // bs and in_block(pq, pk)
            if sq < streams:  # noisy: own stream's block, clean earlier blocks
                m[q, k] = (sk == sq and same) or (sk == streams and pk // bs < pq // bs)
            else:  # clean: clean earlier blocks and its own block
                m[q, k] = sk == streams and (pk // bs < pq // bs or same)
    return m


@pytest.mark.parametrize("streams", [1, 2])
def test_annealing_starts_causal_in_block_and_ends_at_the_block_diffusion_mask(streams):
    first = open_pairs_at(0, 100, N, seed=3)
    assert first is not None and not first.any()
    causal_in_block = _rule(N, BS, streams, lambda q, k: k <= q)
    assert torch.equal(block_diffusion_mask(N, BS, streams=streams, open_pairs=first), causal_in_block)
    assert open_pairs_at(100, 100, N, seed=3) is None and open_pairs_at(250, 100, N, seed=3) is None
    assert torch.equal(block_diffusion_mask(N, BS, streams=streams), _rule(N, BS, streams, lambda q, k: True))


def test_annealing_opens_pairs_at_the_scheduled_rate_and_by_the_draw():
    n = 64
    upper = torch.ones(n, n, dtype=torch.bool).triu(1)
    for step, total in ((25, 100), (50, 100), (90, 100)):
        pairs = open_pairs_at(step, total, n, seed=1)
        frac = pairs[upper].float().mean().item()
        assert abs(frac - step / total) < 0.03
        assert torch.equal(pairs, open_pairs_at(step, total, n, seed=1))  # the same draw on every process
        assert not torch.equal(pairs, open_pairs_at(step + 1, total, n, seed=1))  # a fresh draw per step
        mid = block_diffusion_mask(N, BS, open_pairs=pairs[:N, :N])
        assert torch.equal(mid, _rule(N, BS, 1, lambda q, k, p=pairs: bool(k <= q or p[q, k])))


@torch.no_grad()
def test_annealing_first_step_clean_stream_is_the_ar_forward(model):
    batch = diffusion_batch(samples(3, seed=2), [0, 1, 2], BS, MASK, 1e-3, seed=5, complementary=True,
                            open_pairs=open_pairs_at(0, 10, 64, seed=0))
    for kind in ("dense", "split"):
        h = TrainingObjective(model, "diffusion", BS, kind).hidden(batch)  # [R / 2, 3L, H]
        R, L = batch.clean.shape
        pos = torch.arange(L)
        ar = model.hidden_states(batch.clean[::2], pos[None].expand(R // 2, -1),
                                 DenseAttention(causal_mask(pos, pos)[None, None], model.attn_scale))
        torch.testing.assert_close(h[:, 2 * L:], ar, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("step", [3, 7])
def test_annealed_split_equals_dense_in_loss_and_gradients(model, step):
    batch = diffusion_batch(samples(4, seed=8), [0, 1, 2, 3], BS, MASK, 1e-3, seed=1, complementary=True,
                            open_pairs=open_pairs_at(step, 10, 64, seed=4))
    got = {}
    for kind in ("dense", "split"):
        model.zero_grad()
        loss = TrainingObjective(model, "diffusion", BS, kind)(batch)
        loss.backward()
        got[kind] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(got["split"][0], got["dense"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(got["split"][1], got["dense"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    model.zero_grad()


# ---- block-size curriculum ----------------------------------------------------------------------

def test_curriculum_schedule():
    sizes = [block_size_at(s, [4, 8, 16], 300, 32) for s in range(0, 400)]
    assert sizes[:100] == [4] * 100 and sizes[100:200] == [8] * 100 and sizes[200:300] == [16] * 100
    assert set(sizes[300:]) == {32}
    assert [block_size_at(s, [], 0, 32) for s in (0, 5)] == [32, 32]
    assert [block_size_at(s, [2], 5, 8) for s in range(7)] == [2] * 5 + [8] * 2


def test_curriculum_step_noises_and_attends_in_its_block_size(model):
    # eps near 1 and a clipped rate of 1.0 everywhere would hide the blocks: draw ratios per block of 4
    s = samples(2, seed=3)
    batch = diffusion_batch(s, [0, 1], 16, MASK, MaskRates(rate="clipped", low=0.0, high=1.0), seed=2,
                            complementary=False, noise_block=4)
    assert batch.block_size == 4 and batch.clean.shape[1] % 16 == 0  # padded to the final block size
    g = sample_generator(2, 0)
    ratios = torch.rand(batch.clean.shape[1] // 4, generator=g)  # the draw diffusion_batch made, per block of 4
    u = torch.rand(batch.clean.shape[1], generator=g)
    masked = u < ratios.repeat_interleave(4)
    lm = torch.zeros(batch.clean.shape[1], dtype=torch.bool)
    lm[:len(s[0].ids)] = s[0].loss_mask
    assert torch.equal(batch.noisy[0] == MASK, (masked & lm) | (batch.clean[0] == MASK))
    obj = TrainingObjective(model, "diffusion", 16, "dense")
    L = batch.clean.shape[1]
    att = obj.attend(L, torch.device("cpu"), 1, batch.block_size)
    assert torch.equal(att.mask[0, 0], block_diffusion_mask(L, 4))


def _trainer(tmp_path, **kw):
    from fastdllm.training.trainer import Trainer
    from tests.helpers import make_tiny_checkpoint
    from tests.training_helpers import write_ids_data

    base = make_tiny_checkpoint(tmp_path / "base", "qwen2", vocab=200, hidden=32, heads=4, kv_heads=2, inter=64)
    data = write_ids_data(tmp_path / "d.jsonl", n=16, vocab=200)
    o = dict(model=str(base), data=str(data), output_dir=str(tmp_path / "out"), block_size=8, seq_len=64,
             micro_batch_size=2, grad_accum=2, lr=3e-3, max_steps=4, num_threads=1, progress=False, seed=7,
             attention="dense")
    o.update(kw)
    return Trainer(TrainConfig(**o))


def test_trainer_follows_the_curriculum(tmp_path):
    t = _trainer(tmp_path, block_curriculum=["2", "4"], block_curriculum_steps=4, max_steps=6)
    assert t.cfg.block_curriculum == [2, 4]  # flags give strings
    assert [t.micro_batch(s, 0).block_size for s in range(6)] == [2, 2, 4, 4, 8, 8]


# ---- auxiliary AR loss --------------------------------------------------------------------------

def test_ar_weight_zero_leaves_the_diffusion_loss_bit_for_bit(model):
    s = samples(3, seed=4)
    plain = diffusion_batch(s, [0, 1, 2], BS, MASK, 1e-3, seed=6, complementary=True)
    with_ar = diffusion_batch(s, [0, 1, 2], BS, MASK, 1e-3, seed=6, complementary=True, ar_targets=True)
    obj = TrainingObjective(model, "diffusion", BS, "split")
    with torch.no_grad():
        a = obj(plain)
        b, ar = obj(with_ar)
    assert torch.equal(a, b)
    # the AR part is the causal LM loss on the clean samples (padding aside)
    ref = TrainingObjective(model, "ar", BS, "dense")(ar_batch(s, pad_id=0))
    torch.testing.assert_close(ar, ref.detach(), rtol=1e-5, atol=1e-5)


def test_trainer_with_alpha_zero_matches_the_recipe(tmp_path):
    a = _trainer(tmp_path / "a")
    b = _trainer(tmp_path / "b", ar_loss_weight=0.0)
    for step in range(2):
        assert a.train_step(step) == b.train_step(step)
        assert b.ar_loss is None
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


def test_trainer_gradient_is_the_weighted_mean_of_both_losses(tmp_path):
    alpha = 0.5
    t = _trainer(tmp_path, ar_loss_weight=alpha, max_grad_norm=0.0)
    batches = [t.micro_batch(0, a) for a in range(2)]
    n_diff = sum(b.n_targets for b in batches)
    n_ar = sum(b.n_ar_targets for b in batches)
    assert n_ar > 0
    t.model.zero_grad()
    diff = sum(t.objective(b)[0] for b in batches) / n_diff
    ar = sum(t.objective(b)[1] for b in batches) / n_ar
    ((alpha * ar + diff) / (1 + alpha)).backward()
    expected = [p.grad.clone() for p in t.model.parameters()]
    t.model.zero_grad()
    # the trainer's own backward, without the optimizer step
    t.optimizer.step = lambda: None
    t.optimizer.zero_grad = lambda set_to_none=True: None
    t.scheduler.step = lambda: None
    loss, _ = t.train_step(0)
    assert loss == pytest.approx(diff.item(), rel=1e-5) and t.ar_loss == pytest.approx(ar.item(), rel=1e-5)
    for p, g in zip(t.model.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)


# ---- position-dependent masking and mask-rate sampling ------------------------------------------

def _frequencies(rates: MaskRates, block: int = 32, blocks: int = 4, draws: int = 3000) -> torch.Tensor:
    n = block * blocks
    hits = torch.zeros(n)
    for i in range(draws):
        hits += draw_masked(n, block, rates, sample_generator(11, i)).float()
    return (hits / draws).view(blocks, block).mean(0)  # [block] frequency by position in the block


def test_default_rates_are_the_recipe_bit_for_bit():
    for i in range(50):
        g1, g2 = sample_generator(5, i), sample_generator(5, i)
        t = torch.rand(4, generator=g1)  # the recipe: t ~ U(eps, 1) per block, then one uniform per position
        expected = torch.rand(32, generator=g1) < ((1 - 1e-3) * t + 1e-3).repeat_interleave(8)
        assert torch.equal(draw_masked(32, 8, MaskRates(), g2), expected)
        assert torch.equal(draw_masked(32, 8, 1e-3, sample_generator(5, i)), expected)


def test_position_tilt_masks_later_positions_more_often():
    flat = _frequencies(MaskRates(tilt=0.0))
    tilted = _frequencies(MaskRates(tilt=1.0))
    assert (flat.max() - flat.min()) < 0.06  # every position at the block's ratio
    assert tilted[0] < 0.01  # at tilt 1 the first position is never masked (but eps)
    # E[min(1, t w)] for t ~ U(0, 1): w / 2 for w <= 1, 1 - 1 / (2 w) above
    w = MaskRates(tilt=1.0).position_weights(32)
    expected = torch.where(w <= 1, w / 2, 1 - 1 / (2 * w))
    assert torch.allclose(tilted, expected, atol=0.04)
    half = _frequencies(MaskRates(tilt=0.5))
    assert half[-1] > flat[-1] + 0.1 and half[0] < flat[0] - 0.1
    assert (torch.diff(tilted[::4]) > 0).all()


def _ratios(rates: MaskRates, n: int = 20000) -> torch.Tensor:
    return rates.block_ratios(n, torch.Generator().manual_seed(0))


def test_clipped_rates_stay_in_range_and_are_uniform_there():
    t = _ratios(MaskRates(rate="clipped", low=0.3, high=0.8))
    assert t.min() >= 0.3 and t.max() <= 0.8
    hist = torch.histc(t, bins=5, min=0.3, max=0.8) / len(t)
    assert torch.allclose(hist, torch.full((5,), 0.2), atol=0.02)


def test_logit_normal_rates_are_bell_shaped():
    t = _ratios(MaskRates(rate="logit_normal", mean=0.0, std=1.0, eps=0.0))
    hist = torch.histc(t, bins=10, min=0.0, max=1.0) / len(t)
    assert hist.argmax() in (4, 5) and hist[0] < 0.05 and hist[-1] < 0.05
    assert abs(t.mean().item() - 0.5) < 0.01
    # quantiles are the sigmoid of the normal's: P(t < sigmoid(1)) = Phi(1)
    assert abs((t < torch.sigmoid(torch.tensor(1.0))).float().mean().item() - 0.8413) < 0.01
    shifted = _ratios(MaskRates(rate="logit_normal", mean=1.0, std=0.5))
    assert abs(torch.logit(shifted).median().item() - 1.0) < 0.05


# ---- options ------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (dict(block_curriculum=[4, 3]), "increasing divisors"),
    (dict(block_curriculum=[4, 32]), "increasing divisors"),
    (dict(block_curriculum=["x"]), "whole block sizes"),
    (dict(block_curriculum=[4]), "block_curriculum_steps"),
    (dict(attention_anneal_steps=-1), "attention_anneal_steps"),
    (dict(ar_loss_weight=-0.5), "ar_loss_weight"),
    (dict(mask_position_tilt=1.5), "mask_position_tilt"),
    (dict(mask_rate="beta"), "mask_rate must be one of"),
    (dict(mask_rate_low=0.9, mask_rate_high=0.2), "mask_rate_low"),
    (dict(objective="ar", ar_loss_weight=1.0), "only apply to --objective diffusion"),
])
def test_bad_lever_options(tmp_path, extra, message):
    data = tmp_path / "d.jsonl"
    data.write_text('{"input_ids": [1, 2, 3]}\n')
    cfg = TrainConfig(model="m", data=str(data), output_dir=str(tmp_path / "o"), **extra)
    with pytest.raises(TrainConfigError, match=message):
        cfg.validate()


def test_lever_flags_reach_the_config(tmp_path):
    import argparse

    from fastdllm.cli import train as cli_train

    data = tmp_path / "d.jsonl"
    data.write_text('{"input_ids": [1, 2, 3]}\n')
    p = argparse.ArgumentParser()
    cli_train.add_parser(p.add_subparsers())
    args = p.parse_args(["train", "--model", "m", "--data", str(data), "--output-dir", str(tmp_path / "o"),
                         "--block-curriculum", "4,8,16", "--block-curriculum-steps", "300",
                         "--attention-anneal-steps", "200", "--ar-loss-weight", "0.5", "--mask-position-tilt", "0.3",
                         "--mask-rate", "clipped", "--mask-rate-low", "0.1", "--mask-rate-high", "0.9"])
    cfg = cli_train.build_config(args)
    assert cfg.block_curriculum == [4, 8, 16] and cfg.block_curriculum_steps == 300
    assert (cfg.attention_anneal_steps, cfg.ar_loss_weight, cfg.mask_position_tilt) == (200, 0.5, 0.3)
    assert cfg.mask_rates() == MaskRates(eps=1e-3, rate="clipped", low=0.1, high=0.9, tilt=0.3)


# ---- compiled training (--compile) ------------------------------------------------------------------

def test_compiled_trainer_takes_the_eager_steps(tmp_path):
    """``compile=True`` compiles the model's forward only: the same losses and weights as eager, to float
    rounding, over steps whose lengths differ (dynamic shapes), with the AR loss's causal pass beside."""
    eager = _trainer(tmp_path / "eager", ar_loss_weight=1.0, attention="split")
    compiled = _trainer(tmp_path / "compiled", ar_loss_weight=1.0, attention="split", compile=True)
    for step in range(3):
        a, b = eager.train_step(step), compiled.train_step(step)
        assert a[1] == b[1]
        assert abs(a[0] - b[0]) <= 1e-4 * max(1.0, abs(a[0])), (step, a, b)
    for p, q in zip(eager.model.parameters(), compiled.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
