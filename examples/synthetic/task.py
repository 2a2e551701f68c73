"""The synthetic task: sort a list of 8-16 distinct two-digit numbers.

Every problem is a user turn holding the unsorted numbers; the answer is the assistant turn
holding them in increasing order, ended by ``<|im_end|>`` (the EOS token)::

    <|im_start|>user 57 12 98 33 41 70 26 85<|im_end|><|im_start|>assistant 12 26 33 41 57 70 85 98<|im_end|>

The vocabulary is word level: one token per number 0-99, the chat special tokens and the two
role names, so a problem of n numbers is n + 5 prompt tokens and n + 1 answer tokens. Sorting
suits block diffusion: the answer is long enough to span several sub-blocks, and every
answer position is determined by the prompt alone (the k-th number of the answer is the k-th
smallest of the input), so a model can in principle fill many positions in one forward.

Problems are generated deterministically from a seed. The train / held-out split is by a hash
of the problem itself (about 1 in ``HELD_OUT_MODULUS`` problems is held out), so no held-out
problem can ever appear in the training data, whatever the seeds and sizes.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

PAD, UNK, BOS_TURN, EOS, MASK = "<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "|<MASK>|"
ROLES = ("system", "user", "assistant")
NUMBERS = [str(i) for i in range(100)]
#: the vocabulary, in id order (the trainer appends the mask token when it is absent)
VOCAB = [PAD, UNK, BOS_TURN, EOS, *ROLES, *NUMBERS]

MIN_LEN, MAX_LEN = 8, 16
LOW, HIGH = 10, 99           # two-digit numbers, inclusive
HELD_OUT_MODULUS = 16        # problems whose hash is 0 mod this are held out

# Messages are joined with spaces only: the word-level tokenizer splits on whitespace and the
# special tokens split themselves out, so the template needs no newline token.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant ' }}{% endif %}"
)


@dataclass(frozen=True)
class Problem:
    numbers: tuple[int, ...]

    @property
    def prompt(self) -> str:
        return " ".join(map(str, self.numbers))

    @property
    def answer_numbers(self) -> tuple[int, ...]:
        return tuple(sorted(self.numbers))

    @property
    def answer(self) -> str:
        return " ".join(map(str, self.answer_numbers))

    def messages(self, with_answer: bool = True) -> list[dict]:
        msgs = [{"role": "user", "content": self.prompt}]
        if with_answer:
            msgs.append({"role": "assistant", "content": self.answer})
        return msgs

    # token ids (no tokenizer needed: the vocabulary is fixed)
    def prompt_ids(self) -> list[int]:
        return [token_id(BOS_TURN), token_id("user"), *(token_id(str(x)) for x in self.numbers), token_id(EOS),
                token_id(BOS_TURN), token_id("assistant")]

    def answer_ids(self) -> list[int]:
        """The ids the model must generate: the sorted numbers, then EOS."""
        return [*(token_id(str(x)) for x in self.answer_numbers), token_id(EOS)]


def token_id(token: str) -> int:
    return _IDS[token]


_IDS = {t: i for i, t in enumerate(VOCAB)}
EOS_ID = _IDS[EOS]
PAD_ID = _IDS[PAD]


def is_held_out(numbers: Iterable[int]) -> bool:
    digest = hashlib.sha256(",".join(map(str, numbers)).encode()).digest()
    return int.from_bytes(digest[:8], "little") % HELD_OUT_MODULUS == 0


def _problems(seed: int, held_out: bool, min_len: int, max_len: int) -> Iterator[Problem]:
    rng = random.Random(seed)
    pool = list(range(LOW, HIGH + 1))
    seen: set[tuple[int, ...]] = set()
    while True:
        n = rng.randint(min_len, max_len)
        nums = tuple(rng.sample(pool, n))
        if is_held_out(nums) != held_out or nums in seen:
            continue
        seen.add(nums)
        yield Problem(nums)


def make_split(n: int, seed: int, held_out: bool, min_len: int = MIN_LEN, max_len: int = MAX_LEN) -> list[Problem]:
    """``n`` distinct problems of the train (``held_out=False``) or held-out split."""
    it = _problems(seed * 2 + int(held_out), held_out, min_len, max_len)
    return [next(it) for _ in range(n)]


def write_jsonl(problems: Iterable[Problem], path: str | Path, chat: bool = True) -> Path:
    """Training data: chat ``messages`` (loss on the assistant turn) or plain ``text``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p in problems:
            row = {"messages": p.messages()} if chat else {"text": render(p)}
            f.write(json.dumps(row) + "\n")
    return path


def eos_padded_record(problem: Problem, multiple: int = 8) -> dict:
    """Pre-tokenized sample: prompt, answer, then EOS up to the end of the answer's sub-block.

    Loss on the answer and on the padding. fastdllm's trainer pads a sample to whole blocks with
    the mask token and puts no loss there, so a model trained on plain chat records never learns
    what follows EOS; yet at decoding time the rest of EOS's sub-block is filled (and seen by the
    other positions of the block) before the sub-block is finished. Training on EOS there
    teaches "after the end comes EOS".
    """
    a, b = problem.prompt_ids(), problem.answer_ids()
    pad = -(len(a) + len(b)) % multiple
    return {"input_ids": a + b + [EOS_ID] * pad, "loss_mask": [0] * len(a) + [1] * (len(b) + pad)}


def write_eos_padded_jsonl(problems: list[Problem], path: str | Path, multiple: int = 8,
                           batch_size: int | None = None, block_size: int = 32, seed: int = 0) -> Path:
    """``eos_padded_record`` lines; with ``batch_size``, ordered in length-homogeneous batches.

    The trainer pads every sample of a micro-batch to the longest one (in whole blocks), so a
    batch mixing one-block and two-block samples costs as much as a batch of two-block ones.
    With ``batch_size``, each run of ``batch_size`` consecutive lines holds samples of the same
    number of blocks and the runs come in a seeded random order; train on it with
    ``shuffle=False`` (the trainer then takes micro-batches in file order). Leftover samples
    that do not fill a batch are dropped.
    """
    records = [eos_padded_record(p, multiple) for p in problems]
    if batch_size:
        buckets: dict[int, list[dict]] = {}
        for r in records:
            buckets.setdefault(-(-len(r["input_ids"]) // block_size), []).append(r)
        batches = [rs[i:i + batch_size] for rs in buckets.values()
                   for i in range(0, len(rs) - batch_size + 1, batch_size)]
        random.Random(seed).shuffle(batches)
        records = [r for batch in batches for r in batch]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def render(problem: Problem, with_answer: bool = True) -> str:
    """The chat-formatted text (what the template produces)."""
    s = f"{BOS_TURN}user {problem.prompt}{EOS}{BOS_TURN}assistant "
    return s + (f"{problem.answer}{EOS}" if with_answer else "")


# ---- checking -------------------------------------------------------------------------------

def check_ids(problem: Problem, generated: list[int]) -> bool:
    """Exact match: the sorted numbers followed by EOS, nothing else."""
    return list(generated) == problem.answer_ids()


def parse_answer(text: str) -> list[int] | None:
    """The numbers of a generated answer text, or None when it is not a list of numbers."""
    words = text.split()
    if not words or not all(w.isdigit() for w in words):
        return None
    return [int(w) for w in words]


def well_formed(problem: Problem, generated: list[int]) -> bool:
    """A valid-format answer: numbers only, ended by EOS (right or wrong)."""
    if not generated or generated[-1] != EOS_ID:
        return False
    return all(VOCAB[t].isdigit() for t in generated[:-1] if t < len(VOCAB)) and \
        all(t < len(VOCAB) for t in generated[:-1])


# ---- tokenizer ------------------------------------------------------------------------------

def build_tokenizer():
    """A real ``transformers`` fast tokenizer over a word-level vocabulary, with a chat template.

    Every word is also registered as an added token. That changes nothing for this tokenizer,
    but transformers 5 loads the tokenizer of a ``model_type: qwen2`` directory as a
    ``Qwen2Tokenizer`` rebuilt from the vocabulary (byte-level BPE, digits split one by one),
    whatever ``tokenizer_config.json`` says; added tokens survive that rebuild, so the AR
    parent's directory tokenizes to the same ids either way (only its decoded text loses the
    spaces between numbers, which is why answers are checked on token ids).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token=UNK))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tk.add_special_tokens([PAD, UNK, BOS_TURN, EOS])
    tk.add_tokens([AddedToken(w, single_word=True, normalized=False) for w in (*ROLES, *NUMBERS)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token=UNK, pad_token=PAD, eos_token=EOS,
                                  additional_special_tokens=[BOS_TURN])
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 256
    return tok


def ids_to_text(ids: Iterable[int]) -> str:
    """Readable text of generated ids (independent of how the tokenizer was reloaded)."""
    return " ".join(VOCAB[t] if 0 <= t < len(VOCAB) else f"<{t}>" for t in ids)


def save_tokenizer(directory: str | Path):
    tok = build_tokenizer()
    tok.save_pretrained(str(directory))
    return tok
