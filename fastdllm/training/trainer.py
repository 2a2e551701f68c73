"""The training loop: ``train(TrainConfig) -> TrainResult``.

A step covers ``micro_batch_size x grad_accum x processes`` samples, taken in order from the
seeded per-epoch permutation; sample k of step s is global index s * G + k whatever the
process layout, and its noise is seeded by that index. The loss of a step is the sum of the
target cross-entropies over the whole global batch divided by the global target count, so
1 process with accumulation and N processes with DDP compute the same step.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint as ckpt_io
from .base import count_parameters, load_base
from .config import TrainConfig, TrainConfigError
from .data import SampleOrder, load_samples, micro_batch_indices
from .distributed import Layout, all_sum, barrier, setup, teardown
from .export import export_model, write_extras
from .metrics import MetricsLog, bar_postfix, plot_loss, progress_bar
from .noise import ar_batch, block_size_at, diffusion_batch, open_pairs_at
from .objective import TrainingObjective
from .optim import make_optimizer, make_scheduler
from .parallel import Parallel
from .vocab import find_or_add_mask_token


@dataclass
class TrainResult:
    output_dir: Path
    loss: float                 # loss of the last step
    steps: int                  # optimizer steps completed (including those before a resume)
    tokens_per_s: float         # sample tokens per second in this process's run
    tokens: int = 0             # sample tokens trained on, over the whole run
    seconds: float = 0.0        # wall time of this process's training loop
    losses: list[float] = field(default_factory=list)  # per-step losses of this process's steps
    metrics_file: Path | None = None


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg.validate()
        self.out = Path(cfg.output_dir)
        self.layout: Layout = setup(cfg.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        dev = self.layout.device
        self.attention = self._attention_kind(dev)
        self.use_bf16 = dev.type == "cuda" if cfg.bf16 is None else cfg.bf16
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)

        base = load_base(cfg, dev)
        self.base, self.model, self.tokenizer = base, base.model, base.tokenizer
        self.mask = find_or_add_mask_token(self.model, self.tokenizer, cfg.mask_token_id) if cfg.is_diffusion else None
        self.samples = load_samples(cfg.data, self.tokenizer, cfg.seq_len, self.model.cfg.vocab_size, cfg.packing,
                                    cfg.append_eos)
        self.order = SampleOrder(len(self.samples), cfg.seed, cfg.shuffle)
        self.global_batch = cfg.micro_batch_size * cfg.grad_accum * self.layout.world
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(self.samples) / self.global_batch))
        self.pad_id = self._pad_id()

        self.peft = None
        if cfg.lora:
            from .lora import apply_lora

            self.peft = apply_lora(self.model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
        self.model.gradient_checkpointing = cfg.gradient_checkpointing
        self.model.train()
        if cfg.compile:
            # the stack of layers, not the loss: the targets' count changes every step. Only this
            # instance's method is replaced, so the state dict and the export are untouched
            self.model.hidden_states = torch.compile(self.model.hidden_states, dynamic=True)
        self.objective = TrainingObjective(self.model, cfg.objective, cfg.block_size, self.attention,
                                           cfg.loss_chunk_size)
        self.parallel = Parallel(self.objective, self.layout, cfg.fsdp, cfg.lora)
        self.optimizer = make_optimizer(self.objective.parameters(), cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg, self.total_steps)
        self.rates = cfg.mask_rates()
        self.ar_loss: float | None = None  # the auxiliary AR loss of the last step (when on)
        self.step, self.tokens, self.elapsed = 0, 0, 0.0

    # ---- setup helpers ----------------------------------------------------------------------
    def _attention_kind(self, dev: torch.device) -> str:
        kind = self.cfg.attention
        if kind == "auto":
            from .flex import available

            # annealing draws a new mask every step: flex would rebuild its block mask each time
            flex = dev.type == "cuda" and available() and not self.cfg.attention_anneal_steps
            return "flex" if flex else "split"
        if kind == "flex" and dev.type != "cuda" and self.cfg.is_diffusion:
            raise TrainConfigError("flex attention has no backward pass on the CPU in this torch; "
                                   "use --attention split, dense or auto")
        return kind

    def _pad_id(self) -> int:
        if self.mask is not None:
            return self.mask.id
        c = self.model.cfg
        return c.pad_token_id if c.pad_token_id is not None else (c.eos_token_id[0] if c.eos_token_id else 0)

    # ---- data -------------------------------------------------------------------------------
    def block_size_at(self, step: int) -> int:
        """The block size of step ``step`` (the curriculum's, then ``block_size``)."""
        cfg = self.cfg
        return block_size_at(step, cfg.block_curriculum, cfg.block_curriculum_steps, cfg.block_size)

    def micro_batch(self, step: int, accum: int, open_pairs: torch.Tensor | None = None):
        cfg, lay = self.cfg, self.layout
        idx = micro_batch_indices(step, accum, lay.rank, cfg.micro_batch_size, lay.world, cfg.grad_accum)
        samples = [self.samples[self.order[g]] for g in idx]
        if self.mask is None:
            return ar_batch(samples, self.pad_id)
        return diffusion_batch(samples, idx, cfg.block_size, self.mask.id, self.rates, cfg.seed,
                               cfg.complementary_mask, noise_block=self.block_size_at(step), open_pairs=open_pairs,
                               ar_targets=cfg.ar_loss_weight > 0)

    # ---- one optimizer step -----------------------------------------------------------------
    def train_step(self, step: int) -> tuple[float, int]:
        """Run step ``step`` (0-based); returns (loss, sample tokens) over the global batch.

        With the auxiliary AR loss the step minimises (alpha AR + diffusion) / (1 + alpha), each
        the mean over its own targets; the loss returned stays the diffusion loss (the AR loss
        goes to ``self.ar_loss``), so runs with and without it compare.
        """
        cfg, lay = self.cfg, self.layout
        pairs = None
        if self.mask is not None and cfg.attention_anneal_steps:
            pairs = open_pairs_at(step, cfg.attention_anneal_steps, cfg.seq_len, cfg.seed)
        batches = [self.micro_batch(step, a, pairs) for a in range(cfg.grad_accum)]
        count = all_sum(sum(b.n_targets for b in batches), lay)
        scale = lay.world / max(count, 1.0)  # DDP/FSDP average over processes: undo it
        alpha = cfg.ar_loss_weight if self.mask is not None else 0.0
        ar_count = all_sum(sum(b.n_ar_targets for b in batches), lay) if alpha else 0.0
        loss_sum = ar_sum = 0.0
        for a, batch in enumerate(batches):
            last = a == cfg.grad_accum - 1
            with self.parallel.sync(last):  # DDP skips the all-reduce except on the last micro-batch
                with torch.autocast(lay.device.type, torch.bfloat16, enabled=self.use_bf16):
                    s = self.parallel(batch)
                if alpha:
                    s, s_ar = s
                    ((s * scale + alpha * lay.world / max(ar_count, 1.0) * s_ar) / (1 + alpha)).backward()
                    ar_sum += float(s_ar.detach())
                else:
                    (s * scale).backward()
            loss_sum += float(s.detach())
        self.ar_loss = all_sum(ar_sum, lay) / max(ar_count, 1.0) if alpha else None
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.objective.parameters() if p.requires_grad],
                                           cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = int(all_sum(sum(b.tokens for b in batches), lay))
        return all_sum(loss_sum, lay) / max(count, 1.0), tokens

    # ---- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        state = {"step": self.step, "samples_seen": self.step * self.global_batch, "tokens": self.tokens,
                 "elapsed": self.elapsed, "global_batch": self.global_batch, "model": self.parallel.model_state(),
                 "optimizer": self.parallel.optim_state(self.optimizer), "scheduler": self.scheduler.state_dict(),
                 "rng": ckpt_io.rng_state(), "config": self.cfg.to_dict()}
        if self.layout.is_main:
            ckpt_io.save(ckpt_io.checkpoint_root(self.out), self.step, state, self.cfg.keep_checkpoints)
        barrier(self.layout)

    def resume(self) -> bool:
        path = ckpt_io.latest(ckpt_io.checkpoint_root(self.out))
        if path is None:
            return False
        state = ckpt_io.load(path)
        if state["global_batch"] != self.global_batch:
            raise TrainConfigError(f"{path} was written with a global batch of {state['global_batch']} samples; "
                                   f"this run has {self.global_batch} (micro batch x accum x processes)")
        self.parallel.load(state["model"], self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt_io.set_rng_state(state["rng"])
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        return True

    # ---- the run ----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg, main = self.cfg, self.layout.is_main
        resumed = cfg.resume and self.resume()
        metrics_file = self.out / "metrics.jsonl"
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not resumed:
                ckpt_io.clear(ckpt_io.checkpoint_root(self.out))
            (self.out / "train_config.json").write_text(_json(cfg.to_dict()))
            log = MetricsLog(metrics_file, self.step if resumed else None)
            total, trainable = count_parameters(self.model)
            _say(f"fastdllm train: {len(self.samples)} samples, {self.total_steps} steps of {self.global_batch} "
                 f"samples, {trainable:,} of {total:,} parameters trainable, objective={cfg.objective}, "
                 f"device={self.layout.device}, processes={self.layout.world}"
                 + (f", resumed at step {self.step}" if resumed else "")
                 + (", no checkpoint to resume: starting at step 0" if cfg.resume and not resumed else ""),
                 cfg.progress)
        barrier(self.layout)
        bar = progress_bar(self.total_steps, self.step, cfg.progress and main)
        losses, run_tokens, t0 = [], 0, time.perf_counter()
        loss = float("nan")
        try:
            while self.step < self.total_steps:
                t_step = time.perf_counter()
                loss, tokens = self.train_step(self.step)
                self.step += 1
                self.tokens += tokens
                run_tokens += tokens
                self.elapsed += time.perf_counter() - t_step
                losses.append(loss)
                tps = run_tokens / max(time.perf_counter() - t0, 1e-9)
                lr = self.scheduler.get_last_lr()[0]
                if main and (self.step % cfg.log_every == 0 or self.step == self.total_steps):
                    row = {"step": self.step, "loss": loss, "lr": lr, "tokens": self.tokens, "tokens_per_s": tps,
                           "elapsed": self.elapsed}
                    if self.ar_loss is not None:
                        row["ar_loss"] = self.ar_loss
                    if cfg.block_curriculum:
                        row["block_size"] = self.block_size_at(self.step - 1)
                    log.append(row)
                bar.set_postfix(bar_postfix(loss, tps, lr), refresh=False)
                bar.update(1)
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
                if cfg.stop_after_steps is not None and self.step >= cfg.stop_after_steps:
                    bar.close()
                    os._exit(3)  # a crash: no export, no cleanup
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        self.export()
        if main and cfg.plot:
            plot_loss(metrics_file, self.out / "loss.png")
        barrier(self.layout)
        return TrainResult(self.out, loss, self.step, run_tokens / max(seconds, 1e-9), self.tokens, seconds, losses,
                           metrics_file)

    def export(self) -> None:
        cfg = self.cfg
        bd = cfg.block_size if cfg.is_diffusion else None
        mask_id = self.mask.id if self.mask is not None else None
        gen = self.base.generation_config
        if self.peft is not None:
            if self.layout.is_main:
                from .lora import save_adapter

                save_adapter(self.peft, self.out, self.mask, bd, self.base.source)
                write_extras(self.out, self.model.cfg, self.tokenizer, gen)
                if cfg.export_merged:
                    merged = self.peft.merge_and_unload()
                    export_model(merged.cfg, merged.state_dict(), self.out / "merged", self.tokenizer, gen, bd, mask_id)
            return
        state = self.parallel.model_state()  # collective under FSDP
        if self.layout.is_main:
            export_model(self.model.cfg, state, self.out, self.tokenizer, gen, bd, mask_id)


def _json(d: dict) -> str:
    import json

    return json.dumps(d, indent=2, default=str) + "\n"


def _say(msg: str, enabled: bool) -> None:
    if enabled:
        import sys

        print(msg, file=sys.stderr, flush=True)


def train(config: TrainConfig) -> TrainResult:
    """Train as ``config`` says; under torchrun every process calls this."""
    import torch.distributed as dist

    owns_group = not (dist.is_available() and dist.is_initialized())  # never tear down a caller's group
    try:
        return Trainer(config).fit()
    finally:
        if owns_group:
            teardown()
