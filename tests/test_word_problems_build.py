"""The default model's build (examples/word_problems/build.py), quick version: every stage, minutes.

Generator -> tokenizer -> AR pretraining -> block-diffusion adaptation (the matched-steps
ablation, then the continued stages) -> block-size sweep -> evaluation -> release files. The
quick budget proves that the pipeline runs and that its numbers mean what they say; the
accuracy and TPF targets belong to the full build (see the model card).
"""

from __future__ import annotations

import json

import pytest

from examples.word_problems import build
from examples.word_problems import problems as P


def test_data_slice_wraps_around(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text("".join(f"{i}\n" for i in range(5)))
    assert build.data_slice(src, 3, 4, tmp_path / "s.jsonl").read_text() == "3\n4\n0\n1\n"


def test_stages_are_checked_before_anything_runs(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown stage.*'evaluate'"):
        build.check_stages(tmp_path, ("data", "evaluate"))
    with pytest.raises(FileNotFoundError, match="the bd stage needs .*ar, which the ar stage makes"):
        build.check_stages(tmp_path, ("data", "bd"))
    with pytest.raises(FileNotFoundError, match="phrasings stage needs .*results.json, which the eval stage"):
        build.check_stages(tmp_path, ("data", "ar", "bd", "phrasings"))
    build.check_stages(tmp_path, build.STAGES)  # each stage's inputs come from an earlier one
    (tmp_path / "ar").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bd_train.jsonl").write_text("")
    (tmp_path / "tokenizer").mkdir()
    build.check_stages(tmp_path, ("bd",))  # or from an earlier run in the same directory
    with pytest.raises(SystemExit) as e:
        build.main(["--out", str(tmp_path), "--stages", "sweep"])
    assert e.value.code == 2 and "the sweep stage needs" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()  # nothing ran


def test_quick_build_end_to_end(tmp_path, two_threads):
    import fastdllm

    b = build.QUICK
    n_table = b.n_heldout - 4  # the full table on the first problems, the headline rows on all of them
    res = build.run(tmp_path, quick=True, progress=False, log=lambda *a, **k: None, parallel=False,
                    eval_problems=n_table)

    # data: held-out problems use held-out phrasings and never repeat a training problem
    train = P.read_jsonl(tmp_path / "data" / "train.jsonl")
    held = P.read_jsonl(tmp_path / "data" / "heldout.jsonl")
    assert len(train) == b.n_train and len(held) == b.n_heldout and all(p.held_out for p in held)
    assert not {p.question for p in train} & {p.question for p in held}

    # models: a plain AR parent; the ablation pair and the continued model carry the mask token
    ar_cfg = json.loads((tmp_path / "ar" / "config.json").read_text())
    assert ar_cfg["model_type"] == "qwen2" and "bd_size" not in ar_cfg
    for name, comp, steps in (("bd_matched", True, b.bd_steps), ("bd_nocomp", False, b.bd_steps),
                              ("bd", True, b.bd_more[-1][0])):
        train_cfg = json.loads((tmp_path / name / "train_config.json").read_text())
        assert train_cfg["complementary_mask"] is comp and train_cfg["objective"] == "diffusion"
        assert train_cfg["max_steps"] == steps and train_cfg["block_size"] == b.block_size
        llm = fastdllm.load(str(tmp_path / name))
        assert llm.is_block_diffusion and llm.config.bd_size == res["chosen"]["block_size"]
    assert json.loads((tmp_path / "bd" / "train_config.json").read_text())["model"] == str(tmp_path / "bd_matched")
    assert [r["steps"] for r in res["adaptation"]["continued"]] == [st[0] for st in b.bd_more]
    # the continuation read the problems after the ablation's, in order
    records = (tmp_path / "data" / "bd_train.jsonl").read_text().splitlines()
    more = (tmp_path / "data" / "bd_train_more1.jsonl").read_text().splitlines()
    start = b.bd_steps * b.bd_batch
    assert more == [records[(start + i) % len(records)] for i in range(b.bd_more[0][0] * b.bd_batch)]

    # evaluation: every row of the table, numbers that mean what they say
    evals = res["evaluations"]
    labels = {e["model"] for e in evals}
    assert labels == {"AR parent", "BD, compl. mask", build.matched_label(b, True), build.matched_label(b, False)}
    for e in evals:
        assert e["n"] == n_table and 0.0 <= e["accuracy"] <= 1.0
        assert e["generated_tokens"] > 0 and e["tokens_per_s"] > 0
        assert sum(e["errors"].values()) == round(e["n"] * (1 - e["accuracy"]))  # every wrong answer sorted
        if e["mode"] == "ar":
            assert e["tpf"] == 1.0
        else:  # a forward decodes at most one sub-block
            assert 0 < e["tpf"] <= e["small_block_size"]
    assert {(e["threshold"], e["block_cache"]) for e in evals if e["model"] == "BD, compl. mask"
            and e["batch"] == 1 and e["acceptance"] == "threshold"} == {(t, c) for t in build.THRESHOLDS
                                                                         for c in (False, True)}
    assert any(e["batch"] == b.batched for e in evals if e["mode"] == "ar")

    # the shipped decoding: every (sub-block, rule, threshold) and the parent on the validation problems;
    # the most tokens per forward within a point of the parent, else the most accurate
    dec, sweep = res["chosen"]["decoding"], res["chosen"]["decoding_sweep"]
    assert [(r["small_block_size"], r["acceptance"], r["threshold"]) for r in sweep[1:]] == [
        (sbs, rule, thr) for sbs in build.DECODING_SUB_BLOCKS if res["chosen"]["block_size"] % sbs == 0
        for rule, thr in build.DECODING_RULES]
    assert sweep[0]["mode"] == "ar" and all(r["n"] == b.n_sweep for r in sweep)
    keeps = [r for r in sweep[1:] if r["accuracy"] >= sweep[0]["accuracy"] - 0.01]
    best = (max(keeps, key=lambda r: r["tpf"]) if keeps else max(sweep[1:], key=lambda r: (r["accuracy"], r["tpf"])))
    assert dec == {k: best[k] for k in ("block_size", "small_block_size", "acceptance", "threshold")}
    ruled = dec["acceptance"] != "threshold"  # its rows join the table and the headline
    chosen_rows = [e for e in evals if e["acceptance"] == dec["acceptance"] != "threshold"]
    assert {(e["block_cache"], e["batch"]) for e in chosen_rows} == (
        {(c, n) for c in (False, True) for n in (1, b.batched)} if ruled else set())
    assert all(e["small_block_size"] == dec["small_block_size"] and e["threshold"] == dec["threshold"]
               for e in chosen_rows)
    head = res["headline"]
    assert [(e["model"], e["mode"], e["threshold"], e["batch"], e["n"]) for e in head] == [
        ("AR parent", "ar", None, 1, b.n_heldout), ("BD, compl. mask", "diffusion", 0.9, 1, b.n_heldout)] + (
        [("BD, compl. mask", "diffusion", dec["threshold"], 1, b.n_heldout)] if ruled else [])
    for e in head:  # greedy: the same problems decode to the same text as in the full table
        same = next(r for r in evals if (r["model"], r["mode"], r["threshold"], r["block_cache"], r["batch"],
                                         r["acceptance"]) == (e["model"], e["mode"], e["threshold"], False, 1,
                                                              e["acceptance"]))
        assert e["samples"] == same["samples"]

    # the phrasings check: the same two models on as many problems in training phrasings
    ph = res["phrasings"]
    assert [(e["model"], e["mode"], e["threshold"], e["phrasings"], e["n"], e["batch"]) for e in ph] == [
        (m, mode, thr, split, b.n_heldout, b.batched) for m, mode, thr in (("AR parent", "ar", None),
                                                                        ("BD, compl. mask", "diffusion", 0.9))
        for split in ("held-out", "training")]
    for e in ph:
        assert sum(e["errors"].values()) == round(e["n"] * (1 - e["accuracy"]))
        first = (held if e["phrasings"] == "held-out" else P.unseen_numbers(1, 0))[0]
        assert e["samples"][0]["question"] == first.question
    for e, h in zip(ph[::2], head[:2]):  # the held-out rows, batched, answer as the headline rows one at a time
        assert e["samples"] == h["samples"] and e["accuracy"] == h["accuracy"]
    assert "| AR parent | ar | training |" in (tmp_path / "report" / "results.md").read_text()

    # report and release
    for f in ("results.json", "results.md", "results.png", "trace.png"):
        assert (tmp_path / "report" / f).is_file(), f
    rel = tmp_path / "release"
    for f in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "heldout.jsonl",
              "ar_parent/model.safetensors"):
        assert (rel / f).is_file(), f
    card = (rel / "README.md").read_text()
    assert "| AR parent |" in card and build.matched_label(b, False) in card
    assert f"On all {b.n_heldout} held-out problems" in card
    assert f"On {b.n_heldout} held-out problems" in card  # the headline sentence uses all of them
    assert f"{100 * ph[1]['accuracy']:.1f}% right in wordings it trained on" in card
    shipped = fastdllm.load(str(rel))
    assert shipped.is_block_diffusion
    assert (shipped.config.bd_size, shipped.config.small_block_size, shipped.config.acceptance,
            shipped.config.threshold) == (dec["block_size"], dec["small_block_size"], dec["acceptance"],
                                          dec["threshold"])  # it decodes as chosen when a request names nothing
    out = shipped.generate([held[0].messages(with_answer=False)], max_new_tokens=16)[0]
    assert out.stats.nfe > 0 and out.text is not None

    # a partial rerun (the evaluation alone, say after more training) keeps what the earlier run
    # recorded for the stages it skips, and its total is the stages' sum
    (tmp_path / "report" / "results.json").write_text(json.dumps({**res, "note": "made in two invocations"}))
    again = build.run(tmp_path, quick=True, progress=False, log=lambda *a, **k: None, stages=("eval",),
                      eval_problems=2)
    assert again["evaluations"][0]["n"] == 2
    assert again["adaptation"] == res["adaptation"] and again["ar_pretrain"] == res["ar_pretrain"]
    assert again["chosen"] == res["chosen"] and again["note"] == "made in two invocations"
    assert "phrasings" not in again  # measured on the models before the rerun: dropped, not kept stale
    t = again["timings_s"]
    assert t["ar_pretrain"] == res["timings_s"]["ar_pretrain"] and t["eval"] != res["timings_s"]["eval"]
    assert "phrasings" not in t and "phrasings" in res["timings_s"]
    assert t["total"] == sum(t[k] for k in ("data", "ar_pretrain", "adapt", "adapt_more", "sweep", "eval"))


def test_build_killed_twice_resumes_to_the_same_files(tmp_path):
    """Killed inside the AR stage, then inside the adaptation, and run again: the build continues
    from its last checkpoints and ends with the files of a build that ran through."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from fastdllm.training.checkpoint import checkpoint_root, latest
    from fastdllm.training.metrics import read_metrics

    script = Path(build.__file__)
    cmd = [sys.executable, str(script), "--quick", "--threads", "1", "--no-parallel", "--stages", "data,ar,bd"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    subprocess.run(cmd + ["--out", str(ref)], check=True, capture_output=True, timeout=900)
    logs = []
    for stage, step in (("ar", 8), ("bd_matched", 4)):
        log = tmp_path / f"{stage}.log"
        with log.open("w") as f:
            proc = subprocess.Popen(cmd + ["--out", str(out)], stdout=f, stderr=subprocess.STDOUT)
            deadline = time.time() + 600
            while time.time() < deadline:
                last = latest(checkpoint_root(out / stage))
                if last is not None and int(last.name.split("-")[1]) >= step:
                    break
                assert proc.poll() is None, log.read_text()
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        logs.append(log.read_text())
    done = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "data: made in an earlier run, kept" in logs[1]
    assert "resumed at step" in logs[1]                       # the AR stage went on from its checkpoint
    assert "ar: finished in an earlier run, kept" in done.stdout
    assert "resumed at step" in done.stderr                   # and so did the adaptation
    for name in ("ar", "bd_matched", "bd_nocomp", "bd"):
        assert (out / name / "model.safetensors").read_bytes() == (ref / name / "model.safetensors").read_bytes(), name
        losses = [[(r["step"], r["loss"]) for r in read_metrics(d / name / "metrics.jsonl")] for d in (ref, out)]
        assert losses[0] == losses[1], name
