"""midtier's error hierarchy.

Every error a client can cause or see is a ``MidtierError``; the server turns it into
OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}`` with ``status``.

    MidtierError                      (500, server_error)
    ├── InvalidRequest                (400, invalid_request_error; names the param)
    │   ├── ContextLengthExceeded     (400, code context_length_exceeded)
    │   └── InvalidGrammar            (400, code invalid_grammar)
    ├── NotFound                      (404, invalid_request_error)
    │   └── ModelNotFound             (404, code model_not_found)
    ├── Conflict                      (409)
    └── EngineError                   (500, server_error: the engine failed, not the request)
        ├── EngineUnavailable         (503)
        └── UpstreamError             (the upstream's status; 502 when the exchange itself broke)
            └── UpstreamTimeout       (504)
"""

from __future__ import annotations

from typing import Any


class MidtierError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(MidtierError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class InvalidGrammar(InvalidRequest):
    code = "invalid_grammar"


class NotFound(MidtierError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(MidtierError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class EngineError(MidtierError):
    status = 500
    type = "server_error"


class EngineUnavailable(EngineError):
    status = 503
    code = "engine_unavailable"


class UpstreamError(EngineError):
    """An upstream model server failed, or answered with an error (whose status, type and code
    this error keeps). ``retryable``: nothing was generated, so the request may be sent again."""

    status = 502
    code = "upstream_error"

    def __init__(self, message: str, *, status: int | None = None, error_type: str | None = None,
                 param: str | None = None, code: str | None = None, retryable: bool = False) -> None:
        super().__init__(message, param=param, code=code)
        if status is not None:
            self.status = status
        if error_type is not None:
            self.type = error_type
        elif self.status < 500:
            self.type = "invalid_request_error"
        self.retryable = retryable


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
