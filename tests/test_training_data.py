"""JSONL data: chat (assistant-only loss), text, token ids, truncation, packing, errors, order."""

from __future__ import annotations

import json
import re

import pytest
import torch

from fastdllm.training.data import DataError, SampleOrder, load_samples
from tests.training_helpers import make_tokenizer


def write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


CHAT = {"messages": [{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "w3 w4"},
                     {"role": "user", "content": "w5"}, {"role": "assistant", "content": "w6"}]}


@pytest.mark.parametrize("marked", [True, False])
def test_chat_loss_on_assistant_turns_only(tmp_path, marked):
    tok = make_tokenizer(marked)
    (s,) = load_samples(write(tmp_path / "d.jsonl", [CHAT]), tok, 64, len(tok))
    tokens = tok.convert_ids_to_tokens(s.ids.tolist())
    learned = [t for t, m in zip(tokens, s.loss_mask.tolist()) if m]
    assert learned == ["w3", "w4", "</s>", "w6", "</s>"]  # answers and their end tokens, never the user's


def test_text_and_ids_records(tmp_path):
    tok = make_tokenizer()
    path = write(tmp_path / "d.jsonl", [{"text": "w1 w2 w3"}, "", {"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1]}])
    a, b = load_samples(path, tok, 64, len(tok))
    assert tok.convert_ids_to_tokens(a.ids.tolist()) == ["w1", "w2", "w3", "</s>"] and a.loss_mask.all()
    assert b.ids.tolist() == [5, 6, 7] and b.loss_mask.tolist() == [False, True, True]


def test_truncation_and_packing(tmp_path):
    recs = [{"input_ids": list(range(1, 11))}, {"input_ids": list(range(20, 27)), "loss_mask": [0] * 7},
            {"input_ids": list(range(30, 35))}]
    path = write(tmp_path / "d.jsonl", recs)
    trunc = load_samples(path, None, 8, 100)
    assert [s.ids.tolist() for s in trunc] == [list(range(1, 9)), list(range(30, 35))]  # no-loss sample dropped
    packed = load_samples(path, None, 8, 100, packing=True)
    flat = torch.cat([s.ids for s in packed]).tolist()
    assert flat == list(range(1, 11)) + list(range(20, 27)) + list(range(30, 35))
    assert [s.length for s in packed] == [8, 8, 6]
    assert packed[1].loss_mask.tolist() == [True, True] + [False] * 6


@pytest.mark.parametrize("line,message", [
    ("{not json", "d.jsonl:2: not valid JSON"),
    ('{"foo": 1}', "expected a 'messages', 'text' or 'input_ids' key"),
    ('{"input_ids": [1, 999]}', "token id 999 is outside the vocabulary"),
    ('{"text": "w1"}', "need a tokenizer"),
    ('{"input_ids": [1, 2], "loss_mask": [1]}', "as long as 'input_ids'"),
])
def test_bad_records(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text('{"input_ids": [1, 2, 3]}\n' + line + "\n")
    with pytest.raises(DataError, match=re.escape(message)):
        load_samples(path, None, 16, 100)


def test_empty_and_missing(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_samples(tmp_path / "nope.jsonl", None, 16, 100)
    with pytest.raises(DataError, match="empty"):
        load_samples(write(tmp_path / "e.jsonl", [""]), None, 16, 100)
    with pytest.raises(DataError, match="no assistant turn"):
        load_samples(write(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "w1"}]}]),
                     make_tokenizer(), 16, 100)


def test_sample_order_is_a_seeded_permutation_per_epoch():
    order = SampleOrder(10, seed=3)
    e0, e1 = [order[i] for i in range(10)], [order[i] for i in range(10, 20)]
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1
    assert [SampleOrder(10, seed=3)[i] for i in range(20)] == e0 + e1  # stateless: any process agrees
    assert [SampleOrder(10, 3, shuffle=False)[i] for i in range(12)] == list(range(10)) + [0, 1]
