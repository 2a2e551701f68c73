"""The training losses: against a plain full-logits reference, inference, and the flex path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastdllm.model.attention import DenseAttention, block_causal_mask, causal_mask
from fastdllm.loading import load_checkpoint
from fastdllm.training.data import Sample
from fastdllm.training.noise import ar_batch, diffusion_batch
from fastdllm.training.objective import TrainingObjective, chunked_ce_sum

BS = 8
MASK = 127


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tests.helpers import make_tiny_checkpoint

    path = make_tiny_checkpoint(tmp_path_factory.mktemp("obj") / "m", "qwen2", vocab=128, hidden=32, heads=4,
                                kv_heads=2, inter=64)
    m = load_checkpoint(path).model
    m.train()
    return m


def samples(n_rows: int = 3, seed: int = 0) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for r in range(n_rows):
        n = int(torch.randint(9, 30, (1,), generator=g))
        ids = torch.randint(0, 127, (n,), generator=g)
        lm = torch.ones(n, dtype=torch.bool)
        lm[: int(torch.randint(1, 5, (1,), generator=g))] = False
        out.append(Sample(ids, lm))
    return out


def reference_loss(model, batch) -> torch.Tensor:
    """The reference's way: full logits of the noisy half, labels -100 except at masked positions, shifted CE."""
    R, L = batch.clean.shape
    ids = torch.cat([batch.noisy, batch.clean], 1)
    pos = torch.arange(L).repeat(2)
    mask = torch.zeros(2 * L, 2 * L, dtype=torch.bool)
    for q in range(2 * L):  # the rule, again written out
        for k in range(2 * L):
            qc, kc = q >= L, k >= L
            bq, bk = (q % L) // BS, (k % L) // BS
            mask[q, k] = (not qc and not kc and bq == bk) or (not qc and kc and bk < bq) or (qc and kc and bk <= bq)
    logits = model(ids, pos[None].expand(R, -1), DenseAttention(mask[None, None], model.attn_scale))
    logits = logits.view(R, 2 * L, -1)[:, :L]  # [R, L, V] noisy half only
    masked = (batch.noisy == MASK) & (batch.clean != MASK)  # mask token in x_t, not padding
    labels = torch.where(masked, batch.clean, -100)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum")


def test_diffusion_loss_matches_full_logits_reference(model):
    batch = diffusion_batch(samples(), [0, 1, 2], BS, MASK, 1e-3, seed=4, complementary=True)
    obj = TrainingObjective(model, "diffusion", BS, "dense")
    ours = obj(batch)
    ref = reference_loss(model, batch)
    assert batch.n_targets > 10
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_gradient_flows_only_through_targets(model):
    batch = diffusion_batch(samples(2), [0, 1], BS, MASK, 1e-3, seed=1, complementary=True)
    obj = TrainingObjective(model, "diffusion", BS, "dense")
    model.zero_grad()
    obj(batch).backward()
    g1 = model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    reference_loss(model, batch).backward()
    torch.testing.assert_close(g1, model.embed_tokens.weight.grad, rtol=1e-4, atol=1e-6)
    model.zero_grad()


@torch.no_grad()
def test_unmasked_training_forward_equals_block_causal_inference(model):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 127, (2, 24), generator=g)
    batch_targets = torch.zeros_like(x0, dtype=torch.bool)
    from fastdllm.training.noise import Batch

    batch = Batch(clean=x0, targets=batch_targets, noisy=x0.clone(), tokens=48)
    obj = TrainingObjective(model, "diffusion", BS, "dense")
    h = obj.hidden(batch)  # [2, 48, H]
    train_logits = model.lm_head(h[:, :24])
    pos = torch.arange(24)
    attend = DenseAttention(block_causal_mask(pos, pos, BS)[None, None], model.attn_scale)
    infer_logits = model(x0, pos[None].expand(2, -1), attend).view(2, 24, -1)
    torch.testing.assert_close(train_logits, infer_logits, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_batch_padding_carries_no_loss(model):
    s = samples(3, seed=7)
    obj = TrainingObjective(model, "diffusion", BS, "dense")
    together = obj(diffusion_batch(s, [0, 1, 2], BS, MASK, 1e-3, 9, True))
    apart = sum(obj(diffusion_batch([x], [i], BS, MASK, 1e-3, 9, True)) for i, x in enumerate(s))
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@torch.no_grad()
def test_dense_and_flex_agree(model):
    from fastdllm.training import flex

    if not flex.available():
        pytest.skip("this torch has no flex attention")
    batch = diffusion_batch(samples(), [0, 1, 2], BS, MASK, 1e-3, seed=2, complementary=True)
    dense = TrainingObjective(model, "diffusion", BS, "dense")(batch)
    try:
        flexed = TrainingObjective(model, "diffusion", BS, "flex")(batch)
    except (NotImplementedError, RuntimeError) as e:  # pragma: no cover - depends on the torch build
        pytest.skip(f"flex attention does not run on this CPU build: {e}")
    # torch 2.13 runs flex attention on the CPU forward-only (no backward), so this compares losses
    torch.testing.assert_close(dense, flexed, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("complementary", [True, False])
def test_split_attention_equals_dense_in_loss_and_gradients(model, complementary):
    batch = diffusion_batch(samples(4, seed=5), [0, 1, 2, 3], BS, MASK, 1e-3, seed=3, complementary=complementary)
    grads = {}
    for kind in ("dense", "split"):
        model.zero_grad()
        loss = TrainingObjective(model, "diffusion", BS, kind)(batch)
        loss.backward()
        grads[kind] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(grads["split"][0], grads["dense"][0], rtol=1e-5, atol=1e-5)
    for gs, gd in zip(grads["split"][1], grads["dense"][1]):
        torch.testing.assert_close(gs, gd, rtol=1e-4, atol=1e-6)
    model.zero_grad()


@torch.no_grad()
def test_split_attention_hidden_states_equal_dense(model):
    batch = diffusion_batch(samples(3, seed=6), [0, 1, 2], BS, MASK, 1e-3, seed=7, complementary=True)
    dense = TrainingObjective(model, "diffusion", BS, "dense").hidden(batch)  # [R / 2, 3L, H]: every row
    split = TrainingObjective(model, "diffusion", BS, "split").hidden(batch)
    torch.testing.assert_close(split, dense, rtol=1e-5, atol=1e-5)


def test_ar_loss_matches_standard_causal_lm(model):
    s = samples(3, seed=3)
    batch = ar_batch(s, pad_id=0)
    ours = TrainingObjective(model, "ar", BS, "dense")(batch)
    R, L = batch.clean.shape
    pos = torch.arange(L)
    logits = model(batch.clean, pos[None].expand(R, -1),
                   DenseAttention(causal_mask(pos, pos)[None, None], model.attn_scale)).view(R, L, -1)
    labels = torch.where(batch.targets, batch.clean, -100)
    ref = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_chunked_loss_equals_unchunked(model):
    h = torch.randn(37, 32, requires_grad=True)
    y = torch.randint(0, 128, (37,))
    a = chunked_ce_sum(model.lm_head, h, y, chunk=1000)
    (ga,) = torch.autograd.grad(a, h)
    b = chunked_ce_sum(model.lm_head, h, y, chunk=8)
    (gb,) = torch.autograd.grad(b, h)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ga, gb)
