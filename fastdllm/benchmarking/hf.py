"""transformers' own greedy ``generate`` as a ``fastdllm bench`` engine (the baseline most users know).

The checkpoint is loaded with ``AutoModelForCausalLM`` (a released ``Fast_dLLM_Qwen`` directory,
whose ``auto_map`` points at remote code, as the Qwen2 model it is underneath) and gets the same
prompt token ids, ``max_new_tokens`` and stop ids as fastdllm. A batch is left-padded with an
attention mask, as transformers expects for decoder-only generation.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ..errors import ModelLoadError
from .engines import Sample, decode_text

FAST_DLLM_TYPE = "Fast_dLLM_Qwen"
FAST_DLLM_ONLY_KEYS = ("bd_size", "small_block_size", "mask_token_id", "auto_map", "conplemenrary_mask",
                       "model_type", "architectures", "transformers_version")


def load_transformers_model(path: str | Path, dtype: torch.dtype, device: torch.device):
    """The checkpoint directory ``path`` as a transformers causal LM in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its weight-loading bar would interleave with the bench's own
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path}: transformers needs a checkpoint directory with config.json")
    raw = json.loads(config_file.read_text())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if raw.get("model_type") == FAST_DLLM_TYPE:
                config = Qwen2Config(**{k: v for k, v in raw.items() if k not in FAST_DLLM_ONLY_KEYS})
                model = Qwen2ForCausalLM.from_pretrained(path, config=config, dtype=dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"transformers cannot load {path}: {e}") from e
    return model.to(device).eval()


class TransformersEngine:
    """Greedy ``model.generate``: same ids, ``max_new_tokens`` and stop ids as fastdllm.

    fastdllm never generates the mask token (it is not text); ``mask_id`` gets the same rule here
    through ``suppress_tokens``, else a random model that ranks it first would diverge for that alone.
    """

    def __init__(self, model, tokenizer, stop_ids: list[int], pad_id: int | None = None,
                 mask_id: int | None = None):
        from transformers import GenerationConfig

        self.model, self.tokenizer = model, tokenizer
        self.stop_ids = list(stop_ids)
        self.pad_id = pad_id if pad_id is not None else (self.stop_ids[0] if self.stop_ids else 0)
        self.device = next(model.parameters()).device
        vocab = model.get_output_embeddings().weight.shape[0]
        self.suppress = [mask_id] if mask_id is not None and mask_id < vocab else None
        # the checkpoint's generation_config.json may ask for sampling or a repetition penalty:
        # start from transformers' neutral defaults so that only greedy decoding and the stop ids apply
        model.generation_config = GenerationConfig()

    @torch.inference_mode()
    def generate(self, batch: list[list[int]], max_new_tokens: int) -> list[Sample]:
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ids in enumerate(batch):  # left padding
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            mask[i, width - len(ids):] = 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                      max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      eos_token_id=self.stop_ids or None, pad_token_id=self.pad_id,
                                      suppress_tokens=self.suppress)
        samples = []
        for row in out[:, width:].tolist():
            tokens = cut_at_stop(row, self.stop_ids)
            text = decode_text(self.tokenizer, tokens)
            # one forward per generated token (the prompt's forward gives the first); padding steps of
            # a row that stopped early are not counted, as fastdllm does not count them either
            samples.append(Sample(tokens, len(tokens), text))
        return samples


def cut_at_stop(tokens: list[int], stop_ids: list[int]) -> list[int]:
    """``tokens`` up to and including the first stop id (what follows in a batch is padding)."""
    stops = set(stop_ids)
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[:i + 1]
    return tokens
