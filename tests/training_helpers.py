"""Helpers for the training tests: tiny JSONL data sets and a word-level chat tokenizer."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = [f"w{i}" for i in range(40)]
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"]

TEMPLATE_MARKED = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}{{ '<|assistant|> ' }}{% generation %}{{ m['content'] + ' </s>' }}"
    "{% endgeneration %}{% else %}{{ '<|user|> ' + m['content'] + ' </s>' }}{% endif %} "
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)
TEMPLATE_PLAIN = TEMPLATE_MARKED.replace("{% generation %}", "").replace("{% endgeneration %}", "")


def make_tokenizer(marked: bool = True):
    """A whitespace word-level tokenizer over SPECIAL + WORDS (46 tokens) with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>")
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    tok.chat_template = TEMPLATE_MARKED if marked else TEMPLATE_PLAIN
    return tok


def write_ids_data(path: Path, n: int = 24, vocab: int = 500, lo: int = 10, hi: int = 60, seed: int = 0) -> Path:
    """``input_ids`` records with a prompt part (no loss) and an answer part (loss)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            length = rng.randint(lo, hi)
            ids = [rng.randrange(1, vocab) for _ in range(length)]
            prompt = rng.randint(1, length // 2)
            f.write(json.dumps({"input_ids": ids, "loss_mask": [0] * prompt + [1] * (length - prompt)}) + "\n")
    return path


def write_chat_data(path: Path, n: int = 12, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
            a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": a}]}) + "\n")
    return path
