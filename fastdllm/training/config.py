"""``TrainConfig``: every option of a training run, loadable from YAML or JSON.

Each field carries its help text in ``metadata["help"]``; the ``fastdllm train`` flags are
generated from these fields, so the file keys and the flags are the same names (flags with
dashes). ``validate`` checks values without touching the disk beyond existence checks.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import FastDLLMError

DEFAULT_LORA_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


class TrainConfigError(FastDLLMError, ValueError):
    """A training option is missing or has a bad value."""


def opt(default: Any, help: str, group: str = "training", choices: tuple | None = None):
    meta = {"help": help, "group": group, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # ---- model
    model: str | None = opt(None, "base checkpoint: directory, .gguf file or hub id (with --init-from-scratch: "
                                  "only its config.json and tokenizer are read)", "model")
    init_from_scratch: bool = opt(False, "random initialisation instead of the checkpoint's weights", "model")
    model_config: dict | str | None = opt(None, "config.json (a path, or a dict in a config file) for "
                                                "--init-from-scratch; default: the --model's config.json", "model")
    tokenizer: str | None = opt(None, "tokenizer directory (default: the model's)", "model")
    mask_token_id: int | None = opt(None, "mask token id (default: the checkpoint's or the tokenizer's |<MASK>|; "
                                          "else a new token is appended to the vocabulary)", "model")
    # ---- data
    data: str | None = opt(None, "training data, a JSONL file: one object per line with 'messages' (chat; loss on "
                                 "assistant turns), 'text' (loss on all tokens) or 'input_ids' (+ optional "
                                 "'loss_mask')", "data")
    seq_len: int = opt(512, "maximum tokens per sample (longer samples are truncated); with --packing the "
                            "length of every packed row", "data")
    packing: bool = opt(False, "concatenate samples into rows of exactly --seq-len tokens", "data")
    append_eos: bool = opt(True, "end 'text' samples with the tokenizer's EOS token", "data")
    shuffle: bool = opt(True, "shuffle the samples every epoch (seeded)", "data")
    # ---- objective
    objective: str = opt("diffusion", "diffusion: the Fast-dLLM v2 block-diffusion recipe; ar: plain next-token "
                                      "loss", "objective", ("diffusion", "ar"))
    block_size: int = opt(32, "diffusion block size (saved as bd_size)", "objective")
    complementary_mask: bool = opt(True, "also train every sample with the complementary mask", "objective")
    noise_eps: float = opt(1e-3, "mask ratios t are drawn from U(eps, 1) per block", "objective")
    # ---- the adaptation's levers (all off by default: the Fast-dLLM v2 recipe as released)
    block_curriculum: list = opt([], "block-size curriculum: smaller block sizes (divisors of --block-size, "
                                     "increasing) to train with first, each for an equal share of "
                                     "--block-curriculum-steps, then --block-size (e.g. 4,8,16)", "recipe")
    block_curriculum_steps: int = opt(0, "steps the block-size curriculum spans", "recipe")
    attention_anneal_steps: int = opt(0, "attention annealing: the in-block attention starts causal (the AR "
                                         "model's) and opens to bidirectional over this many steps, each "
                                         "in-block pair (q, k > q) attending with probability step / N; 0 = off",
                                      "recipe")
    ar_loss_weight: float = opt(0.0, "auxiliary AR loss: alpha in (alpha * AR loss on the clean sequence + "
                                     "diffusion loss) / (1 + alpha); costs one more forward and backward over "
                                     "the clean tokens per step; 0 = off", "recipe")
    mask_position_tilt: float = opt(0.0, "position-dependent masking in [0, 1]: a block's later positions are "
                                         "masked more often (position j of B at t (1 + tilt (2 j / (B - 1) - 1)), "
                                         "same mean); 0 = every position at the block's ratio", "recipe")
    mask_rate: str = opt("uniform", "how a block's mask ratio t is drawn: uniform U(eps, 1); clipped "
                                    "U(--mask-rate-low, --mask-rate-high); logit_normal: eps + (1 - eps) "
                                    "sigmoid(N(--mask-rate-mean, --mask-rate-std)), bell-shaped", "recipe",
                         ("uniform", "clipped", "logit_normal"))
    mask_rate_low: float = opt(0.2, "clipped mask ratio: lowest t", "recipe")
    mask_rate_high: float = opt(0.8, "clipped mask ratio: highest t", "recipe")
    mask_rate_mean: float = opt(0.0, "logit-normal mask ratio: mean of the logit", "recipe")
    mask_rate_std: float = opt(1.0, "logit-normal mask ratio: standard deviation of the logit", "recipe")
    attention: str = opt("auto", "attention for the training mask: flex (CUDA), split (one SDPA for the clean copy "
                                 "and one for the noisy streams, skipping the scores the mask removes), dense "
                                 "(SDPA with the full boolean mask) or auto (flex on CUDA, split elsewhere)",
                         "objective", ("auto", "dense", "flex", "split"))
    loss_chunk_size: int = opt(4096, "vocabulary projection + loss in chunks of this many target rows "
                                     "(bounds the logits memory)", "objective")
    # ---- optimisation
    micro_batch_size: int = opt(4, "samples per forward on each device", "optimisation")
    grad_accum: int = opt(1, "gradient accumulation steps (global batch = micro batch x accum x processes)",
                          "optimisation")
    max_steps: int | None = opt(None, "optimizer steps (default: --epochs over the data)", "optimisation")
    epochs: float = opt(1.0, "passes over the data when --max-steps is not given", "optimisation")
    lr: float = opt(1e-5, "peak learning rate (AdamW)", "optimisation")
    weight_decay: float = opt(0.0, "AdamW weight decay", "optimisation")
    adam_beta1: float = opt(0.9, "AdamW beta1", "optimisation")
    adam_beta2: float = opt(0.999, "AdamW beta2", "optimisation")
    adam_eps: float = opt(1e-8, "AdamW epsilon", "optimisation")
    warmup_steps: int = opt(0, "linear warm-up steps", "optimisation")
    schedule: str = opt("constant", "learning rate after warm-up", "optimisation", ("constant", "cosine"))
    min_lr_ratio: float = opt(0.0, "cosine schedule: final learning rate as a fraction of --lr", "optimisation")
    max_grad_norm: float = opt(1.0, "gradient clipping norm; 0 disables", "optimisation")
    seed: int = opt(0, "seed for initialisation, data order and noise", "optimisation")
    # ---- LoRA
    lora: bool = opt(False, "train LoRA adapters instead of all weights", "lora")
    lora_r: int = opt(16, "LoRA rank", "lora")
    lora_alpha: float = opt(32.0, "LoRA alpha", "lora")
    lora_dropout: float = opt(0.0, "LoRA dropout", "lora")
    lora_target_modules: list = opt(list(DEFAULT_LORA_TARGETS), "modules to adapt (fastdllm's fused names)", "lora")
    export_merged: bool = opt(False, "LoRA: also write the merged full model to OUTPUT_DIR/merged", "lora")
    # ---- hardware
    device: str = opt("auto", "cpu, cuda, cuda:N or auto (cuda when available)", "hardware")
    bf16: bool | None = opt(None, "bfloat16 autocast (default: on for CUDA, off for CPU)", "hardware")
    gradient_checkpointing: bool = opt(False, "recompute layer activations in backward (less memory)", "hardware")
    fsdp: bool = opt(False, "shard parameters with FSDP across torchrun processes (instead of DDP)", "hardware")
    num_threads: int | None = opt(None, "CPU threads for torch (default: torch's choice)", "hardware")
    compile: bool = opt(False, "torch.compile the model's forward (dynamic shapes): the first steps pay minutes "
                               "of compilation, later steps run ~15-25% faster on a CPU for small models "
                               "(benchmarks/bench_training.py)", "hardware")
    # ---- output
    output_dir: str | None = opt(None, "where the trained model, checkpoints and metrics go", "output")
    save_every: int = opt(0, "write a resumable checkpoint every N steps; 0 = never", "output")
    keep_checkpoints: int = opt(2, "keep only the newest N checkpoints", "output")
    resume: bool = opt(False, "continue from the newest checkpoint in OUTPUT_DIR/checkpoints (without it, a run "
                              "starts afresh and removes that directory's old checkpoints)", "output")
    log_every: int = opt(1, "append metrics to OUTPUT_DIR/metrics.jsonl every N steps", "output")
    progress: bool = opt(True, "show a progress bar", "output")
    plot: bool = opt(False, "write OUTPUT_DIR/loss.png (loss curve)", "output")
    stop_after_steps: int | None = opt(None, "testing: exit abruptly (os._exit, no cleanup) after N steps, "
                                             "like a killed run", "output")

    # ---- helpers
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        norm = {str(k).replace("-", "_"): v for k, v in d.items()}
        unknown = sorted(set(norm) - known)
        if unknown:
            raise TrainConfigError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**norm)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(read_config_file(path))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_diffusion(self) -> bool:
        return self.objective == "diffusion"

    def mask_rates(self):
        """The noise options as a ``noise.MaskRates``."""
        from .noise import MaskRates

        return MaskRates(eps=self.noise_eps, rate=self.mask_rate, low=self.mask_rate_low, high=self.mask_rate_high,
                         mean=self.mask_rate_mean, std=self.mask_rate_std, tilt=self.mask_position_tilt)

    def validate(self) -> "TrainConfig":
        """Raise ``TrainConfigError`` (one line) for a bad or missing option; returns self."""
        _check_types(self)
        if self.model is None and not (self.init_from_scratch and self.model_config is not None):
            raise TrainConfigError("no model: pass --model (or --init-from-scratch with --model-config)")
        if self.data is None:
            raise TrainConfigError("no training data: pass --data FILE.jsonl")
        if not Path(self.data).is_file():
            raise TrainConfigError(f"data file not found: {self.data}")
        if self.output_dir is None:
            raise TrainConfigError("no output directory: pass --output-dir DIR")
        for name, choices in (("objective", ("diffusion", "ar")), ("attention", ("auto", "dense", "flex", "split")),
                              ("schedule", ("constant", "cosine")),
                              ("mask_rate", ("uniform", "clipped", "logit_normal"))):
            if getattr(self, name) not in choices:
                raise TrainConfigError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        positive = ["block_size", "seq_len", "micro_batch_size", "grad_accum", "log_every", "loss_chunk_size",
                    "lora_r"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise TrainConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.is_diffusion and self.seq_len % self.block_size:
            raise TrainConfigError(f"seq_len ({self.seq_len}) must be a multiple of block_size ({self.block_size})")
        if not 0.0 <= self.noise_eps < 1.0:
            raise TrainConfigError(f"noise_eps must be in [0, 1), got {self.noise_eps}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise TrainConfigError(f"max_steps must be positive, got {self.max_steps}")
        if self.max_steps is None and not self.epochs > 0:
            raise TrainConfigError(f"epochs must be positive, got {self.epochs}")
        if not self.lr > 0:
            raise TrainConfigError(f"lr must be positive, got {self.lr}")
        for name in ("weight_decay", "max_grad_norm", "warmup_steps", "save_every", "lora_dropout"):
            if getattr(self, name) < 0:
                raise TrainConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise TrainConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.keep_checkpoints < 1:
            raise TrainConfigError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.stop_after_steps is not None and self.stop_after_steps <= 0:
            raise TrainConfigError(f"stop_after_steps must be positive, got {self.stop_after_steps}")
        if self.mask_token_id is not None and self.mask_token_id < 0:
            raise TrainConfigError(f"mask_token_id must be >= 0, got {self.mask_token_id}")
        self._validate_recipe()
        if self.lora and not self.lora_target_modules:
            raise TrainConfigError("lora_target_modules is empty")
        if self.lora and self.init_from_scratch:
            raise TrainConfigError("LoRA needs pretrained weights: do not combine --lora with --init-from-scratch")
        return self


    def _validate_recipe(self) -> None:
        """The adaptation levers; the curriculum's sizes become ints (flags give strings)."""
        try:
            sizes = [int(x) for x in self.block_curriculum]
        except (TypeError, ValueError):
            raise TrainConfigError(f"block_curriculum must be whole block sizes, got {self.block_curriculum!r}") from None
        if any(b <= 0 or self.block_size % b or b >= self.block_size for b in sizes) or sizes != sorted(set(sizes)):
            raise TrainConfigError(f"block_curriculum must be increasing divisors of block_size ({self.block_size}) "
                                   f"below it, got {sizes}")
        self.block_curriculum = sizes
        for name in ("block_curriculum_steps", "attention_anneal_steps"):
            if getattr(self, name) < 0:
                raise TrainConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if sizes and not self.block_curriculum_steps:
            raise TrainConfigError("block_curriculum needs block_curriculum_steps (how many steps it spans)")
        if self.ar_loss_weight < 0:
            raise TrainConfigError(f"ar_loss_weight must be >= 0, got {self.ar_loss_weight}")
        if not 0.0 <= self.mask_position_tilt <= 1.0:
            raise TrainConfigError(f"mask_position_tilt must be in [0, 1], got {self.mask_position_tilt}")
        if not 0.0 <= self.mask_rate_low < self.mask_rate_high <= 1.0:
            raise TrainConfigError(f"mask_rate_low and mask_rate_high must satisfy 0 <= low < high <= 1, got "
                                   f"{self.mask_rate_low} and {self.mask_rate_high}")
        if not self.mask_rate_std > 0:
            raise TrainConfigError(f"mask_rate_std must be positive, got {self.mask_rate_std}")
        levers = [n for n in ("block_curriculum", "attention_anneal_steps", "ar_loss_weight", "mask_position_tilt")
                  if getattr(self, n)] + (["mask_rate"] if self.mask_rate != "uniform" else [])
        if levers and not self.is_diffusion:
            raise TrainConfigError(f"{', '.join(levers)} only apply to --objective diffusion")


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # a syntax error in the user's file
        raise TrainConfigError(f"cannot parse {path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path}: expected a mapping of option names to values")
    return data


_TYPES = {"bool": bool, "int": int, "float": (int, float), "str": str, "list": list}


def _check_types(cfg: TrainConfig) -> None:
    """Catch type mistakes from config files (e.g. ``block_size: "32"``) with a clear message."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        kinds = [k.strip() for k in str(f.type).split("|") if k.strip() != "None"]
        ok = False
        for k in kinds:
            t = _TYPES.get(k)
            if t is None or (isinstance(value, t) and not (k in ("int", "float") and isinstance(value, bool))):
                ok = True
        if not ok:
            raise TrainConfigError(f"{f.name} must be of type {' or '.join(kinds)}, got {value!r}")


def default_of(f) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory()
