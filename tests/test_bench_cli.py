"""``fastdllm bench``: its rows against the API and transformers, its outputs, the default prompts, user errors.

The models are tiny random Qwen2-style checkpoints in the shipped layout of the default model
(``bd_size``, ``small_block_size`` and ``mask_token_id`` in config.json) with the word problems'
own byte-level BPE tokenizer and chat template, so prompts are real word problems. A random
model never writes ``The answer is N.``, so the grading itself is also tested on crafted texts.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

import fastdllm
from examples.word_problems import problems as P
from examples.word_problems import tokenizer as T
from fastdllm.benchmarking.engines import Sample
from fastdllm.benchmarking.prompts import BenchPrompt
from fastdllm.benchmarking.rows import add_speedups, compare_tokens, make_row
from fastdllm.cli.main import main
from fastdllm.models import extract_answer
from tests.helpers import make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
MAX_NEW = 40          # crosses a block boundary for these ~35-token prompts
EOS_ID, MASK_ID = 2, 3  # the word-problem tokenizer's special tokens: <|endoftext|>, <|im_start|>, <|im_end|>, |<MASK>|

FAKE_MODELING = '''"""Stand-in for the released modeling.py: fastdllm's naive oracle behind the released generate's signature."""
import torch

import fastdllm
from fastdllm.engine.reference import naive_block_diffusion
from fastdllm.engine.sampling import greedy

from .configuration import Fast_dLLM_QwenConfig  # the released files import each other relatively


class _Counted:
    """The fastdllm model, each call going through the owner's ``forward`` (where the worker counts)."""

    def __init__(self, owner):
        self._owner = owner

    def __getattr__(self, name):
        return getattr(self._owner.model, name)

    def __call__(self, *a, **kw):
        return self._owner.forward(*a, **kw)


class Fast_dLLM_QwenForCausalLM:
    @classmethod
    def from_pretrained(cls, path, torch_dtype=None):
        self = cls()
        self.model = fastdllm.load(str(path), dtype=torch_dtype).model
        return self

    def to(self, device):
        return self

    def eval(self):
        return self

    def forward(self, *a, **kw):
        return self.model(*a, **kw)

    def generate(self, x, max_new_tokens, mask_id, threshold, small_block_size, block_size, stop_token,
                 use_block_cache, temperature):
        prompt = x[0].tolist()
        out = naive_block_diffusion(_Counted(self), prompt, max_new_tokens=max_new_tokens, block_size=block_size,
                                    small_block_size=small_block_size, threshold=threshold,
                                    use_block_cache=use_block_cache, mask_id=mask_id, stop_ids={stop_token},
                                    sampler=greedy(mask_id))
        return torch.tensor([prompt + out])  # the release returns the ids alone
'''


def _tiny_model(directory: Path, seed: int) -> Path:
    """A random checkpoint like the shipped word-problems model: qwen2 + bd_size, small_block_size, mask id.

    A random model hardly ever writes EOS, so a token it does write often becomes a second stop id
    (first in config.json's ``eos_token_id``): outputs then end at different lengths, as real ones do.
    """
    tok = T.build(P.make_split(300, seed=0, held_out=False), directory, vocab_size=300)
    assert tok.eos_token_id == EOS_ID and tok.convert_tokens_to_ids(T.MASK) == MASK_ID
    make_tiny_checkpoint(directory, "qwen2", vocab=len(tok), max_pos=512, confident=True, seed=seed,
                         eos_token_id=EOS_ID)
    _set_config(directory, bd_size=32, small_block_size=8, mask_token_id=MASK_ID)
    questions = [p.question for p in P.make_split(8, seed=0, held_out=True)]
    counts: dict[int, int] = {}
    for r in fastdllm.load(str(directory)).generate(questions, max_new_tokens=MAX_NEW, stop_token_ids=[]):
        for t in set(r.token_ids[3:]):  # a token that opens an output would stop it at once
            counts[t] = counts.get(t, 0) + 1
    stop = max((n, t) for t, n in counts.items() if n < len(questions) and t != MASK_ID)[1]
    _set_config(directory, eos_token_id=[stop, EOS_ID])
    gen = directory / "generation_config.json"
    gen.write_text(json.dumps({**json.loads(gen.read_text()), "eos_token_id": [stop, EOS_ID]}))
    return directory


def _set_config(directory: Path, **values) -> None:
    cfg_file = directory / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **values}, indent=2))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return _tiny_model(tmp_path_factory.mktemp("bench") / "model", seed=0)


@pytest.fixture(scope="module")
def heldout() -> list[P.Problem]:
    return P.make_split(5, seed=0, held_out=True)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory, heldout) -> Path:
    """The three prompt forms, with answers (a string answer too) and one prompt without an answer."""
    f = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    lines = [{"question": heldout[0].question, "answer": heldout[0].answer},
             {"prompt": heldout[1].question, "answer": str(heldout[1].answer)},
             {"messages": heldout[2].messages(with_answer=False), "answer": heldout[2].answer},
             {"prompt": heldout[3].question}]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    return f


def _bench(*argv) -> int:
    return main(["bench", "--no-progress", "--max-new-tokens", str(MAX_NEW), *map(str, argv)])


def _rows(results: dict) -> dict:
    return {(r["engine"], r["decoding"], r["threshold"], r["batch"]): r for r in results["rows"]}


@pytest.fixture(scope="module")
def bench_run(model_dir, prompts_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "bench.json"
    status = _bench("--model", model_dir, "--prompts", prompts_file, "--threshold", "0.9,0.5", "--batch-size", 3,
                    "--out", out)
    return status, out


def test_bench_writes_every_row(bench_run, prompts_file):
    status, out = bench_run
    assert status == 0
    results = json.loads(out.read_text())
    assert set(_rows(results)) == {
        ("fastdllm", "ar", None, 1), ("fastdllm", "ar", None, 3),
        ("transformers", "ar", None, 1), ("transformers", "ar", None, 3),
        ("fastdllm", "diffusion", 0.9, 1), ("fastdllm", "diffusion", 0.5, 1),
        ("fastdllm", "diffusion", 0.9, 3), ("fastdllm", "diffusion", 0.5, 3)}
    assert results["prompts"] == {"source": str(prompts_file), "count": 4, "with_answers": 3}
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_bench_fields_are_consistent(bench_run):
    results = json.loads(bench_run[1].read_text())
    for r in results["rows"]:
        outs = r["outputs"]
        assert r["prompts"] == len(outs) == 4
        assert r["generated_tokens"] == sum(len(o["token_ids"]) for o in outs)
        assert r["nfe"] == sum(o["nfe"] for o in outs) > 0
        assert r["tpf"] == pytest.approx(r["generated_tokens"] / r["nfe"])
        assert r["tokens_per_second"] == pytest.approx(r["generated_tokens"] / r["seconds"])
        assert all(0 < len(o["token_ids"]) <= MAX_NEW for o in outs)
        # accuracy: the 'The answer is N.' line of the output against the answer, over the 3 graded prompts
        assert [o["expected"] is None for o in outs] == [False, False, False, True]
        graded = [extract_answer(o["text"]) == o["expected"] for o in outs if o["expected"] is not None]
        assert r["scored"] == 3 and r["accuracy"] == pytest.approx(sum(graded) / 3)
        assert [o["answer"] for o in outs] == [extract_answer(o["text"]) for o in outs]
        if r["decoding"] == "ar":
            assert r["tpf"] == 1.0 and all(o["nfe"] == len(o["token_ids"]) for o in outs)
        if r["engine"] == "fastdllm" and r["decoding"] == "ar":
            assert r["speedup_vs_ar"] == pytest.approx(1.0)
        else:
            ar = _rows(results)["fastdllm", "ar", None, r["batch"]]
            assert r["speedup_vs_ar"] == pytest.approx(r["tokens_per_second"] / ar["tokens_per_second"])


def test_bench_diffusion_and_ar_rows_equal_generate(bench_run, model_dir, prompts_file):
    """The bench decodes what ``LLM.generate`` decodes, batched or not (greedy decoding is batch-invariant)."""
    rows = _rows(json.loads(bench_run[1].read_text()))
    llm = fastdllm.load(str(model_dir))
    items = [json.loads(line) for line in prompts_file.read_text().splitlines() if line.strip()]
    prompts = [x.get("messages") or x.get("prompt") or x.get("question") for x in items]
    for key, opts in [((0.9,), dict(mode="diffusion", threshold=0.9)), ((0.5,), dict(mode="diffusion", threshold=0.5)),
                      ((None,), dict(mode="ar"))]:
        expected = llm.generate(prompts, max_new_tokens=MAX_NEW, **opts)
        for batch in (1, 3):
            row = rows["fastdllm", opts["mode"], key[0], batch]
            assert [o["token_ids"] for o in row["outputs"]] == [e.token_ids for e in expected], (key, batch)
            assert [o["text"] for o in row["outputs"]] == [e.text for e in expected]
            assert [o["nfe"] for o in row["outputs"]] == [e.stats.nfe for e in expected] or batch > 1
    # stop handling is exercised: some outputs end with EOS before max_new_tokens, some run to the limit
    lengths = {len(o["token_ids"]) for r in rows.values() for o in r["outputs"]}
    assert len(lengths) > 1


def test_bench_transformers_row_equals_fastdllm_ar(bench_run):
    """transformers' greedy generate on the same weights and ids gives fastdllm AR's tokens (float32)."""
    rows = _rows(json.loads(bench_run[1].read_text()))
    for batch in (1, 3):
        hf, ar = rows["transformers", "ar", None, batch], rows["fastdllm", "ar", None, batch]
        assert [o["token_ids"] for o in hf["outputs"]] == [o["token_ids"] for o in ar["outputs"]], batch
        assert [o["text"] for o in hf["outputs"]] == [o["text"] for o in ar["outputs"]]
        assert hf["same_tokens_as"] == {"row": "fastdllm AR b=%d" % batch, "prompts": 4, "of": 4,
                                        "compared": "whole outputs"}


def test_bench_prints_the_table(model_dir, prompts_file, tmp_path, capsys):
    status = _bench("--model", model_dir, "--prompts", prompts_file, "--batch-size", 1, "--limit", 2,
                    "--no-transformers", "--no-plot", "--out", tmp_path / "b.json")
    assert status == 0
    stdout = capsys.readouterr().out
    for col in ("engine", "decoding", "threshold", "batch", "accuracy", "tokens", "NFE", "TPF", "tokens/s", "vs AR"):
        assert col in stdout
    assert f"wrote {tmp_path / 'b.json'}" in stdout
    results = json.loads((tmp_path / "b.json").read_text())
    assert {(r["engine"], r["decoding"], r["batch"]) for r in results["rows"]} == {
        ("fastdllm", "ar", 1), ("fastdllm", "diffusion", 1)}  # --batch-size 1: no batched rows
    assert results["prompts"]["count"] == 2 and not (tmp_path / "b.png").exists()


def test_default_prompts_and_ar_parent_come_from_the_model_dir(model_dir, heldout, tmp_path):
    """Without --prompts: MODEL/heldout.jsonl; without --ar-model: MODEL/ar_parent for the AR rows."""
    d = tmp_path / "shipped"
    shutil.copytree(model_dir, d)
    P.write_jsonl(heldout, d / "heldout.jsonl")
    parent = _tiny_model(d / "ar_parent", seed=1)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "threshold": 0.7}))  # the checkpoint's own threshold
    out = tmp_path / "b.json"
    assert _bench("--model", d, "--limit", 2, "--batch-size", 2, "--out", out, "--no-plot") == 0
    results = json.loads(out.read_text())
    assert {r["threshold"] for r in results["rows"] if r["decoding"] == "diffusion"} == {0.7}  # no --threshold
    assert results["prompts"] == {"source": str(d / "heldout.jsonl"), "count": 2, "with_answers": 2}
    assert results["settings"]["ar_model"] == str(parent)
    rows = _rows(results)
    for r in results["rows"]:
        assert [o["expected"] for o in r["outputs"]] == [p.answer for p in heldout[:2]]
        assert r["model_path"] == str(parent if r["decoding"] == "ar" else d)
        assert r["model"] == ("AR parent" if r["decoding"] == "ar" else "model")
    ar = fastdllm.load(str(parent)).generate([p.question for p in heldout[:2]], max_new_tokens=MAX_NEW, mode="ar")
    for key in (("fastdllm", "ar", None, 1), ("transformers", "ar", None, 1), ("fastdllm", "ar", None, 2)):
        assert [o["token_ids"] for o in rows[key]["outputs"]] == [r.token_ids for r in ar], key


def test_reference_rows_through_the_worker(model_dir, prompts_file, tmp_path, monkeypatch):
    """--reference-code runs the released generate's files in a separate interpreter (here a stand-in built on
    fastdllm's naive oracle): one batch-1 row per threshold, cross-checked against fastdllm's diffusion row."""
    code = tmp_path / "released"
    code.mkdir()
    (code / "modeling.py").write_text(FAKE_MODELING)
    (code / "configuration.py").write_text("class Fast_dLLM_QwenConfig:\n    pass\n")
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the stand-in imports this checkout's fastdllm
    out = tmp_path / "b.json"
    assert _bench("--model", model_dir, "--prompts", prompts_file, "--threshold", "0.9,0.5", "--batch-size", 1,
                  "--no-transformers", "--no-plot", "--reference-code", code, "--reference-python", sys.executable,
                  "--out", out) == 0
    rows = _rows(json.loads(out.read_text()))
    for t in (0.9, 0.5):
        ref = rows["reference", "diffusion", t, 1]
        assert ref["reference_max_new_tokens"] == 64  # whole blocks
        assert ref["same_tokens_as"] == {"row": f"fastdllm diffusion t={t:g} b=1", "prompts": 4, "of": 4,
                                         "compared": "up to the shorter output"}
        ours = rows["fastdllm", "diffusion", t, 1]
        for a, b in zip(ref["outputs"], ours["outputs"]):
            assert a["token_ids"][:MAX_NEW] == b["token_ids"]
    assert ("reference", "diffusion", 0.9, 2) not in rows


# ---- grading and summing, on crafted outputs ---------------------------------------------------

def test_accuracy_counts_only_prompts_with_answers():
    prompts = [BenchPrompt("a", 7), BenchPrompt("b", 12), BenchPrompt("c", None), BenchPrompt("d", -3)]
    samples = [Sample([1, 2, 3], 2, "so 3 + 4 = 7. The answer is 7."),
               Sample([4, 5], 2, "The answer is 13."),
               Sample([6], 1, "The answer is 1."),
               Sample([7, 8, 9, 10], 1, "The answer is 5. No: The answer is -3.")]
    row = make_row(engine="fastdllm", model="model", model_path="m", decoding="diffusion", threshold=0.9, batch=1,
                   samples=samples, seconds=2.0, prompts=prompts)
    assert (row["accuracy"], row["correct"], row["scored"]) == (pytest.approx(2 / 3), 2, 3)
    assert [o["correct"] for o in row["outputs"]] == [True, False, None, True]
    assert (row["generated_tokens"], row["nfe"], row["tpf"], row["tokens_per_second"]) == (10, 6, 10 / 6, 5.0)
    none = make_row(engine="fastdllm", model="model", model_path="m", decoding="ar", threshold=None, batch=1,
                    samples=samples[:1], seconds=1.0, prompts=[BenchPrompt("x")])
    assert none["accuracy"] is None and none["scored"] == 0
    add_speedups([row, none])
    assert row["speedup_vs_ar"] == pytest.approx(5.0 / 3.0) and none["speedup_vs_ar"] == 1.0  # 10/2 s vs 3/1 s
    compare_tokens(row, none)
    assert row["same_tokens_as"]["prompts"] == 1


# ---- user errors: one line, exit status 2 ------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    ('{"prompt": "hi"}\n{"prompt": "oops"\n', "line 2: not valid JSON"),
    ('{"text": "hi"}\n', "line 1: no 'prompt', 'question' or 'messages' field"),
    ('{"prompt": "hi", "answer": "forty"}\n', "line 1: 'answer' must be an integer"),
    ('{"messages": "hi"}\n', "'messages' must be a non-empty list"),
    ('["hi"]\n{"prompt": "x"}\n', "line 1: expected a JSON object"),
    ("\n\n", "holds no prompts"),
])
def test_malformed_prompts_file(model_dir, tmp_path, capsys, content, message):
    f = tmp_path / "p.jsonl"
    f.write_text(content)
    assert _bench("--model", model_dir, "--prompts", f, "--out", tmp_path / "b.json") == 2
    err = capsys.readouterr().err
    assert err.startswith("fastdllm: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--prompts", "/nonexistent/prompts.jsonl"], "prompts file not found: /nonexistent/prompts.jsonl"),
    (["--threshold", "1.5"], "--threshold must be in [0, 1], got 1.5"),
    (["--threshold", "0.9,-0.1"], "--threshold must be in [0, 1], got -0.1"),
    (["--threshold", "high"], "--threshold: 'high' is not a number"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--limit", "-1"], "--limit must be >= 0"),
    (["--ar-model", "/nonexistent/parent"], "--ar-model: /nonexistent/parent is not a checkpoint directory"),
    (["--reference-code", "/nonexistent/code"], "lacks modeling.py and configuration.py"),
    (["--plot", "out.gif"], "--plot: 'out.gif' must end in .png, .svg or .pdf"),
    (["--dtype", "int3"], "--dtype"),
    (["--batch-size", "two"], "invalid int value"),
])
def test_user_errors(model_dir, tmp_path, capsys, args, message):
    assert _bench("--model", model_dir, "--out", tmp_path / "b.json", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastdllm: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "b.json").exists()


def test_missing_model_is_a_user_error(tmp_path, capsys):
    assert _bench("--model", tmp_path / "nothing-here", "--out", tmp_path / "b.json") == 2
    err = capsys.readouterr().err
    assert err.startswith("fastdllm: error: ") and "nothing-here" in err and err.count("\n") == 1
