"""GPTQ int4: the rounding against round-to-nearest on known inputs, the statistics it is fed,
loading with ``quantize="int4-gptq"`` (tiny checkpoint and the default model), and its errors."""

from __future__ import annotations

import pytest
import torch

import fastdllm
from fastdllm.cli.main import main as cli_main
from fastdllm.errors import ModelLoadError
from fastdllm.loading import load_checkpoint
from fastdllm.quant import Int4Linear, Int4Weight, Int8Linear, layer_mode, linear_names
from fastdllm.quant.gptq import CALIBRATION_PROMPTS, HessianCollector, gptq_int4, read_prompts
from fastdllm.engine.reference import dense_forward
from tests.helpers import make_tiny_checkpoint, make_tiny_word_checkpoint


def output_error(w: torch.Tensor, q: Int4Weight, H: torch.Tensor) -> float:
    """sum over inputs x of |x (W - Q)^T|^2, from H = sum x x^T."""
    d = (w.double() - q.dequantize().double())  # [N, K]
    return float(torch.einsum("nk,kl,nl->", d, H.double(), d))


def correlated_inputs(n: int, K: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(K // 4, K, generator=g)
    return torch.randn(n, K // 4, generator=g) @ basis + 0.1 * torch.randn(n, K, generator=g)  # [n, K]


def test_identity_hessian_gives_round_to_nearest():
    torch.manual_seed(0)
    w = torch.randn(24, 96)
    got, want = gptq_int4(w, 3.0 * torch.eye(96)), Int4Weight.from_float(w)
    assert (got.q != want.q).float().mean() < 0.005  # only float64 vs float32 ties may differ
    torch.testing.assert_close(got.scale, want.scale)
    torch.testing.assert_close(got.zero, want.zero)


@pytest.mark.parametrize("block", [32, 128])
def test_gptq_beats_round_to_nearest_on_correlated_inputs(block):
    torch.manual_seed(1)
    w = torch.randn(40, 128)
    X = correlated_inputs(600, 128)
    H = X.T @ X
    gptq, rtn = gptq_int4(w, H, block=block), Int4Weight.from_float(w)
    assert gptq.q.dtype == torch.uint8 and int(gptq.q.max()) <= 15 and gptq.scale.shape == (40, 4)
    assert output_error(w, gptq, H) < 0.5 * output_error(w, rtn, H)
    # deferring the updates by blocks is an exact rearrangement of the same sums
    other = gptq_int4(w, H, block=128 if block == 32 else 32)
    assert (other.q != gptq.q).float().mean() < 0.01


def test_inputs_never_seen_and_bad_shapes():
    w = torch.randn(16, 64)
    H = torch.zeros(64, 64)
    X = torch.randn(50, 32)
    H[:32, :32] = X.T @ X  # inputs 32..63 never nonzero
    q = gptq_int4(w, H)
    assert torch.isfinite(q.dequantize()).all()
    with pytest.raises(ValueError, match="Hessian"):
        gptq_int4(w, torch.eye(32))
    with pytest.raises(ValueError, match="multiple"):
        gptq_int4(torch.randn(16, 48), torch.eye(48))


def test_collector_accumulates_x_transpose_x():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(8, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    c = HessianCollector(model, ["0", "2"])
    xs = [torch.randn(2, 4, 8), torch.randn(7, 8)]
    with torch.no_grad():
        for x in xs:
            model(x)
    c.remove()
    flat = torch.cat([x.reshape(-1, 8) for x in xs])
    torch.testing.assert_close(c.hessians["0"], flat.T @ flat)
    hidden = torch.relu(model[0](flat))
    torch.testing.assert_close(c.hessians["2"], hidden.T @ hidden, rtol=1e-5, atol=1e-5)
    assert c.rows == {"0": 15, "2": 15}
    model(torch.randn(3, 8))  # hooks removed: nothing more counted
    assert c.rows["0"] == 15


def test_read_prompts(tmp_path):
    assert read_prompts(None) == list(CALIBRATION_PROMPTS)
    f = tmp_path / "p.txt"
    f.write_text("first prompt\n\n  second  \n")
    assert read_prompts(str(f)) == ["first prompt", "second"]
    assert read_prompts(["a", " ", "b"]) == ["a", "b"]
    assert read_prompts([[1, 2, 3], [], "c"]) == [[1, 2, 3], "c"]  # token ids, for a model without a tokenizer
    with pytest.raises(ModelLoadError, match="neither text nor"):
        read_prompts([3.5])
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ModelLoadError, match="none given"):
        read_prompts(str(tmp_path / "empty.txt"))
    with pytest.raises(ModelLoadError, match="not a file"):
        read_prompts(str(tmp_path / "missing.txt"))


@pytest.fixture(scope="module")
def word_ckpt(tmp_path_factory):
    return make_tiny_word_checkpoint(tmp_path_factory.mktemp("gptq") / "m")


@torch.no_grad()
def block_logits(model, ids: list[int]) -> torch.Tensor:
    return dense_forward(model, ids, 32)[0]  # the oracle's forward: block-causal mask, blocks of 32


def test_load_int4_gptq_tiny(word_ckpt):
    llm = fastdllm.load(str(word_ckpt), quantize="int4-gptq", calibration=["Tom has 5 apples. How many?"] * 3)
    m = llm.model
    assert m.quantization == "int4"
    for name in linear_names(m.cfg.num_hidden_layers):
        want = Int4Linear if layer_mode(name, "int4") == "int4" else Int8Linear
        assert isinstance(m.get_submodule(name), want), name
    ref = load_checkpoint(word_ckpt).model
    ids = llm.encode("Ana has 12 pens and buys 7 more. How many pens does she have?")
    a, b = block_logits(ref, ids), block_logits(m, ids)
    assert ((a - b).norm() / a.norm()) < 0.25
    out = llm.generate(["Ana has 3 cats."], max_new_tokens=16)[0]
    assert out.stats.generated_tokens > 0


def test_gptq_on_the_default_model_is_closer_to_float32_than_round_to_nearest():
    """On the shipped model, the layers' own objective and the whole model's logits on a problem."""
    f32 = fastdllm.load()
    rtn = fastdllm.load(quantize="int4")
    gptq = fastdllm.load(quantize="int4-gptq")
    ids = f32.encode("Rosa has 254 marbles. She gives 38 to Ben and buys 19 more. How many marbles does she have?")
    ids = ids + [f32.mask_token_id] * (32 - len(ids) % 32)  # a masked block, as when decoding
    ref = block_logits(f32.model, ids)
    err = {k: float((block_logits(llm.model, ids) - ref).norm()) for k, llm in (("rtn", rtn), ("gptq", gptq))}
    assert err["gptq"] < err["rtn"], err


def test_int4_gptq_errors(word_ckpt, tmp_path, capsys):
    with pytest.raises(ModelLoadError, match="only to quantize='int4-gptq'"):
        fastdllm.load(str(word_ckpt), quantize="int8", calibration=["x"])
    with pytest.raises(ModelLoadError, match="fastdllm.load"):
        load_checkpoint(word_ckpt, quantize="int4-gptq")
    rc = cli_main(["generate", "--model", str(word_ckpt), "--quantize", "int4-gptq", "--calibration",
                   str(tmp_path / "missing.txt"), "hello"])
    assert rc != 0
    assert "missing.txt is not a file" in capsys.readouterr().err


def test_int4_gptq_without_a_tokenizer_takes_token_ids(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "m", "qwen2", hidden=64, inter=160)
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        fastdllm.load(str(path), quantize="int4-gptq")
    llm = fastdllm.load(str(path), quantize="int4-gptq", calibration=[[1, 2, 3, 4], [5, 6, 7]])
    assert isinstance(llm.model.layers[0].mlp.gate_up_proj, Int4Linear)
