"""The denoising page: ``GET /`` and its assets, which ship in the package (``static/``, no CDN).

The page (plain HTML, CSS and JavaScript, no build step) reads ``GET /v1/denoise/config`` (the
served model, its block and sub-block sizes, the default knobs, example prompts) and draws a
request's decoding from ``POST /v1/denoise`` (``denoise.py``): the answer block by block, the
current block as cells (masked, or coloured by the forward pass that decoded them), live stats.
Example prompts come from the checkpoint's ``heldout.jsonl`` when it has one (the default
word-problem model does), else a few general questions.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from ..engine.options import DEFAULTS, checkpoint_acceptance, checkpoint_block_sizes
from .schema import errors

STATIC_DIR = Path(__file__).resolve().parent / "static"
EXAMPLES = 4
GENERAL_EXAMPLES = ["Why is the sky blue?", "Write a haiku about rain.",
                    "What is the capital of France?", "Explain what a block-diffusion language model is."]


def install_page(app: FastAPI) -> None:
    app.state.page_config = page_config(app)
    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v1/denoise/config", config, methods=["GET"], responses=errors(401))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


async def index():
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def config(request: Request):
    return request.app.state.page_config


def page_config(app: FastAPI) -> dict:
    """What the page needs to know about the server, computed once."""
    s, llm = app.state.server, app.state.llm
    tokenizer = llm.tokenizer
    diffusion = llm.is_block_diffusion
    block_size, sub_block_size = checkpoint_block_sizes(llm.config.bd_size, llm.config.small_block_size)
    return {
        "model": s.model_name,
        "modes": ["diffusion", "ar"] if diffusion else ["ar"],
        "block_size": block_size,
        "sub_block_size": sub_block_size,
        # the schema's defaults; max tokens at most the server's default and what the context leaves
        "threshold": checkpoint_acceptance(llm.config.threshold, llm.config.acceptance)[0],
        "use_block_cache": DEFAULTS.use_block_cache,
        "max_tokens": min(DEFAULTS.max_new_tokens, s.default_max_tokens, s.limits.max_model_len - 1),
        "max_model_len": s.limits.max_model_len,
        "chat": bool(tokenizer is not None and getattr(tokenizer, "chat_template", None)),
        "tokenizer": tokenizer is not None,
        "examples": examples(llm) if tokenizer is not None else [],
    }


def examples(llm, n: int = EXAMPLES) -> list[str]:
    """Held-out problems of the checkpoint (one per kind), else general questions."""
    path = getattr(llm.checkpoint, "path", None)
    heldout = Path(path) / "heldout.jsonl" if path is not None else None
    if heldout is None or not heldout.is_file():
        return GENERAL_EXAMPLES[:n]
    picked, kinds = [], set()
    try:
        with heldout.open() as f:
            for line in f:
                row = json.loads(line) if line.strip() else {}
                question, kind = row.get("question"), row.get("kind")
                if isinstance(question, str) and kind not in kinds:
                    kinds.add(kind)
                    picked.append(question)
                    if len(picked) == n:
                        break
    except (OSError, ValueError, AttributeError):  # a broken file costs the examples, not the page
        return GENERAL_EXAMPLES[:n]
    return picked or GENERAL_EXAMPLES[:n]
