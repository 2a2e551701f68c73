"""Benchmarking helpers shared by ``benchmarks/`` and the library.

- ``prompts``: prompt sets; ``machine``: what the numbers were measured on;
- ``reference`` / ``reference_worker``: the released Fast-dLLM v2 ``generate`` in its own interpreter.
"""
