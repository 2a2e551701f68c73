"""Incremental detokenization: the pieces add up to the full decode, with DecodeStream and with the
window fallback alike, whatever the chunking of the ids; stop strings cut at the same id."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from fastdllm.engine.detokenizer import IncrementalDetokenizer
from fastdllm.models import WORD_PROBLEMS_DIR

from .helpers import release_like_tokenizer

TEXTS = [
    "Mia has 245 shells. She finds 38 more at the beach. The answer is 283.",
    "héllo wörld — naïve café, 世界 你好 🙂🚀 done",
    "  leading spaces, tabs\tand\nnew lines\n\n and   runs   of spaces ",
    "emoji split: 👩‍👩‍👧 and ZWJ, then ascii again.",
]


def _metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style (Metaspace) BPE tokenizer with byte fallback, trained here on TEXTS."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    alphabet = [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(TEXTS * 20, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "</s>"] + alphabet))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")


NAMES = ["word-problems", "metaspace", "release-like"]


@pytest.fixture(scope="module")
def tokenizers():
    """Loaded when a test here runs, not when the suite is collected."""
    loaders = {"word-problems": lambda: AutoTokenizer.from_pretrained(WORD_PROBLEMS_DIR),
               "metaspace": _metaspace_tokenizer,
               "release-like": release_like_tokenizer}
    return {name: loaders[name]() for name in NAMES}


def _run(tok, ids: list[int], stream: bool, seed: int, stop=None) -> IncrementalDetokenizer:
    d = IncrementalDetokenizer(tok, stop, stream=stream)
    rng, i = random.Random(seed), 0
    while i < len(ids):
        n = rng.randint(1, 4)  # engine steps commit 1 to a few ids at a time
        if d.add(ids[i:i + n]):
            break
        i += n
    d.flush()
    return d


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("stream", [True, False])
def test_pieces_add_up_to_the_full_decode(tokenizers, name, stream):
    tok = tokenizers[name]
    assert (IncrementalDetokenizer(tok, stream=stream)._stream is not None) == stream  # fast tokenizers stream
    for k, text in enumerate(TEXTS):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ids = ids[:5] + [tok.eos_token_id] + ids[5:]  # a special token inside: skipped, as in decode
        full = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        for seed in range(3):
            assert _run(tok, ids, stream, seed + 10 * k).text == full


@pytest.mark.parametrize("name", NAMES)
def test_deferred_text_is_the_incremental_text(tokenizers, name):
    tok = tokenizers[name]
    for k, text in enumerate(TEXTS):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ids = ids[:5] + [tok.eos_token_id] + ids[5:]
        d = IncrementalDetokenizer(tok, deferred=True)
        assert d.add(ids[:7]) is False and d._stream is None
        assert d.text == tok.decode(ids[:7], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        d.add(ids[7:])  # read again after more ids: decoded again
        d.flush()
        assert d.text == _run(tok, ids, True, k).text
    with pytest.raises(ValueError, match="stop strings"):
        IncrementalDetokenizer(tok, ["."], deferred=True)


@pytest.mark.parametrize("name", NAMES)
def test_stream_and_window_agree_on_stops_and_held_back_bytes(tokenizers, name):
    tok = tokenizers[name]
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for stop in (["ll"], ["🙂", "the"], ["."], ["no such text"]):
            a, b = _run(tok, ids, True, 1, stop), _run(tok, ids, False, 1, stop)
            assert (a.text, a.stopped_at) == (b.text, b.stopped_at)
        # a cut inside a multi-byte character: both hold the bytes back, then flush the same text
        for n in range(1, len(ids)):
            a, b = IncrementalDetokenizer(tok, stream=True), IncrementalDetokenizer(tok, stream=False)
            a.add(ids[:n])
            b.add(ids[:n])
            assert a.text == b.text
            a.flush()
            b.flush()
            assert a.text == b.text
