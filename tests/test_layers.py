"""The package's layers, read from its source: who may import whom, and no import cycles.

Every import counts, including those inside functions (a lazy import is still a dependency).
"""

import ast
from pathlib import Path

import fastdllm

PACKAGE = Path(fastdllm.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """fastdllm module -> the fastdllm modules it imports (anywhere in its body)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")
                    up = up[:len(up) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # a name inside a module: the module
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != name:
                    deps.add(t)
        out[name] = deps
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_model_knows_nothing_of_the_engine_the_native_stack_or_serving():
    for name, deps in imports().items():
        if layer(name) == "model":
            bad = {d for d in deps if layer(d) in ("engine", "serve", "loading", "quant", "api")
                   or d in ("fastdllm.kernels.stack", "fastdllm.kernels.native")}
            assert not bad, (name, bad)


def test_kernels_do_not_import_the_engine_the_model_or_serving():
    for name, deps in imports().items():
        if layer(name) == "kernels":
            bad = {d for d in deps if layer(d) in ("engine", "model", "serve", "api", "loading")}
            assert not bad, (name, bad)


def test_options_are_a_leaf():
    assert imports()["fastdllm.options"] == set()


def test_no_import_cycles_between_layers():
    """The layers (model, engine, kernels, quant, loading, ...) form no cycle; packages' own
    __init__ re-exports do not count as a layer of their own."""
    graph: dict[str, set[str]] = {}
    for name, deps in imports().items():
        a = layer(name)
        graph.setdefault(a, set()).update(layer(d) for d in deps if layer(d) != a and layer(d))
    graph.pop("", None)
    for deps in graph.values():
        deps.discard("")
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in seen:
            return
        stack.append(node)
        for d in sorted(graph.get(node, ())):
            visit(d)
        stack.pop()
        seen.add(node)

    for node in sorted(graph):
        visit(node)
