"""Every error the server returns is an OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``.

``APIError`` is raised by the routes; ``install_error_handlers`` maps it, the library's user
errors (``FastDLLMError``), request-validation failures (pydantic: wrong types, out-of-range
numbers, unknown fields, malformed JSON), unknown routes and bugs to that body, with status
400 for anything the client can fix (FastAPI's 422 included), 404 for unknown models and
routes, 401/408/413 from the guards (``guards.py``), 503 when the queue is full, and 500
only for bugs.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import FastDLLMError
from .protocol import error_body

# pydantic names the member of a union it tried ("str", "list[int]"...): not a field, leave it out
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def _field_path(loc) -> str:
    parts = [str(x) for x in loc if x != "body" and not (isinstance(x, str) and ("[" in x or x in _TYPE_TAGS))]
    return ".".join(parts)


async def _api_error(request: Request, e: APIError):
    return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status)


async def _user_error(request: Request, e: FastDLLMError):
    # an invalid decoding option names its field (``InvalidRequestError.param``), as pydantic's errors do
    return JSONResponse(error_body(str(e), param=getattr(e, "param", None)), status_code=400)


async def _validation_error(request: Request, e: RequestValidationError):
    errors = e.errors()
    # a union reports every member's failure: the one that got deepest is the one meant
    first = max(errors, key=lambda err: len(_field_path(err.get("loc", ())))) if errors else {}
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    where = _field_path(first.get("loc", ()))
    if first.get("type") == "json_invalid":  # its loc holds the character offset, not a field
        at = first.get("loc", ())[-1:]
        msg = "the request body is not valid JSON" + (f" (at character {at[0]})" if at and isinstance(at[0], int)
                                                      else "")
        where = ""
    return JSONResponse(error_body(f"{where}: {msg}" if where else msg, param=where or None), status_code=400)


async def _http_error(request: Request, e: StarletteHTTPException):
    type_ = "not_found_error" if e.status_code == 404 else "invalid_request_error"
    # the guards' refusals (guards.py) carry a code and their headers (Connection: close)
    return JSONResponse(error_body(str(e.detail), type_, code=getattr(e, "code", None)), status_code=e.status_code,
                        headers=e.headers)


async def _bug(request: Request, e: Exception):
    return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(FastDLLMError, _user_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _bug)
