"""``fastdllm bench``'s library side: run the same prompts through several decoding engines and compare.

- ``prompts``: prompt sets (a prompts file, a model's ``heldout.jsonl``, built-in prompts);
- ``engines``: fastdllm's ``generate`` as an engine and the timed loop;
- ``hf``: transformers' ``generate`` as an engine;
- ``reference`` / ``reference_worker``: the released Fast-dLLM v2 ``generate`` in its own interpreter;
- ``rows``: scoring and summing one row; ``run``: all rows; ``report``: table, JSON, plot;
- ``machine``: what the numbers were measured on.
"""

from .prompts import BenchPrompt, PromptFileError, default_prompts, read_prompts_file
from .run import BenchSettings, run_bench

__all__ = ["BenchPrompt", "BenchSettings", "PromptFileError", "default_prompts", "read_prompts_file", "run_bench"]
