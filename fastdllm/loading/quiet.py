"""transformers' logging and warnings silenced while it builds a tokenizer, and only then.

Building a tokenizer from a fastdllm checkpoint makes transformers complain about the custom
``model_type`` and legacy config keys; the level is restored afterwards, so the caller's logging
setup (and transformers' own for the rest of the process) is untouched.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager


@contextmanager
def quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
