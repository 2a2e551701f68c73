"""Training throughput: sample tokens per second of one optimizer step, per configuration.

A random model (default: 4 layers, hidden 256, vocabulary 32000; ``--preset smollm2`` for
SmolLM2-135M's shapes) trains on random samples (loss on the second half of each). Rows:

- ``ar``: plain causal-LM loss on x_0 (L tokens per row);
- ``diffusion``: the Fast-dLLM v2 recipe, [x_t ; x_0] (2L tokens per row), with and without the
  complementary mask (which doubles the rows), block size 32;
- ``diffusion, full logits``: the same step computing the [R, 2L, V] logits and a masked CE,
  as a model's generic forward would, to show what projecting only the targets saves;
- ``trainer``: ``fastdllm.training.train`` end to end (data, noising, AdamW, logging).

Tokens are the samples' own tokens (L per sample, counted once even when a sample is seen
twice through the complementary mask). Prints a table and writes JSON (``--out``).

    python benchmarks/bench_train.py
    python benchmarks/bench_train.py --preset smollm2 --seq-len 256 --batch 2 --steps 3
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastdllm.training import TrainConfig, train
from fastdllm.training.base import init_from_scratch
from fastdllm.training.data import Sample
from fastdllm.training.noise import ar_batch, diffusion_batch
from fastdllm.training.objective import TrainingObjective

PRESETS = {
    "small": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=32000),
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152),
}


def model_config(preset: str) -> dict:
    return {"model_type": "llama", "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 4096,
            "tie_word_embeddings": True, **PRESETS[preset]}


def make_samples(n: int, length: int, vocab: int, seed: int = 0) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab - 1, (length,), generator=g)
        lm = torch.zeros(length, dtype=torch.bool)
        lm[length // 2:] = True
        out.append(Sample(ids, lm))
    return out


def full_logits_loss(obj: TrainingObjective, batch) -> torch.Tensor:
    """The generic way: logits for every noisy-half position, then CE over the masked ones."""
    h = obj.hidden(batch)  # [R, 2L, H]
    L = batch.clean.shape[1]
    logits = obj.model.lm_head(h[:, :L]).float()  # [R, L, V]
    labels = torch.where(batch.targets, batch.clean, -100)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")


def time_steps(model, objective: str, complementary: bool, full: bool, samples, block: int, steps: int) -> dict:
    obj = TrainingObjective(model, objective, block, "dense")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    vocab = model.cfg.vocab_size
    mask_id = vocab - 1

    def batch(i):
        if objective == "ar":
            return ar_batch(samples, 0)
        return diffusion_batch(samples, list(range(i * len(samples), (i + 1) * len(samples))), block, mask_id,
                               1e-3, 0, complementary)

    times, tokens, rows = [], 0, 0
    for i in range(steps + 1):  # the first step warms up
        b = batch(i)
        t0 = time.perf_counter()
        loss = (full_logits_loss(obj, b) if full else obj(b)) / max(b.n_targets, 1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
            tokens += b.tokens
            rows = b.clean.shape[0]
    secs = sum(times)
    return {"tokens_per_s": tokens / secs, "step_s": secs / steps, "rows": rows,
            "forward_tokens": rows * samples[0].length * (1 if objective == "ar" else 2)}


def trainer_row(cfg_dict: dict, samples, block: int, steps: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data.jsonl"
        data.write_text("".join(json.dumps({"input_ids": s.ids.tolist(), "loss_mask": s.loss_mask.int().tolist()})
                                + "\n" for s in samples))
        cfg = TrainConfig(init_from_scratch=True, model_config=cfg_dict, data=str(data), output_dir=d + "/out",
                          block_size=block, seq_len=samples[0].length, micro_batch_size=batch,
                          max_steps=steps + 1, progress=False, device="cpu")
        r = train(cfg)
    return {"tokens_per_s": r.tokens_per_s, "step_s": r.seconds / r.steps, "rows": 2 * batch,
            "forward_tokens": 2 * batch * 2 * samples[0].length}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per sample (a multiple of the block size)")
    ap.add_argument("--batch", type=int, default=4, help="samples per step")
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per row (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default="bench_train.json", help="JSON results file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = model_config(args.preset)
    model = init_from_scratch(cfg, seed=0)
    model.train()
    samples = make_samples(args.batch, args.seq_len, cfg["vocab_size"])
    n_params = sum(p.numel() for p in model.parameters())
    rows = []
    for name, objective, comp, full in [("ar", "ar", False, False),
                                        ("diffusion, no complement", "diffusion", False, False),
                                        ("diffusion, complementary", "diffusion", True, False),
                                        ("diffusion, complementary, full logits", "diffusion", True, True)]:
        r = time_steps(model, objective, comp, full, samples, args.block_size, args.steps)
        rows.append({"config": name, **r})
    rows.append({"config": "trainer (end to end, complementary)",
                 **trainer_row(cfg, samples, args.block_size, args.steps, args.batch)})

    print(f"model: {args.preset} ({n_params / 1e6:.1f} M parameters), {args.batch} samples x {args.seq_len} tokens, "
          f"block {args.block_size}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'configuration':40s} {'rows':>5s} {'fwd tokens':>10s} {'s/step':>8s} {'tokens/s':>10s}")
    for r in rows:
        print(f"{r['config']:40s} {r['rows']:5d} {r['forward_tokens']:10d} {r['step_s']:8.3f} "
              f"{r['tokens_per_s']:10.1f}")
    result = {"preset": args.preset, "parameters": n_params, "batch": args.batch, "seq_len": args.seq_len,
              "block_size": args.block_size, "steps": args.steps, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform.machine(), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
