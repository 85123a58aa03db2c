"""The one table from exceptions to HTTP status and OpenAI-style error bodies."""

from __future__ import annotations

import logging
from typing import NamedTuple

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from embedstack import errors

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1  # when nothing better is known


class ErrorKind(NamedTuple):
    status: int
    type: str  # OpenAI's error type
    description: str  # what the status means, as the OpenAPI document says (api/openapi.py)


# exception class -> how it is answered
ERROR_TABLE: dict[type[errors.EmbedstackError], ErrorKind] = {
    errors.InvalidInput: ErrorKind(
        400, "invalid_request_error", "Invalid request: the message names the field or input index"
    ),
    errors.AuthenticationFailed: ErrorKind(401, "invalid_request_error", "Missing or wrong API key"),
    errors.ModelNotFound: ErrorKind(404, "invalid_request_error", "Model not served"),
    errors.RequestTimeout: ErrorKind(
        408, "invalid_request_error", "The request head or body did not arrive in time; the connection is closed"
    ),
    errors.BodyTooLarge: ErrorKind(413, "invalid_request_error", "Body over the size cap"),
    errors.QueueFull: ErrorKind(
        429,
        "rate_limit_error",
        "Queue full, or this key's share of the concurrent requests in use: retry after Retry-After seconds",
    ),
    # nginx's code for a request whose client hung up first; nobody reads it, /metrics counts it
    errors.ClientGone: ErrorKind(
        499, "invalid_request_error", "The client closed the connection first (never read; counted in /metrics)"
    ),
    errors.UpstreamError: ErrorKind(502, "server_error", "Every upstream failed"),
    errors.Unavailable: ErrorKind(503, "server_error", "Loading, draining, or no upstream available"),
    # never raised while serving: the 500 of a failure nobody expected (unexpected_error below) is described here
    errors.ConfigError: ErrorKind(500, "server_error", "Unexpected failure, logged"),
}
# Answers no EmbedstackError gives: Starlette's 405 (http_error below) and the connection guard's 431
# (connection_limits.py), both with the same error body.
OTHER_ERRORS = (
    ErrorKind(405, "invalid_request_error", "Method not allowed"),
    ErrorKind(
        431,
        "invalid_request_error",
        "Request line and headers over the cap, or too many headers; the connection is closed",
    ),
)
RETRYABLE = {429, 502, 503}  # 502: an upstream failed, another try may reach a good one
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def error_response(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    param: str | None = None,
    retry_after: int | None = None,
) -> Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    headers = {"Retry-After": str(retry_after or RETRY_AFTER_SECONDS)} if status in RETRYABLE else None
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def status_of(exc: errors.EmbedstackError) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls].status, ERROR_TABLE[cls].type
    return 500, "server_error"


async def embedstack_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.EmbedstackError)
    status, type_ = status_of(exc)
    if status >= 500 and status != 503:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    response = error_response(status, exc.message, type_, exc.code, exc.param, exc.retry_after)
    if exc.closes_connection:
        response.headers["connection"] = "close"
    return response


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, exc.detail, "invalid_request_error", _HTTP_CODES.get(exc.status_code))


async def unexpected_error(request: Request, exc: Exception) -> Response:
    # Starlette's ServerErrorMiddleware calls this for anything no other handler took.
    log.error("%s %s failed unexpectedly", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal server error; the gateway logged the cause", "server_error", "internal_error")


HANDLERS = {errors.EmbedstackError: embedstack_error, HTTPException: http_error, Exception: unexpected_error}
