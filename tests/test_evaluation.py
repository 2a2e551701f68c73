"""Evaluation: continuation scoring against transformers, and the lm-eval model on local YAML tasks.

Scores must equal transformers' causal log-probabilities on the same checkpoint; what lm-eval
records for a generation task must be exactly what ``LLM.generate`` produces for that prompt;
the reported metric must be recomputable from those outputs.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fastdllm
from fastdllm.evaluation import score_continuations
from tests.helpers import make_tiny_chat_checkpoint, hf_logits, hf_reference_model, make_tiny_checkpoint, random_ids

lm_eval = pytest.importorskip("lm_eval")



def _hf_continuation_logprob(hf, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    ids = torch.tensor(ctx + cont)
    logp = torch.log_softmax(hf_logits(hf, ids[:-1]).double(), -1)  # [T-1, V]
    rows = logp[len(ctx) - 1:]
    tgt = torch.tensor(cont)
    return float(rows.gather(-1, tgt[:, None]).sum()), bool((rows.argmax(-1) == tgt).all())


@pytest.mark.parametrize("family", ["qwen2", "llama", "fast_dllm"])
def test_scores_match_transformers(tmp_path, family):
    d = make_tiny_checkpoint(tmp_path / family, family, vocab=300, max_pos=64, confident=True)
    llm = fastdllm.load(str(d), dtype="float64")
    hf = hf_reference_model(d)
    ids = random_ids(200, 300, seed=3).tolist()
    pairs = [(ids[:5], ids[5:9]), (ids[10:40], ids[40:41]), (ids[50:53], ids[53:80]), ([ids[90]], ids[91:95]),
             (ids[100:180], ids[180:184])]  # the last one is longer than the context (64): cut from the left
    got = score_continuations(llm.model, pairs, max_length=64, batch_size=2)
    for (ctx, cont), (lp, greedy) in zip(pairs, got):
        ctx = (ctx + cont)[-65:][:-len(cont)]
        ref_lp, ref_greedy = _hf_continuation_logprob(hf, ctx, cont)
        torch.testing.assert_close(lp, ref_lp, rtol=1e-9, atol=1e-9)
        assert greedy == ref_greedy
    # a continuation the model would produce greedily is reported as greedy
    ctx = ids[:6]
    g = llm.generate([ctx], mode="ar", max_new_tokens=3, stop_token_ids=[])[0].token_ids
    assert score_continuations(llm.model, [(ctx, g)], max_length=64)[0][1] is True
    # batch composition does not change a score
    alone = [score_continuations(llm.model, [p], max_length=64)[0][0] for p in pairs]
    torch.testing.assert_close(torch.tensor([s for s, _ in got]), torch.tensor(alone), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="non-empty"):
        score_continuations(llm.model, [([], ids[:3])], max_length=64)


# ---- lm-eval with local tasks -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bd_ckpt(tmp_path_factory) -> Path:
    return make_tiny_chat_checkpoint(tmp_path_factory.mktemp("ev") / "m")


DOCS = [{"question": q, "answer": a, "choices": c, "label": l} for q, a, c, l in [
    ("What is the capital of France?", "Paris", ["Paris", "Rome", "Berlin"], 0),
    ("How many legs does a spider have?", "8", ["six", "eight", "ten"], 1),
    ("What colour is the sky?", "blue", ["green", "red", "blue"], 2),
    ("Name a prime number.", "7", ["4", "7", "9"], 1),
    ("What is two plus two?", "4", ["4", "5", "22"], 0),
]]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tasks")
    data = d / "qa.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in DOCS))
    common = f"""\
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        test_split: test
        doc_to_text: "Q: {{{{question}}}}\\nA:"
    """
    (d / "tiny_gen.yaml").write_text(textwrap.dedent(common) + textwrap.dedent("""\
        task: tiny_gen
        output_type: generate_until
        doc_to_target: " {{answer}}"
        generation_kwargs:
          until: ["\\n", "Q:"]
          max_gen_toks: 12
          do_sample: false
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
    """))
    (d / "tiny_mc.yaml").write_text(textwrap.dedent(common) + textwrap.dedent("""\
        task: tiny_mc
        output_type: multiple_choice
        doc_to_choice: "{{choices}}"
        doc_to_target: label
        target_delimiter: " "
        metric_list:
          - metric: acc
    """))
    (d / "tiny_ppl.yaml").write_text(textwrap.dedent(common.replace('doc_to_text: "Q: {{question}}\\nA:"', "")) +
                                     textwrap.dedent("""\
        task: tiny_ppl
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: "{{question}} {{answer}}"
        metric_list:
          - metric: word_perplexity
    """))
    return d


def _evaluate(lm, task_dir, tasks):
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_path=str(task_dir)),
                                   log_samples=True, num_fewshot=0)


def test_generation_task_outputs_are_the_engines(bd_ckpt, task_dir):
    from fastdllm.evaluation.harness import FastDLLMLM

    llm = fastdllm.load(str(bd_ckpt), max_batch_size=4)
    lm = FastDLLMLM(llm=llm, pretrained=str(bd_ckpt), batch_size=4, threshold=0.7, progress=False)
    res = _evaluate(lm, task_dir, ["tiny_gen"])
    samples = sorted(res["samples"]["tiny_gen"], key=lambda s: s["doc_id"])
    assert len(samples) == len(DOCS)
    hits = 0
    for s, doc in zip(samples, DOCS):
        prompt = f"Q: {doc['question']}\nA:"
        assert s["arguments"][0][0] == prompt  # lm-eval built the prompt we expect
        ref = llm.generate([llm.tokenizer.encode(prompt, add_special_tokens=False)], max_new_tokens=12,
                           threshold=0.7, stop=["\n", "Q:"])[0]
        assert s["resps"][0][0] == ref.text
        hits += ref.text.strip() == doc["answer"]
    assert res["results"]["tiny_gen"]["exact_match,none"] == pytest.approx(hits / len(DOCS))
    st = lm.decoding_summary()
    assert st["requests"] == len(DOCS) and st["nfe"] > 0 and st["tpf"] == st["generated_tokens"] / st["nfe"]


def test_loglikelihood_tasks_match_transformers(bd_ckpt, task_dir):
    from fastdllm.evaluation.harness import FastDLLMLM

    llm = fastdllm.load(str(bd_ckpt), dtype="float64")
    lm = FastDLLMLM(llm=llm, pretrained=str(bd_ckpt), batch_size=3, progress=False)
    res = _evaluate(lm, task_dir, ["tiny_mc", "tiny_ppl"])
    hf = hf_reference_model(bd_ckpt)
    tok = llm.tokenizer

    samples = {x["doc_id"]: x for x in res["samples"]["tiny_mc"]}
    correct = 0
    for i, doc in enumerate(DOCS):
        ctx = tok.encode(f"Q: {doc['question']}\nA:", add_special_tokens=False)
        scores = []
        for choice in doc["choices"]:
            whole = tok.encode(f"Q: {doc['question']}\nA: {choice}", add_special_tokens=False)
            scores.append(_hf_continuation_logprob(hf, ctx, whole[len(ctx):])[0])
        correct += max(range(len(scores)), key=scores.__getitem__) == doc["label"]
        got = [float(r[0][0]) for r in samples[i]["resps"]]  # one (logprob, greedy) per choice
        torch.testing.assert_close(got, scores, rtol=1e-9, atol=1e-9)
    assert res["results"]["tiny_mc"]["acc,none"] == pytest.approx(correct / len(DOCS))

    # perplexity: each document scored from the prefix (EOS) token, all tokens once
    total_lp, words = 0.0, 0
    for doc in DOCS:
        text = f"{doc['question']} {doc['answer']}"
        ids = tok.encode(text, add_special_tokens=False)
        total_lp += _hf_continuation_logprob(hf, [tok.eos_token_id], ids)[0]
        words += len(text.split())
    torch.testing.assert_close(res["results"]["tiny_ppl"]["word_perplexity,none"], math.exp(-total_lp / words),
                               rtol=1e-6, atol=0)


def test_eval_cli(bd_ckpt, task_dir, tmp_path):
    out = tmp_path / "res.json"
    r = subprocess.run([sys.executable, "-m", "fastdllm", "eval", "--model", str(bd_ckpt), "--tasks", "tiny_gen",
                        "--include-path", str(task_dir), "--threshold", "0.5", "--output", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "tiny_gen" in r.stdout and "exact_match" in r.stdout and "TPF" in r.stderr
    payload = json.loads(out.read_text())
    assert "tiny_gen" in payload["results"] and payload["fastdllm"]["generation"]["requests"] == len(DOCS)
    bad = subprocess.run([sys.executable, "-m", "fastdllm", "eval", "--model", str(bd_ckpt), "--tasks", "no_such_task",
                          "--include-path", str(task_dir)], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown task" in bad.stderr and "Traceback" not in bad.stderr
