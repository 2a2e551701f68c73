"""Exceptions fastdllm raises for problems the user can fix (bad input, missing files).

The CLI turns these into a one-line message and exit status 2; the server into an
OpenAI-style error body. Anything else is a bug and keeps its traceback.
"""


class FastDLLMError(Exception):
    """Base class: a problem with the user's input, not a bug in fastdllm."""


class ModelLoadError(FastDLLMError):
    """The checkpoint cannot be found, resolved or loaded."""


class UnsupportedModelError(ModelLoadError):
    """The checkpoint's architecture is not one fastdllm implements."""


class InvalidRequestError(FastDLLMError, ValueError):
    """A generation request has a bad parameter or prompt.

    ``param``: the option at fault (a ``DecodeOptions`` field), so each front-end can name it its
    own way (the CLI as its flag, the server in the error body's ``param``); None for the prompt.
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param
