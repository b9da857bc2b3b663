"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.

OpenAI's clients turn that body into their typed exceptions (BadRequestError,
RateLimitError, ...) with the message intact, so a caller of this service reads the same
errors it would from OpenAI. Every failure path of the app ends in `APIError`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger("transcription_worker")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          408: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}


def shown(value: object, limit: int = 40) -> str:
    """A client's value as an error message echoes it: `limit` characters at most, then its
    length, so a 1 MB field never comes back whole (nor reaches a log line)."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def shown_all(values, limit: int = 40, most: int = 3) -> str:
    """`most` of a client's values, each `shown`, and how many more there are."""
    values = list(values)
    more = f" and {len(values) - most} more" if len(values) > most else ""
    return ", ".join(shown(v, limit) for v in values[:most]) + more


class APIError(Exception):
    """An error answered in OpenAI's shape: HTTP `status`, `message`, `param`, `code`;
    `retry_after` (seconds, at least 1) becomes a Retry-After header."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, retry_after: int | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers["Retry-After"] = str(max(1, int(retry_after)))


def error_response(status: int, message: str, *, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error body `{"error": {message, type, param, code}}` as a JSONResponse; the
    type follows the status as OpenAI's API names it."""
    body = {"error": {"message": message, "type": _TYPES.get(status, "api_error"),
                      "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Answer APIError, request validation, Starlette HTTP errors, a client gone mid-body (499)
    and anything unexpected (500, logged with its traceback) in OpenAI's error shape."""
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code,
                              headers=exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect):
        # the client closed the connection while its body was read (a dropped upload it will
        # resume): nobody gets this answer; it is recorded as nginx's 499 "client closed
        # request", never as the server's 500 that deploy analysis counts against a release
        return error_response(499, "the client closed the connection before its request arrived",
                              code="client_disconnected")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        param = str(err["loc"][-1]) if err.get("loc") else None
        return error_response(400, f"{param}: {err['msg']}", param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error; see the worker's log", code="internal_error")
