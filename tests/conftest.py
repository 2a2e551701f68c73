"""Fixtures wrapping the plain helpers in ``tests/helpers.py``."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import hf_reference_model, make_tiny_checkpoint

# The test models are tiny: extra threads only add OpenMP overhead (and thrash on a busy machine).
torch.set_num_threads(1)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """Factory: ``tiny_checkpoint(family="qwen2", **options) -> Path`` in a fresh tmp dir."""
    count = 0

    def make(family: str = "qwen2", **kwargs):
        nonlocal count
        count += 1
        return make_tiny_checkpoint(tmp_path / f"ckpt{count}-{family}", family, **kwargs)

    return make


@pytest.fixture
def hf_reference():
    """Factory: ``hf_reference(directory, dtype) -> transformers model`` (eval, SDPA)."""
    return hf_reference_model


@pytest.fixture
def two_threads():
    """Two torch threads for the test (the quick end-to-end pipelines are sized for 2), then back."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
