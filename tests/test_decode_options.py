"""One decoding-options schema (``fastdllm.engine.options``): every front-end's defaults are the
schema's, and every front-end rejects the same bad values with a message naming the field.

The front-ends: the Python API (``LLM.generate`` kwargs, merged into ``DecodeOptions``), the CLI
(``fastdllm generate`` flags), the server's request bodies (pydantic), the denoising page's
config and the benchmark's settings. No model is loaded here: the page gets stand-ins.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from fastdllm.benchmarking.run import BenchSettings
from fastdllm.cli import generate as cli_generate
from fastdllm.cli.common import CLIError
from fastdllm.cli.main import build_parser
from fastdllm.engine.options import (
    BOUNDS,
    DEFAULTS,
    FALLBACK_BLOCK_SIZE,
    FALLBACK_SMALL_BLOCK_SIZE,
    FALLBACK_THRESHOLD,
    FIELDS,
    DecodeOptions,
    ModelFacts,
    block_sizes,
    merge,
    resolve,
)
from fastdllm.errors import InvalidRequestError
from fastdllm.serve.page import page_config
from fastdllm.serve.protocol import ChatCompletionRequest, CompletionRequest


def _cli_args(*flags):
    return build_parser().parse_args(["generate", "hi", *flags])


# ---- defaults ------------------------------------------------------------------------------------

def test_cli_defaults_are_the_schema_defaults():
    args = _cli_args()
    assert cli_generate.decode_options(args) == DEFAULTS
    for flag_field, field in [("max_new_tokens", "max_new_tokens"), ("threshold", "threshold"),
                              ("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")]:
        assert getattr(args, flag_field) == getattr(DEFAULTS, field), field


def test_request_model_defaults_are_the_schema_defaults():
    for req in (CompletionRequest(model="m", prompt="x"),
                ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}])):
        given = req.decode_fields(None)
        assert set(given) <= set(FIELDS)
        assert all(v is None for v in given.values()), given  # nothing given: the schema decides
        assert merge(given) == DEFAULTS
        # the server's default length is the only layer between the request and the schema
        assert merge(given, {"max_new_tokens": 512}) == DecodeOptions(max_new_tokens=512)


def test_request_model_ranges_are_the_schema_bounds():
    fields = CompletionRequest.model_fields
    for name, req_name in [("threshold", "threshold"), ("block_size", "block_size"),
                           ("small_block_size", "small_block_size"), ("top_k", "top_k"), ("top_p", "top_p"),
                           ("max_new_tokens", "max_tokens")]:
        got = {k: v for m in fields[req_name].metadata for k in ("ge", "gt", "le") if (v := getattr(m, k, None)) is not None}
        assert got == BOUNDS[name].pydantic(), name
    temp = {k: v for m in fields["temperature"].metadata for k in ("ge", "gt", "le")
            if (v := getattr(m, k, None)) is not None}
    assert temp["ge"] == BOUNDS["temperature"].ge  # the OpenAI API adds its cap (le=2) on top


def test_page_defaults_are_the_schema_defaults():
    for bd, sbs, thr, want in [(None, None, None, (FALLBACK_BLOCK_SIZE, FALLBACK_SMALL_BLOCK_SIZE)),
                               (16, 4, 0.95, (16, 4))]:
        llm = SimpleNamespace(tokenizer=None, is_block_diffusion=True, checkpoint=SimpleNamespace(path=None),
                              config=SimpleNamespace(bd_size=bd, small_block_size=sbs, threshold=thr, acceptance=None))
        server = SimpleNamespace(model_name="m", default_max_tokens=10_000,
                                 limits=SimpleNamespace(max_model_len=100_000))
        cfg = page_config(SimpleNamespace(state=SimpleNamespace(server=server, llm=llm)))
        assert (cfg["block_size"], cfg["sub_block_size"]) == want
        assert cfg["threshold"] == (FALLBACK_THRESHOLD if thr is None else thr)  # the checkpoint's, else 0.9
        assert cfg["use_block_cache"] == DEFAULTS.use_block_cache
        assert cfg["max_tokens"] == DEFAULTS.max_new_tokens


def test_bench_defaults_are_the_schema_defaults():
    assert BenchSettings(model="m", prompts=[]).thresholds == [FALLBACK_THRESHOLD]
    args = build_parser().parse_args(["bench"])
    assert args.threshold is None  # the checkpoint's (config.json), else FALLBACK_THRESHOLD


def test_bench_threshold_defaults_to_the_checkpoints(tmp_path):
    import json

    from fastdllm.cli.bench import checkpoint_threshold

    assert checkpoint_threshold(None) == FALLBACK_THRESHOLD
    assert checkpoint_threshold(tmp_path) == FALLBACK_THRESHOLD  # no config.json
    for value, want in ((0.99, 0.99), (None, FALLBACK_THRESHOLD), ("high", FALLBACK_THRESHOLD), (2, FALLBACK_THRESHOLD)):
        (tmp_path / "config.json").write_text(json.dumps({} if value is None else {"threshold": value}))
        assert checkpoint_threshold(tmp_path) == want, value


def test_schema_fills_block_sizes_from_the_checkpoint():
    assert block_sizes(DEFAULTS, None, None) == (FALLBACK_BLOCK_SIZE, FALLBACK_SMALL_BLOCK_SIZE)
    assert block_sizes(DEFAULTS, 16, 4) == (16, 4)
    assert block_sizes(DecodeOptions(block_size=8), 16, 4) == (8, 4)
    with pytest.raises(InvalidRequestError, match=r"must divide the block size \(32") as e:
        block_sizes(DecodeOptions(small_block_size=5), 32, None)
    assert e.value.param == "small_block_size"


def test_resolve_checks_the_model():
    facts = ModelFacts(False, None, None, vocab_size=100, max_position_embeddings=64, mask_token_id=None,
                       eos_token_ids=(1,), has_tokenizer=False)
    p = resolve(DEFAULTS, facts)
    assert (p.mode, p.block_size, p.small_block_size, p.stop_token_ids) == ("ar", 32, 8, frozenset({1}))
    for opts, param in [(DecodeOptions(mode="diffusion"), "mask_token_id"),
                        (DecodeOptions(mask_token_id=100), "mask_token_id"),
                        (DecodeOptions(stop_token_ids=[100]), "stop_token_ids"),
                        (DecodeOptions(stop="x"), "stop")]:
        with pytest.raises(InvalidRequestError) as e:
            resolve(opts, facts)
        assert e.value.param == param


def test_normalising():
    assert DecodeOptions(stop="x").stop == ["x"]
    assert DecodeOptions(stop=None).stop == [] and DecodeOptions(stop=["", "y"]).stop == ["y"]
    assert merge({"temperature": None}, {"temperature": 0.5}).temperature == 0.5  # None: not given
    assert merge({"temperature": 0.2}, {"temperature": 0.5}).temperature == 0.2  # the first layer wins
    with pytest.raises(TypeError, match="thresold"):
        merge({"thresold": 0.5})


# ---- the same bad values, rejected everywhere, naming the field ----------------------------------

BAD = [  # (field, value, CLI flags, request body field)
    ("threshold", 1.5, ["--threshold", "1.5"], "threshold"),
    ("threshold", -0.1, ["--threshold", "-0.1"], "threshold"),
    ("max_new_tokens", -1, ["--max-new-tokens", "-1"], "max_tokens"),
    ("block_size", 0, ["--block-size", "0"], "block_size"),
    ("block_size", -4, ["--block-size", "-4"], "block_size"),
    ("small_block_size", 0, ["--small-block-size", "0"], "small_block_size"),
    ("temperature", -1.0, ["--temperature", "-1"], "temperature"),
    ("top_p", 0.0, ["--top-p", "0"], "top_p"),
    ("top_p", 1.5, ["--top-p", "1.5"], "top_p"),
    ("top_k", -3, ["--top-k", "-3"], "top_k"),
]


@pytest.mark.parametrize("field,value,flags,body_field", BAD, ids=[f"{f}={v}" for f, v, _, _ in BAD])
def test_every_front_end_rejects_the_same_values(field, value, flags, body_field):
    with pytest.raises(InvalidRequestError, match=field) as e:  # the API: LLM.generate(**kwargs) merges and checks
        merge({field: value}).validate()
    assert e.value.param == field
    with pytest.raises(CLIError, match="--" + field.replace("_", "-")):
        cli_generate.check_arguments(_cli_args(*flags))
    with pytest.raises(ValidationError, match=body_field):
        CompletionRequest.model_validate({"model": "m", "prompt": "x", body_field: value})


def test_divisibility_is_checked_by_every_front_end():
    with pytest.raises(InvalidRequestError, match="must divide block_size"):
        merge({"block_size": 32, "small_block_size": 5}).validate()
    with pytest.raises(CLIError, match="--small-block-size .* must divide --block-size"):
        cli_generate.check_arguments(_cli_args("--block-size", "32", "--small-block-size", "5"))
    # the server's pydantic model checks each field alone; the merged options are checked before
    # anything is queued (the same validate, run by LLM.prepare)
    req = CompletionRequest.model_validate({"model": "m", "prompt": "x", "block_size": 32, "small_block_size": 5})
    with pytest.raises(InvalidRequestError, match="divide") as e:
        merge(req.decode_fields(None)).validate()
    assert e.value.param == "small_block_size"
