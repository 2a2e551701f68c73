"""Resume: a run killed mid-way (os._exit or a real SIGKILL) continues exactly where it stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fastdllm.training import TrainConfig, train
from fastdllm.training.checkpoint import checkpoint_root, latest, list_checkpoints
from fastdllm.training.metrics import read_metrics
from tests.helpers import make_tiny_checkpoint
from tests.training_helpers import write_ids_data

REPO = Path(__file__).resolve().parents[1]


def options(base, data, out, **kw) -> dict:
    o = dict(model=str(base), data=str(data), output_dir=str(out), block_size=8, seq_len=64, micro_batch_size=2,
             grad_accum=2, lr=3e-3, warmup_steps=2, schedule="cosine", max_steps=6, save_every=2,
             num_threads=1, progress=False, seed=7)
    o.update(kw)
    return o


def cli(o: dict, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "fastdllm.cli.main", "train"]
    for k, v in o.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + flag[2:])
        else:
            args += [flag, str(v)]
    return args + list(extra)


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def losses(out) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["lr"]) for r in read_metrics(Path(out) / "metrics.jsonl")]


def setup(tmp_path, lora: bool = False):
    base = make_tiny_checkpoint(tmp_path / "base", "qwen2", vocab=200, hidden=32, heads=4, kv_heads=2, inter=64)
    return base, write_ids_data(tmp_path / "d.jsonl", n=20, vocab=200)


def test_stop_then_resume_matches_uninterrupted(tmp_path):
    base, data = setup(tmp_path)
    ref = train(TrainConfig(**options(base, data, tmp_path / "ref")))
    out = tmp_path / "run"
    o = options(base, data, out)
    p = subprocess.run(cli(o, "--stop-after-steps", "3"), env=env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 3, p.stderr
    assert [c.name for c in list_checkpoints(checkpoint_root(out))] == ["step-00000002"]
    assert not (out / "model.safetensors").exists()  # died before the export
    p = subprocess.run(cli(o, "--resume"), env=env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert losses(out) == losses(ref.output_dir)  # bitwise: same data order, noise, optimizer state
    assert [s for s, _, _ in losses(out)] == list(range(1, 7))
    assert (out / "model.safetensors").read_bytes() == (ref.output_dir / "model.safetensors").read_bytes()


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    base, data = setup(tmp_path)
    steps = 80
    ref = train(TrainConfig(**options(base, data, tmp_path / "ref", max_steps=steps, save_every=0)))
    out = tmp_path / "run"
    o = options(base, data, out, max_steps=steps, save_every=1, keep_checkpoints=3)
    proc = subprocess.Popen(cli(o), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = checkpoint_root(out)
    deadline = time.time() + 90
    while time.time() < deadline:
        last = latest(root)
        if last is not None and int(last.name.split("-")[1]) >= 5:
            break
        if proc.poll() is not None:
            raise AssertionError(f"training ended before it could be killed: {proc.stderr.read().decode()}")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = int(latest(root).name.split("-")[1])
    assert killed_at < steps, "the kill came too late to test anything"
    p = subprocess.run(cli(o, "--resume"), env=env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    assert losses(out) == losses(ref.output_dir)
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == steps


def test_lora_resume_in_process(tmp_path):
    base, data = setup(tmp_path)
    full = train(TrainConfig(**options(base, data, tmp_path / "a", lora=True, lora_dropout=0.1, max_steps=4)))
    # a second run that resumes from the first one's step-2 checkpoint replays steps 3-4 identically
    out = tmp_path / "b"
    ckpts = checkpoint_root(full.output_dir)
    checkpoint_root(out).mkdir(parents=True)
    os.rename(ckpts / "step-00000002", checkpoint_root(out) / "step-00000002")
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in read_metrics(full.metrics_file)[:2]))
    resumed = train(TrainConfig(**options(base, data, out, lora=True, lora_dropout=0.1, max_steps=4, resume=True)))
    assert resumed.losses == full.losses[2:]
    assert losses(out) == losses(full.output_dir)
