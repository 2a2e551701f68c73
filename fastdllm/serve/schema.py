"""The server's OpenAPI schema (``GET /openapi.json``): every answer it can give, as it gives it.

The routes declare their request bodies (``protocol.py``); here are the bodies of their answers
(documentation only: the routes build plain dicts) and the statuses they answer with. FastAPI's
automatic 422 is replaced by the 400 the error handlers really send (``errors.py``), the
guards' 401/408/413 (``guards.py``) are listed, ``POST /v1/denoise`` (which reads its body
itself) gets its request schema, ``model`` names the served model, and a server with an API
key declares its bearer scheme.
The fuzz suite (``tests/test_server_fuzz.py``) checks the server against this schema.
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

# OpenAPI before 3.2: the schema of an event stream is the schema of one event
SSE = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"], "description": "one server-sent event",
    "properties": {"data": {"type": "string", "description": "a JSON chunk (an OpenAI error body if the request "
                                                              "failed after its start), or [DONE] at the end"},
                   "event": {"type": "string"}}}}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class DecodingStats(BaseModel):
    nfe: int
    tpf: float


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    fastdllm: DecodingStats


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: Literal["stop", "length"]


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    fastdllm: DecodingStats


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel, extra="allow"):
    status: Literal["ok"]
    model: str


def errors(*statuses: int) -> dict:
    why = {400: "invalid request", 401: "missing or incorrect API key", 404: "unknown model or route",
           408: "the body, or the whole request, ran past its time limit", 413: "body over the server's limit",
           503: "too many requests waiting"}
    return {s: {"model": ErrorBody, "description": why[s]} for s in statuses}


# every API route may meet the guards (401, 408, 413) and a malformed request (400)
API_ERRORS = errors(400, 401, 404, 408, 413)
GENERATION_ERRORS = errors(400, 401, 404, 408, 413, 503)


def install_schema(app: FastAPI, model_name: str, bearer: bool, guarded_health: bool) -> None:
    """Make ``app.openapi()`` return the finished schema (built once); a request's ``model`` is
    ``model_name``, the one model this server serves (any other is a 404)."""
    from .denoise import DenoiseChatRequest, DenoiseCompletionRequest

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):  # the 422 that is never sent
            components.pop(name, None)
        for model in (DenoiseChatRequest, DenoiseCompletionRequest):
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definition.pop("$defs", {}))
            components[model.__name__] = definition
        for name in ("ChatCompletionRequest", "CompletionRequest", "DenoiseChatRequest", "DenoiseCompletionRequest"):
            components[name]["properties"]["model"] = {"type": "string", "enum": [model_name], "title": "Model"}
        for path, item in schema["paths"].items():
            for method, op in item.items():
                op["responses"].pop("422", None)
                if path == "/v1/denoise" and method == "post":
                    op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"anyOf": [
                        {"$ref": f"#/components/schemas/{m.__name__}"}
                        for m in (DenoiseChatRequest, DenoiseCompletionRequest)]}}}}
                if bearer and (path.startswith("/v1") or (guarded_health and path in ("/health", "/metrics"))):
                    op["security"] = [{"bearer": []}]
                    op["responses"].setdefault("401", {"description": "missing or incorrect API key", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
        if bearer:
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
