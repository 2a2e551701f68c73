"""``fastdllm train``: flags, config files, overrides and one-line errors with status 2."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from fastdllm.cli.main import main
from fastdllm.training import TrainConfig
from tests.helpers import make_tiny_checkpoint
from tests.training_helpers import write_ids_data


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    ckpt = make_tiny_checkpoint(d / "base", "qwen2", vocab=100, hidden=32, heads=4, kv_heads=2, inter=64)
    return ckpt, write_ids_data(d / "d.jsonl", n=8, vocab=100)


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("fastdllm: error: ")
    return err[0]


def test_help_documents_every_option(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in out, f.name
    assert "--config" in out and "torchrun" in out


@pytest.mark.parametrize("extra,message", [
    (["--data", "/nonexistent/data.jsonl"], "data file not found"),
    (["--block-size", "0"], "block_size must be positive"),
    (["--block-size", "24"], "must be a multiple of block_size"),
    (["--lr", "-1"], "lr must be positive"),
    (["--objective", "mdlm"], "invalid choice"),
    (["--model", "/nonexistent/model"], "model not found"),
    (["--attention", "flex", "--device", "cpu"], "flex attention has no backward"),
    (["--config", "/nonexistent.yaml"], "config file not found"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, base, capsys, extra, message):
    ckpt, data = base
    argv = ["train", "--model", str(ckpt), "--data", str(data), "--output-dir", str(tmp_path / "o"),
            "--max-steps", "1", "--no-progress", *extra]
    assert main(argv) == 2
    assert message in error_line(capsys)


def test_missing_required(tmp_path, capsys):
    assert main(["train", "--data", "x.jsonl", "--output-dir", str(tmp_path)]) == 2
    assert "no model" in error_line(capsys)


@pytest.mark.parametrize("text,message", [
    ("block_size: [32\n", "cannot parse"),
    ("blok_size: 32\n", "unknown training option(s): blok_size"),
    ("block_size: '32'\n", "block_size must be of type int"),
    ("- 1\n- 2\n", "expected a mapping"),
])
def test_bad_config_file(tmp_path, base, capsys, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    ckpt, data = base
    assert main(["train", "--config", str(cfg), "--model", str(ckpt), "--data", str(data),
                 "--output-dir", str(tmp_path / "o")]) == 2
    assert message in error_line(capsys)


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_config_file_with_flag_overrides(tmp_path, base, capsys, suffix):
    ckpt, data = base
    opts = {"model": str(ckpt), "data": str(data), "output-dir": str(tmp_path / "o"), "block_size": 8,
            "seq_len": 64, "max_steps": 5, "micro_batch_size": 2, "lr": 1e-3, "progress": False, "plot": True}
    cfg = tmp_path / f"c.{suffix}"
    if suffix == "yaml":
        import yaml

        cfg.write_text(yaml.safe_dump(opts))
    else:
        cfg.write_text(json.dumps(opts))
    assert main(["train", "--config", str(cfg), "--max-steps", "2", "--no-complementary-mask"]) == 0
    used = json.loads((tmp_path / "o" / "train_config.json").read_text())
    assert used["max_steps"] == 2 and used["block_size"] == 8 and used["complementary_mask"] is False
    assert [json.loads(l)["step"] for l in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    record = json.loads((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record) == {"step", "loss", "lr", "tokens", "tokens_per_s", "elapsed"}
    assert (tmp_path / "o" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "2 steps" in capsys.readouterr().err
