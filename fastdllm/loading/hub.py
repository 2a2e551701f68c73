"""Resolve a model reference: a local directory, a ``.gguf`` file, or a Hugging Face Hub id."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ModelLoadError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "tokenizer*"]


def resolve(model: str | os.PathLike, revision: str | None = None) -> Path:
    """Return a local path (directory or .gguf file) for ``model``.

    ``model``: an existing directory or .gguf file, else a model name fastdllm knows
    (``word-problems``, ``smollm2``; see ``fastdllm.models``), else a hub id.
    """
    from ..models import is_name, named_model_path

    path = Path(model).expanduser()
    if path.exists():
        if path.is_dir() or path.suffix == ".gguf":
            return path
        raise ModelLoadError(f"{path} is neither a checkpoint directory nor a .gguf file")
    text = str(model)
    if is_name(text):
        return named_model_path(text)
    if text.endswith(".gguf") or text.startswith((".", "/", "~")) or not HUB_ID.match(text):
        raise ModelLoadError(f"model not found: {text} (no such file or directory, and not a hub id like org/name)")
    return download(text, revision)


def download(repo_id: str, revision: str | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS))
    except LocalEntryNotFoundError as e:
        raise ModelLoadError(
            f"cannot download {repo_id} from the Hugging Face Hub and it is not in the local cache "
            f"(offline?): {e}") from e
    except RepositoryNotFoundError as e:
        raise ModelLoadError(f"no model {repo_id} on the Hugging Face Hub (or it is private)") from e
    except (HfHubHTTPError, OSError) as e:
        raise ModelLoadError(f"cannot download {repo_id} from the Hugging Face Hub: {e}") from e
