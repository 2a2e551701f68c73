"""Turn a pretrained AR model into a block-diffusion model (the Fast-dLLM v2 recipe), or train AR.

    from fastdllm.training import TrainConfig, train
    result = train(TrainConfig(model="Qwen/Qwen2.5-0.5B-Instruct", data="chat.jsonl", output_dir="out"))
    print(result.output_dir, result.loss, result.steps, result.tokens_per_s)

Modules: ``config`` (options), ``data`` (JSONL -> samples), ``noise`` (masks, complementary
pairs, targets), ``masks`` / ``flex`` (the attention mask), ``objective`` (the loss),
``vocab`` (the mask token), ``base`` (load or init the model), ``lora``, ``optim``,
``distributed``, ``checkpoint``, ``metrics``, ``export``, ``trainer`` (the loop).
"""

from ..loading.adapter import load_with_adapter
from .config import TrainConfig, TrainConfigError
from .trainer import TrainResult, train


__all__ = ["TrainConfig", "TrainConfigError", "TrainResult", "train", "load_with_adapter"]
