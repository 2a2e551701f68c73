"""OpenAI-compatible serving: ``create_app(llm, model_name)`` (FastAPI) and ``fastdllm serve``."""

from .app import create_app

__all__ = ["create_app"]
