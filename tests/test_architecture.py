"""The package's layering rules, read from its source (no imports run).

- No module reads another module's private names: ``from x import _name``, ``module._name``
  (where ``module`` was imported) and ``obj._name`` on anything but ``self``/``cls`` all fail.
  A private name is a promise that only its module (its class) uses it; a front-end that needs
  it needs a public interface instead (``LLM.result``, the server's ``jobs`` module). Dunder
  names (``__version__``) are public; other libraries' private names are their business.

The rule is checked on ``CHECKED``: the modules of the decoding-options, sequence, server and
loading work (issue 27, part B). Modules still to be reorganised (part A: the model, the kernels,
the engine's runner) join the list once they are.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastdllm"

CHECKED = [
    "api.py", "errors.py", "visualize.py",
    "cli/bench.py", "cli/common.py", "cli/generate.py", "cli/serve.py",
    "engine/options.py", "engine/params.py", "engine/sequence.py", "engine/scheduler.py", "engine/engine.py",
    "engine/diffusion.py", "engine/autoregressive.py", "engine/kv_space.py", "engine/detokenizer.py",
    "engine/decision.py",
    "serve/app.py", "serve/jobs.py", "serve/denoise.py", "serve/page.py", "serve/protocol.py", "serve/batcher.py",
    "serve/limits.py", "serve/frames.py", "serve/errors.py", "serve/guards.py", "serve/stream.py",
    "serve/metrics.py", "serve/schema.py", "serve/http.py",
    "benchmarking/run.py",
    "loading/__init__.py", "loading/plan.py", "loading/adapter.py", "loading/weights.py",
]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _ours(module: str | None, level: int) -> bool:
    return level > 0 or (module or "").split(".")[0] == "fastdllm"


def private_reads(path: Path) -> list[str]:
    """``from x import _name`` and ``alias._name`` where ``alias`` is a fastdllm module imported by
    ``path`` (other libraries' private names are their business)."""
    tree = ast.parse(path.read_text(), str(path))
    modules: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.asname or a.name for a in node.names if _ours(a.name, 0))
        elif isinstance(node, ast.ImportFrom) and _ours(node.module, node.level):
            for a in node.names:
                if _private(a.name):
                    found.append(f"{path.name}:{node.lineno}: from {'.' * node.level}{node.module or ''} "
                                 f"import {a.name}")
                elif a.name[:1].islower():  # maybe a module (``from . import app``)
                    modules.add(a.asname or a.name)
    foreign = {a.asname or a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for a in node.names if not _ours(a.name, 0)}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        owner = node.value.id if isinstance(node.value, ast.Name) else None
        if owner in modules or owner not in ("self", "cls", *foreign):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("rel", CHECKED)
def test_no_private_names_across_modules(rel):
    path = PACKAGE / rel
    if not path.is_file():
        pytest.skip(f"{rel} is not there (moved?)")
    assert private_reads(path) == []
