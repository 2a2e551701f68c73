"""The released Fast-dLLM v2 ``generate``, run in its own interpreter by ``reference_worker.py``.

The released ``modeling.py`` needs transformers 4.53 while fastdllm needs a newer one, so
``run_reference`` writes the prompts (token ids) and settings to a spec file, runs the worker
under ``python`` (an interpreter with transformers 4.53, e.g. ``python -m venv
--system-site-packages /tmp/refenv && /tmp/refenv/bin/pip install transformers==4.53.1 einops``)
and reads back, per prompt, the generated ids, the seconds of the ``generate`` call and its
forward passes. Used by ``fastdllm bench --reference-code`` and ``benchmarks/bench_reference.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import FastDLLMError

WORKER = Path(__file__).with_name("reference_worker.py")
CODE_FILES = ("modeling.py", "configuration.py")


class ReferenceRunError(FastDLLMError):
    """The released code is missing or its run failed (``stderr``: the worker's error output, if it ran)."""

    def __init__(self, message: str, stderr: str = ""):
        super().__init__(message)
        self.stderr = stderr


def release_skips_prompt(prompt_tokens: int, block_size: int) -> bool:
    """True where the released ``generate`` never shows the prompt to the model.

    It prefills only a prompt longer than one block (``input_ids.shape[1] > block_size``); a
    shorter one is decoded inside its first block, padded with masks to the block's end. A prompt
    of exactly ``block_size`` tokens falls between the two: the first block becomes ``block_size``
    fresh masks decoded with no KV cache, so the output ignores the prompt. fastdllm reads the
    prompt in that case too, so such prompts are reported apart, not counted as disagreements.
    """
    return prompt_tokens == block_size


def check_reference_code(code_dir: str | Path) -> Path:
    """``code_dir`` if it holds the released ``modeling.py`` and ``configuration.py``."""
    code_dir = Path(code_dir)
    missing = [f for f in CODE_FILES if not (code_dir / f).is_file()]
    if missing:
        raise ReferenceRunError(f"{code_dir} lacks {' and '.join(missing)} (the released Fast-dLLM v2 modeling "
                                f"code; any released checkpoint directory has them)")
    return code_dir


def check_python(python: str) -> str:
    """``python`` if it names an existing interpreter (a path, or a command on PATH)."""
    if Path(python).is_file() or shutil.which(python):
        return python
    raise ReferenceRunError(f"interpreter not found: {python}")


def run_reference(prompts: list[list[int]], *, model_dir: str | Path, code_dir: str | Path, python: str,
                  max_new_tokens: int, threshold: float, block_size: int, small_block_size: int, mask_id: int,
                  stop_token: int, threads: int, use_block_cache: bool = False, dtype: str = "float32",
                  device: str = "cpu", restore_block_reset: bool = False) -> dict:
    """Decode ``prompts`` one at a time with the released ``generate`` (after one warm-up call).

    Returns the worker's output: ``{"transformers", "torch", "threads", "code_resets_block_cache",
    "rows": [{"prompt_tokens", "tokens", "seconds", "nfe"}, ...]}``.
    """
    spec = {"prompts": prompts, "max_new_tokens": max_new_tokens, "threshold": threshold, "block_size": block_size,
            "small_block_size": small_block_size, "mask_id": mask_id, "stop_token": stop_token,
            "use_block_cache": use_block_cache, "threads": threads, "dtype": dtype, "device": str(device),
            "restore_block_reset": restore_block_reset}
    with tempfile.TemporaryDirectory(prefix="fastdllm_ref_") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [python, str(WORKER), "--reference-code", str(code_dir), "--model", str(model_dir),
               "--spec", str(spec_path), "--out", str(out_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            raise ReferenceRunError(f"cannot start {python}: {e}") from None
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["no error output"]
            raise ReferenceRunError(f"the reference run failed (exit {proc.returncode}): {tail[0]}; "
                                    f"command: {' '.join(cmd)}", proc.stderr)
        return json.loads(out_path.read_text())
