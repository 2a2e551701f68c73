"""Runtime options: one frozen object from load() to the backend and kernels; the environment read
in one module; no process-wide switches or logging changes left behind by a load."""

import ast
import os
from pathlib import Path

import pytest

import fastdllm
from fastdllm.kernels.onednn import Linear
from fastdllm.options import RuntimeOptions

PACKAGE = Path(fastdllm.__file__).parent


def test_from_env_maps_each_variable():
    assert RuntimeOptions.from_env({}) == RuntimeOptions()
    env = {"FASTDLLM_NATIVE": "0", "FASTDLLM_QUANT_STACK": "0", "FASTDLLM_ONEDNN": "0", "FASTDLLM_COMPILE": "1",
           "FASTDLLM_THREADS": "3"}
    assert RuntimeOptions.from_env(env) == RuntimeOptions("off", False, False, True, 3)
    assert RuntimeOptions.from_env(env, compile=False, threads=None).compile is False  # overrides win; None: not given
    assert RuntimeOptions().describe() == "native=auto quant_stack=on onednn=on compile=off threads=default"


def test_frozen_and_validated():
    with pytest.raises(Exception):
        RuntimeOptions().compile = True  # type: ignore[misc]
    with pytest.raises(ValueError):
        RuntimeOptions(native="sometimes")
    with pytest.raises(ValueError):
        RuntimeOptions(threads=0)


def test_load_reports_its_options_and_changes_nothing_process_wide(monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.delenv("FASTDLLM_COMPILE", raising=False)
    ours = lambda: {k: v for k, v in os.environ.items() if k.startswith("FASTDLLM_")}  # noqa: E731
    before_env = ours()
    hf_logging.set_verbosity_warning()
    llm = fastdllm.load(compile=False, runtime=RuntimeOptions(onednn=False))
    assert llm.runtime == RuntimeOptions(onednn=False)
    assert llm.engine.backend.options is llm.runtime and llm.engine.backend.name == "torch"
    assert all(not m.onednn for m in llm.model.modules() if isinstance(m, Linear))
    assert ours() == before_env  # no switch written to the environment (torch may set its own cache paths)
    assert hf_logging.get_verbosity() == hf_logging.WARNING  # transformers' level restored after the tokenizer
    other = fastdllm.load()
    assert other.runtime == RuntimeOptions.from_env()  # the next load is not affected by the last one's options


def environ_reads(tree: ast.AST) -> list[int]:
    """Lines that read the environment: os.environ, os.getenv, os.putenv."""
    return [n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr in ("environ", "getenv", "putenv")
            and isinstance(n.value, ast.Name) and n.value.id == "os"]


def test_environment_read_in_one_module():
    """Outside cli/ (the command line's own variables) and training/ (the launcher's), only
    fastdllm/options.py reads the environment."""
    readers = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(("cli/", "training/")):
            continue
        if environ_reads(ast.parse(path.read_text())):
            readers.add(rel)
    assert readers == {"options.py"}
