"""Turn a pretrained AR model into a block-diffusion model (the Fast-dLLM v2 recipe), or train AR.

    from fastdllm.training import TrainConfig, train
    result = train(TrainConfig(model="Qwen/Qwen2.5-0.5B-Instruct", data="chat.jsonl", output_dir="out"))
    print(result.output_dir, result.loss, result.steps, result.tokens_per_s)

Modules: ``config`` (options), ``data`` (JSONL -> samples), ``noise`` (masks, complementary
pairs, targets), ``masks`` / ``flex`` (the attention mask), ``objective`` (the loss),
``vocab`` (the mask token), ``base`` (load or init the model), ``lora``, ``optim``,
``distributed``, ``checkpoint``, ``metrics``, ``export``, ``trainer`` (the loop).
"""

from .config import TrainConfig, TrainConfigError
from .trainer import TrainResult, train


def load_with_adapter(base, adapter_dir, merge: bool = True, dtype="float32", device="cpu"):
    """A ``Checkpoint`` of ``base`` with the LoRA adapter in ``adapter_dir`` (see ``training.lora``)."""
    from .lora import load_with_adapter as _load

    return _load(base, adapter_dir, merge=merge, dtype=dtype, device=device)


__all__ = ["TrainConfig", "TrainConfigError", "TrainResult", "train", "load_with_adapter"]
