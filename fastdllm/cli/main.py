"""The ``fastdllm`` command: argparse subcommands, one module per subcommand.

A subcommand ``NAME`` lives in ``fastdllm/cli/NAME.py`` and exposes

    add_parser(subparsers) -> argparse.ArgumentParser   # registers ``fastdllm NAME`` and its flags
    run(args) -> int                                     # does the work, returns the exit status

To add one (``train``, ``serve``, ``bench``, ``eval``...), write the module and list its name in
``SUBCOMMANDS``. ``run`` may raise ``CLIError`` or any ``FastDLLMError`` for problems the user can
fix: ``main`` prints them as one line (``fastdllm: error: ...``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Sequence

from .. import __version__
from . import common

SUBCOMMANDS: tuple[str, ...] = ("generate", "train", "serve", "eval", "bench", "kernels")


def build_parser() -> argparse.ArgumentParser:
    parser = common.ArgumentParser(
        prog=common.PROG,
        description="Block-diffusion LLM inference (Fast-dLLM v2 style).",
        epilog="Run 'fastdllm COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"{__package__}.{name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(command_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: argparse already printed
        return _status(e.code)
    return common.run_guarded(args.command_run, args)


def _status(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
