"""The OpenAPI 3.1 document of the API this gateway serves (GET /openapi.json).

Written from the same settings and models the routes enforce: the limits in it (inputs per
request, dimensions, served model names) are the ones a request meets, so a client or a fuzzer
that follows the document is refused only for what the document cannot say (a token id outside
the vocabulary, an input too long with truncation off). Field meanings follow OpenAI's embeddings
API; `input_type` is this gateway's addition.
"""

from __future__ import annotations

from typing import Any

from embedstack import __version__
from embedstack.api.error_responses import ERROR_TABLE, OTHER_ERRORS, RETRYABLE
from embedstack.api.schemas import ENCODING_FORMATS, INPUT_TYPES, MAX_TOKEN_ID
from embedstack.config import ModelSpec, Settings

_ERROR = {"$ref": "#/components/schemas/Error"}
_JSON = "application/json"


def _error_response(description: str, retry: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {_JSON: {"schema": _ERROR}}}
    if retry:
        response["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "string"}}
        }
    return response


# What each error status means, from the one error table.
_MEANINGS = {kind.status: kind.description for kind in (*ERROR_TABLE.values(), *OTHER_ERRORS)}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _error_response(_MEANINGS[s], s in RETRYABLE) for s in statuses}


def _request_schema(names: list[str], widest: int, max_inputs: int) -> dict[str, Any]:
    token_ids = {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID - 1},
        "minItems": 1,
    }
    text = {"type": "string"}  # "" too: embedded as the model embeds it
    # Null is what the parser takes as absent, so it is valid wherever a field is optional.
    return {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "enum": names, "description": "A served model id or alias"},
            "input": {
                "description": "A string, a list of strings, a list of token ids, or a list of token-id lists",
                "oneOf": [
                    text,
                    {"type": "array", "items": text, "minItems": 1, "maxItems": max_inputs},
                    token_ids,
                    {"type": "array", "items": token_ids, "minItems": 1, "maxItems": max_inputs},
                ],
            },
            "encoding_format": {"enum": [*ENCODING_FORMATS, None], "default": "float"},
            "dimensions": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": widest,
                "description": "Matryoshka cut",
            },
            "input_type": {"enum": [*INPUT_TYPES, None], "default": "document"},
            "user": {"type": ["string", "null"], "description": "An end-user id, as OpenAI's; unused"},
        },
    }


def _embeddings_list_schema() -> dict[str, Any]:
    embedding = {
        "type": "object",
        "required": ["object", "index", "embedding"],
        "properties": {
            "object": {"const": "embedding"},
            "index": {"type": "integer", "minimum": 0},
            "embedding": {
                "oneOf": [
                    {"type": "array", "items": {"type": "number"}},
                    {"type": "string", "description": "base64 of little-endian float32"},
                ]
            },
        },
    }
    usage = {
        "type": "object",
        "required": ["prompt_tokens", "total_tokens"],
        "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
    }
    return {
        "type": "object",
        "required": ["object", "data", "model", "usage"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": embedding},
            "model": {"type": "string"},
            "usage": usage,
        },
    }


def _model_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "object", "owned_by", "dimension", "max_tokens"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
            "root": {"type": "string"},
            "dimension": {"type": "integer"},
            "max_tokens": {"type": "integer"},
            "engine": {"type": "string"},
        },
    }


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string", "enum": sorted({kind.type for kind in ERROR_TABLE.values()})},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    }


def _operations(security: list[dict[str, list]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """POST /v1/embeddings and GET /v1/models (each also without /v1)."""
    embed_operation = {
        "summary": "Create embeddings",
        "security": security,
        "requestBody": {"required": True, "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Request"}}}},
        "responses": {
            "200": {"description": "Vectors in input order", "content": {_JSON: {"schema": _embeddings_list_schema()}}},
            **_errors(400, 401, 404, 405, 408, 413, 429, 431, 499, 500, 502, 503),
        },
    }
    models_list = {"type": "object", "properties": {"data": {"type": "array", "items": _model_schema()}}}
    models_operation = {
        "summary": "List the served models (one entry per id and alias)",
        "security": security,
        "responses": {
            "200": {"description": "Served models", "content": {_JSON: {"schema": models_list}}},
            **_errors(401, 405),
        },
    }
    return embed_operation, models_operation


def _plain(summary: str, media: str = _JSON, *statuses: int) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "responses": {"200": {"description": "OK", "content": {media: {}}}, **_errors(*statuses)},
        }
    }


def openapi_document(settings: Settings, specs: list[ModelSpec]) -> dict[str, Any]:
    names = sorted({name for spec in specs for name in spec.names})
    widest = max(spec.dimension for spec in specs)
    max_inputs = settings.max_inputs_per_request
    security = [{"bearer": []}, {"apiKey": []}] if settings.api_keys else []
    embed_operation, models_operation = _operations(security)
    return {
        "openapi": "3.1.0",
        "info": {"title": "embedstack gateway", "version": __version__, "description": "OpenAI-compatible embeddings"},
        "paths": {
            "/v1/embeddings": {"post": embed_operation},
            "/embeddings": {"post": embed_operation},
            "/v1/models": {"get": models_operation},
            "/models": {"get": models_operation},
            "/health": _plain("The process is alive"),
            "/ready": _plain("Models loaded and not draining", _JSON, 503),
            "/metrics": _plain("Prometheus metrics", "text/plain", *([401] if settings.metrics_auth != "open" else [])),
        },
        "components": {
            "schemas": {"Request": _request_schema(names, widest, max_inputs), "Error": _error_schema()},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "api-key"},
            },
        },
    }
