"""Scale-out: 2 CPU processes under torchrun (gloo) train the same steps as 1 process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fastdllm.training import TrainConfig, train
from tests.test_training_resume import cli, env, losses, options, setup


@pytest.mark.parametrize("fsdp,accum", [(False, 2), (True, 1)], ids=["ddp-accum", "fsdp"])
def test_two_processes_match_one(tmp_path, fsdp, accum):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    base, data = setup(tmp_path)
    # same global batch: 1 process x 2k accumulation steps vs 2 processes x k (k > 1 exercises no_sync)
    ref = train(TrainConfig(**options(base, data, tmp_path / "one", grad_accum=2 * accum, max_steps=4, save_every=0)))
    out = tmp_path / "two"
    args = cli(options(base, data, out, grad_accum=accum, max_steps=4, save_every=0, fsdp=fsdp))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", *args[2:]]
    e = env()
    e["OMP_NUM_THREADS"] = "1"
    p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    one, two = losses(ref.output_dir), losses(out)
    assert [s for s, _, _ in two] == [1, 2, 3, 4]
    for (s1, l1, lr1), (s2, l2, lr2) in zip(one, two):
        assert s1 == s2 and lr1 == lr2
        assert abs(l1 - l2) <= 1e-6 * abs(l1), (s1, l1, l2)  # bitwise when k = 1; summation order otherwise
    from safetensors.torch import load_file

    a, b = load_file(str(ref.output_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)
    assert os.path.exists(out / "config.json")
