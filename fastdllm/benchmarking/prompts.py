"""Prompt sets for ``fastdllm bench``: a prompts file, a model's held-out problems, or built-in prompts.

A prompts file is JSONL, one object per line with the prompt under ``prompt`` (text),
``question`` (text, as in the word problems' ``heldout.jsonl``) or ``messages`` (a chat), and
optionally ``answer`` (an integer, compared with the ``The answer is N.`` line of the output);
or plain text, one prompt per line. Blank lines are skipped. Anything else is a
``PromptFileError`` naming the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import FastDLLMError

HELDOUT_FILE = "heldout.jsonl"

#: General chat prompts (no answers) for a model that ships no held-out problems.
GENERAL_PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a haiku about the sea.",
    "Explain in three sentences why the sky is blue.",
    "List five prime numbers and explain what a prime number is.",
    "Write a Python function that reverses a string.",
    "Give me three tips for learning a new language.",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "What is 17 times 23? Show your working.",
]


class PromptFileError(FastDLLMError):
    """A prompts file that is missing or malformed."""


@dataclass
class BenchPrompt:
    prompt: str | list[dict]      # text (chat template applied unless --no-chat) or chat messages
    answer: int | None = None     # the expected number, when the prompt set has answers


def read_prompts_file(path: str | Path) -> list[BenchPrompt]:
    """Read a JSONL or plain-text prompts file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompts file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PromptFileError(f"cannot read prompts file {path}: {e}") from None
    jsonl = any(line.lstrip().startswith("{") for line in lines if line.strip())
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        out.append(_parse_json_line(line, path, n) if jsonl else BenchPrompt(line.strip()))
    if not out:
        raise PromptFileError(f"prompts file {path} holds no prompts")
    return out


def _parse_json_line(line: str, path: Path, n: int) -> BenchPrompt:
    where = f"{path}, line {n}"
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(item, dict):
        raise PromptFileError(f"{where}: expected a JSON object with 'prompt', 'question' or 'messages'")
    if "messages" in item:
        prompt = item["messages"]
        if not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                             and isinstance(m.get("content"), str) for m in prompt)):
            raise PromptFileError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    else:
        key = "prompt" if "prompt" in item else "question" if "question" in item else None
        if key is None:
            raise PromptFileError(f"{where}: no 'prompt', 'question' or 'messages' field")
        prompt = item[key]
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptFileError(f"{where}: '{key}' must be a non-empty string")
    return BenchPrompt(prompt, _answer(item.get("answer"), where))


def _answer(value, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise PromptFileError(f"{where}: 'answer' must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise PromptFileError(f"{where}: 'answer' must be an integer, got {value!r}")


def heldout_file(model_dir: Path | None) -> Path | None:
    """``<model dir>/heldout.jsonl`` when it exists (the default model ships its held-out problems there)."""
    if model_dir is None:
        return None
    path = Path(model_dir) / HELDOUT_FILE
    return path if path.is_file() else None


def default_prompts(model_dir: Path | None) -> tuple[list[BenchPrompt], str]:
    """The model's held-out problems, else the general prompts; with a description of the source."""
    path = heldout_file(model_dir)
    if path is not None:
        return read_prompts_file(path), str(path)
    return [BenchPrompt(p) for p in GENERAL_PROMPTS], "built-in general prompts"
