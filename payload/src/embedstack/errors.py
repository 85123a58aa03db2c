"""Domain errors raised by every layer; api/error_responses.py maps each to an HTTP status."""

from __future__ import annotations

# How much of a value a client sent an error message repeats.
EXCERPT_CHARS = 64


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """repr(value), cut to its first `limit` characters with how long it was: an error message never
    grows with what the client sent."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class EmbedstackError(Exception):
    """Base class: a message a user can act on, and the request field it concerns."""

    code = "error"
    closes_connection = False  # the request's body may be unread: the connection cannot carry another

    def __init__(self, message: str, param: str | None = None, code: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after  # seconds until a retry is expected to succeed, when known
        if code:
            self.code = code


class ConfigError(EmbedstackError):
    """Bad settings or models file; raised at start-up, never while serving."""

    code = "invalid_config"


class InvalidInput(EmbedstackError):
    code = "invalid_request"


class ModelNotFound(EmbedstackError):
    code = "model_not_found"


class AuthenticationFailed(EmbedstackError):
    code = "invalid_api_key"


class BodyTooLarge(EmbedstackError):
    code = "request_too_large"
    closes_connection = True


class RequestTimeout(EmbedstackError):
    """The body did not arrive in time."""

    code = "request_timeout"
    closes_connection = True


class ClientGone(EmbedstackError):
    """The client closed the connection before its request was read: nobody reads the answer."""

    code = "client_closed_request"


class QueueFull(EmbedstackError):
    """Back-pressure: the request was not accepted and may be retried."""

    code = "queue_full"


class Unavailable(EmbedstackError):
    """Not ready yet, draining, or no healthy upstream: retryable."""

    code = "service_unavailable"


class UpstreamError(EmbedstackError):
    """An upstream answered with something the gateway cannot pass on as a vector."""

    code = "upstream_error"
