"""The synthetic end-to-end example (examples/synthetic), quick version: AR from scratch -> block diffusion.

The quick budget only proves that the pipeline runs and that its numbers mean what they say;
the accuracy and TPF targets belong to the full run (``python examples/synthetic/run.py``).
"""

from __future__ import annotations

import json

from examples.synthetic import run, task


def test_task_split_tokenizer_and_checker(tmp_path):
    train = task.make_split(3000, seed=0, held_out=False)
    held = task.make_split(300, seed=0, held_out=True)
    assert task.make_split(300, seed=0, held_out=True) == held  # deterministic
    assert not set(train) & set(held) and len(set(train)) == len(train)
    assert all(task.MIN_LEN <= len(p.numbers) <= task.MAX_LEN and len(set(p.numbers)) == len(p.numbers)
               and all(task.LOW <= x <= task.HIGH for x in p.numbers) for p in train + held)
    p = held[0]
    assert task.check_ids(p, p.answer_ids()) and p.answer_ids()[-1] == task.EOS_ID
    assert not task.check_ids(p, p.answer_ids()[:-1]) and not task.check_ids(p, p.answer_ids() + [task.EOS_ID])
    assert task.well_formed(p, list(reversed(p.answer_ids()[:-1])) + [task.EOS_ID])
    assert not task.well_formed(p, p.answer_ids()[:-1])

    # the saved tokenizer, reloaded the way fastdllm loads it, reproduces the task's ids
    from fastdllm.loading import load_tokenizer

    task.save_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    ids = tok.apply_chat_template(p.messages(), tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert list(ids["input_ids"]) == p.prompt_ids() + p.answer_ids()
    assert [i for i, m in zip(ids["input_ids"], ids["assistant_masks"]) if m] == p.answer_ids()
    assert tok.eos_token_id == task.EOS_ID


def test_quick_pipeline_end_to_end(tmp_path, two_threads):
    import fastdllm

    res = run.run(tmp_path, quick=True, progress=False, log=lambda *a, **k: None)

    for f in ("train.jsonl", "heldout.jsonl", "results.json", "results.md", "results.png"):
        assert (tmp_path / f).is_file(), f
    assert json.loads((tmp_path / "results.json").read_text())["evaluations"] == res["evaluations"]
    assert len((tmp_path / "results.md").read_text().strip().splitlines()) == 2 + 1 + 2 * len(run.THRESHOLDS)

    # the AR parent is a plain qwen2 checkpoint; the adapted ones carry bd_size and the mask token
    ar_cfg = json.loads((tmp_path / "ar" / "config.json").read_text())
    assert ar_cfg["model_type"] == "qwen2" and "bd_size" not in ar_cfg
    for name, comp in (("bd", True), ("bd_nocomp", False)):
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        assert cfg["bd_size"] == run.BLOCK_SIZE
        assert len(task.VOCAB) <= cfg["mask_token_id"] < cfg["vocab_size"]  # a new token, not a task word
        train_cfg = json.loads((tmp_path / name / "train_config.json").read_text())
        assert train_cfg["complementary_mask"] is comp and train_cfg["objective"] == "diffusion"
        assert res["adaptation"][name]["steps"] == run.QUICK.bd_steps
        llm = fastdllm.load(str(tmp_path / name))
        assert llm.is_block_diffusion and llm.mask_token_id == cfg["mask_token_id"]
    assert res["ar_pretrain"]["steps"] == run.QUICK.ar_steps

    evals = res["evaluations"]
    assert [(e["mode"], e["threshold"]) for e in evals] == \
        [("ar", None)] + [("diffusion", t) for t in run.THRESHOLDS] * 2
    n = run.QUICK.n_eval
    for e in evals:
        assert e["n"] == n
        for k in ("accuracy", "token_accuracy", "valid_format"):
            assert 0.0 <= e[k] <= 1.0, (k, e)
        assert e["generated_tokens"] > 0 and e["tokens_per_s"] > 0
        # at most MAX_LEN + 2 tokens per answer; a forward decodes at most one sub-block
        assert e["generated_tokens"] <= n * (task.MAX_LEN + 2)
        assert 0 < e["tpf"] <= run.SMALL_BLOCK_SIZE

    ar = evals[0]
    assert ar["tpf"] == 1.0  # one token per forward (the prefill produces the first)
    chance = 1 / (task.HIGH - task.LOW + 1)
    assert ar["token_accuracy"] > 10 * chance  # learned something in ~200 steps
    assert ar["valid_format"] > 0.5  # numbers then EOS
    for e in evals[1:]:
        if e["threshold"] == 1.0:
            # exactly one position per decode forward, and positions decoded after EOS are not output
            assert 0.5 < e["tpf"] <= 1.0
        assert e["valid_format"] > 0.5, e  # the adapted models decode numbers then EOS
