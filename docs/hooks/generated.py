"""MkDocs hook: fills the generated parts of the pages at build time, so they cannot drift.

- ``<!-- cli-reference -->``: the ``--help`` of ``fastdllm`` and of every subcommand, from the real
  argparse parsers (``fastdllm.cli.main.build_parser``).
- ``<!-- cli-help: NAME -->`` (alone on a line): ``fastdllm NAME --help``, on the page about it.
- ``<!-- table: NAME -->`` (alone on a line): a table of measured figures from ``benchmarks/results/`` (``docs/tables.py``).

It also publishes the pictures that live beside the code that draws them (``PICTURES``).

An unknown table name, a missing JSON file or a parser that fails to build stops the build.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
#: pictures that live with the code that makes them, published on the pages beside them
PICTURES = {
    "fastdllm/models/word_problems/results.png": "results.png",  # the model card's own relative links
    "fastdllm/models/word_problems/trace.png": "trace.png",
    "examples/synthetic/results/results.png": "synthetic-results.png",
    "examples/synthetic/results/trace.png": "synthetic-trace.png",
}
HELP = re.compile(r"^<!-- cli-help: (\w+) -->$", re.MULTILINE)  # one subcommand's --help, on its own page
TABLE = re.compile(r"^<!-- table: ([\w-]+) -->$", re.MULTILINE)  # a marker alone on its line


def _tables():
    spec = importlib.util.spec_from_file_location("fastdllm_docs_tables", DOCS / "tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: a fixed width keeps the page stable
    from fastdllm.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, dict(sub.choices)


def cli_help(name: str) -> str:
    commands = _parsers()[1]
    if name not in commands:
        raise KeyError(f"no subcommand {name!r}: one of {', '.join(commands)}")
    return "```text\n" + commands[name].format_help() + "```\n"


def cli_reference() -> str:
    parser, commands = _parsers()
    parts = ["## fastdllm\n", "```text\n" + parser.format_help() + "```\n"]
    for name, command in commands.items():
        parts += [f"## fastdllm {name}\n", "```text\n" + command.format_help() + "```\n"]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", cli_reference())
    markdown = HELP.sub(lambda m: cli_help(m.group(1)), markdown)
    if TABLE.search(markdown):
        tables = _tables()

        def fill(match: re.Match) -> str:
            name = match.group(1)
            if name not in tables.TABLES:
                raise tables.TableError(f"{page.file.src_uri}: no table named {name!r} in docs/tables.py")
            return tables.TABLES[name]()

        markdown = TABLE.sub(fill, markdown)
    return markdown


def on_files(files, config):
    from mkdocs.structure.files import File

    for source, dest in PICTURES.items():
        path = ROOT / source
        if not path.is_file():
            raise FileNotFoundError(f"{source} is missing: a docs page shows it")
        files.append(File.generated(config, dest, abs_src_path=str(path)))
    return files
