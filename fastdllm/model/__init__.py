"""The model layer: the transformer, its configuration, rotary embedding and dense attention.

It maps token ids and positions to hidden states and hidden states to logits, and calls an
attention callable at each layer; it knows nothing of KV pools, schedulers or native layer
stacks (the engine and its forward backends own those).
"""

from .attention import AttentionFn, DenseAttention, block_causal_mask, causal_mask
from .config import MASK_TOKEN, RELEASED_MASK_ID, ModelConfig
from .transformer import Transformer

__all__ = ["AttentionFn", "DenseAttention", "block_causal_mask", "causal_mask", "MASK_TOKEN", "RELEASED_MASK_ID",
           "ModelConfig", "Transformer"]
