"""The Python API: prompts, chat templates, defaults from the checkpoint, stop strings, user errors."""

import json

import pytest

import fastdllm
from fastdllm.errors import InvalidRequestError
from tests.helpers import make_tiny_chat_checkpoint, make_tiny_checkpoint


@pytest.fixture(scope="module")
def qwen_tok_llm(tmp_path_factory):
    """A tiny random Fast-dLLM checkpoint with a release-like tokenizer (the release's added tokens and template)."""
    d = make_tiny_chat_checkpoint(tmp_path_factory.mktemp("ck") / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("mask_token_id")  # as in the released config: the id comes from the tokenizer
    (d / "config.json").write_text(json.dumps(cfg))
    return fastdllm.load(str(d), dtype="float32")


@pytest.fixture(scope="module")
def ar_llm(tmp_path_factory):
    d = make_tiny_checkpoint(tmp_path_factory.mktemp("ar") / "m", "llama", vocab=256, max_pos=128)
    return fastdllm.load(str(d))


def test_inference_imports_neither_training_nor_peft(ar_llm):
    import subprocess
    import sys

    probe = ("import sys, fastdllm; fastdllm.load(sys.argv[1]).generate([[1, 2]], max_new_tokens=2); "
             "print(sorted(m for m in sys.modules if m.startswith(('fastdllm.training', 'peft'))))")
    r = subprocess.run([sys.executable, "-c", probe, str(ar_llm.checkpoint.path)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_defaults_come_from_the_checkpoint(qwen_tok_llm):
    assert qwen_tok_llm.is_block_diffusion
    ids = qwen_tok_llm.tokenizer.convert_tokens_to_ids
    assert qwen_tok_llm.mask_token_id == ids("|<MASK>|")  # from the tokenizer: config.json has none
    assert qwen_tok_llm.eos_token_ids[:2] == [ids("<|im_end|>"), ids("<|endoftext|>")]  # generation_config.json
    assert fastdllm.load(str(qwen_tok_llm.checkpoint.path), mask_token_id=7).mask_token_id == 7


def test_chat_prompt_uses_the_template(qwen_tok_llm):
    tok = qwen_tok_llm.tokenizer
    expected = tok.apply_chat_template([{"role": "user", "content": "Hi there"}], add_generation_prompt=True,
                                       tokenize=False)
    ids = qwen_tok_llm.encode("Hi there", chat=True)
    assert tok.decode(ids) == expected
    assert qwen_tok_llm.encode("Hi there", chat=False) == tok.encode("Hi there")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert "Be brief." in tok.decode(qwen_tok_llm.encode(msgs))


def test_result_fields_and_single_prompt(qwen_tok_llm):
    res = qwen_tok_llm.generate("Hello", max_new_tokens=20, stop_token_ids=[])
    assert isinstance(res, list) and len(res) == 1
    r = res[0]
    assert len(r.token_ids) == 20 and r.finish_reason == "length"
    assert r.text == qwen_tok_llm.tokenizer.decode(r.token_ids, skip_special_tokens=True)
    assert r.stats.generated_tokens == 20 and r.stats.nfe >= 1 and r.stats.seconds > 0
    assert r.tpf == pytest.approx(20 / r.nfe)
    assert r.prompt_token_ids == qwen_tok_llm.encode("Hello")
    # generate decodes the text once at the end; a stream token by token: the same text
    last = list(qwen_tok_llm.stream("Hello", max_new_tokens=20, stop_token_ids=[]))[-1].rows[0].sequence
    assert not last.detok.deferred and last.detok.text == r.text


def test_stop_strings_cut_the_text(qwen_tok_llm):
    prompt = "Tell me a story"
    full = qwen_tok_llm.generate(prompt, max_new_tokens=48, stop_token_ids=[])[0]
    text = full.text
    assert len(text) > 10
    stop = text[len(text) // 2:len(text) // 2 + 3]
    cut = qwen_tok_llm.generate(prompt, max_new_tokens=48, stop_token_ids=[], stop=[stop])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == text[:text.index(stop)]
    assert full.token_ids[:len(cut.token_ids)] == cut.token_ids and len(cut.token_ids) < len(full.token_ids)


@pytest.mark.parametrize("kwargs,match", [
    (dict(threshold=1.5), "threshold"),
    (dict(threshold=-0.1), "threshold"),
    (dict(small_block_size=5), "divide"),
    (dict(small_block_size=0), "divide"),
    (dict(block_size=16, small_block_size=32), "divide"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=1.0, top_p=0.0), "top_p"),
    (dict(temperature=1.0, top_k=-3), "top_k"),
    (dict(mode="beam"), "mode"),
    (dict(mask_token_id=10**7), "mask_token_id"),
])
def test_bad_parameters_are_rejected(qwen_tok_llm, kwargs, match):
    with pytest.raises(InvalidRequestError, match=match):
        qwen_tok_llm.generate("Hello", **kwargs)


@pytest.mark.parametrize("prompt,match", [
    ("", "empty"), ("   ", "empty"), ([], "no prompts"), ([[]], "empty"), ([[1, 2, 10**7]], "vocabulary"),
    ([3.5], "prompt"),
])
def test_bad_prompts_are_rejected(qwen_tok_llm, prompt, match):
    with pytest.raises(InvalidRequestError, match=match):
        qwen_tok_llm.generate(prompt)


def test_prompt_longer_than_the_context(qwen_tok_llm, ar_llm):
    with pytest.raises(InvalidRequestError, match="context"):
        qwen_tok_llm.generate([[5] * 256])
    with pytest.raises(InvalidRequestError, match="context"):
        ar_llm.generate([[5] * 128])
    # generation stops at the end of the context instead of overflowing it
    res = ar_llm.generate([[5] * 120], max_new_tokens=50, stop_token_ids=[])[0]
    assert len(res.token_ids) == 8 and res.finish_reason == "length"


def test_unknown_option_is_a_type_error(qwen_tok_llm):
    with pytest.raises(TypeError, match="thresold"):
        qwen_tok_llm.generate("Hello", thresold=0.5)


def test_ar_checkpoint_defaults_to_ar_and_needs_a_mask_for_diffusion(ar_llm):
    assert not ar_llm.is_block_diffusion and ar_llm.mask_token_id is None
    res = ar_llm.generate([[1, 2, 3]], max_new_tokens=5, stop_token_ids=[])[0]
    assert res.stats.nfe == 5
    with pytest.raises(InvalidRequestError, match="mask"):
        ar_llm.generate([[1, 2, 3]], mode="diffusion")
    res = ar_llm.generate([[1, 2, 3]], mode="diffusion", mask_token_id=255, max_new_tokens=5, stop_token_ids=[])[0]
    assert len(res.token_ids) == 5 and 255 not in res.token_ids


def test_text_needs_a_tokenizer(ar_llm):
    with pytest.raises(InvalidRequestError, match="tokenizer"):
        ar_llm.generate("Hello")
