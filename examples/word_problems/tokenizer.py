"""A byte-level BPE tokenizer trained on the word-problem corpus, saved in Hugging Face format.

Pre-tokenisation is Qwen2's: one token per digit (so ``345`` is ``3 4 5`` and arithmetic stays
learnable), words with their leading space, punctuation apart. The vocabulary is a few hundred
to about 2,000 tokens: byte fallback for anything outside the corpus (any text can be encoded),
the corpus' words, and four special tokens. The chat template is Qwen's ChatML without a
default system prompt, with ``{% generation %}`` markers around the assistant turn (the loss
mask for training); EOS is ``<|im_end|>``; ``|<MASK>|`` is part of the vocabulary from the start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

PAD, BOS_TURN, EOS, MASK = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "|<MASK>|"
SPECIAL_TOKENS = [PAD, BOS_TURN, EOS, MASK]

# Qwen2's pre-tokenizer pattern: digits one by one, words with a leading space or punctuation mark.
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Train byte-level BPE on ``texts``; returns a ``transformers`` fast tokenizer with the chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=EOS, pad_token=PAD,
                                  additional_special_tokens=[BOS_TURN, MASK])
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 512
    return tok


def corpus_texts(problems) -> Iterator[str]:
    """The problems as chat transcripts (so the template's role names become tokens too)."""
    for p in problems:
        yield f"{BOS_TURN}user\n{p.question}{EOS}\n{BOS_TURN}assistant\n{p.solution}{EOS}\n"


def build(problems, directory: str | Path, vocab_size: int = 1024):
    """Train on the problems' questions and solutions and save to ``directory``; returns the tokenizer."""
    tok = train_tokenizer(corpus_texts(problems), vocab_size)
    tok.save_pretrained(str(directory))
    return tok
