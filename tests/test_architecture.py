"""The package's layering rules, read from its source (no imports run).

- No module reads another module's private names: ``from x import _name``, ``module._name``
  (where ``module`` was imported) and ``obj._name`` on anything but ``self``/``cls`` all fail.
  A private name is a promise that only its module (its class) uses it; a front-end that needs
  it needs a public interface instead (``LLM.result``, the server's ``jobs`` module). Dunder
  names (``__version__``) are public; other libraries' private names are their business.

The rule is checked on every module of the package. ``FOREIGN_PRIVATE`` lists the reads of other
libraries' private names that the AST cannot tell from ours (an attribute of a local tensor), each
with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastdllm"

CHECKED = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))

# torch's own private names, read on a value the AST cannot trace back to torch
FOREIGN_PRIVATE = {
    # a tensor's in-place version counter: how the prepacked oneDNN weight notices that its source changed
    "kernels/onednn.py": {"w._version"},
}


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
        root = node.value
        while isinstance(root, ast.Attribute):  # torch.ops.aten._x: the chain's first name decides
            root = root.value
        owner = root.id if isinstance(root, ast.Name) else None
        if owner in foreign and owner not in modules:
            continue
        if owner in modules or owner not in ("self", "cls"):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("rel", CHECKED)
def test_no_private_names_across_modules(rel):
    path = PACKAGE / rel
    if not path.is_file():
        pytest.skip(f"{rel} is not there (moved?)")
    allowed = FOREIGN_PRIVATE.get(rel, set())
    assert [f for f in private_reads(path) if f.split(": ", 1)[1] not in allowed] == []
