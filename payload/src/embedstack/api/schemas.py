"""Both directions of the wire format: request bodies parsed and validated into plain dataclasses (every
failure names its field), and the embeddings answer built from the vectors."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from embedstack.api.json_bounds import Bounds, bound_body
from embedstack.errors import InvalidInput, excerpt

ENCODING_FORMATS = ("float", "base64")
# No vocabulary is this large; the bound keeps every id a machine integer for the cache key and the engines.
MAX_TOKEN_ID = 2**31
INPUT_TYPES = ("document", "query")


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    model: str
    inputs: list[str | list[int]]
    encoding_format: str
    dimensions: int | None
    input_type: str
    replaced_surrogates: int = 0  # lone UTF-16 surrogates in the inputs, embedded as U+FFFD


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _token_list(x: object) -> bool:
    # map/set run in C: a million ids take milliseconds, not the event loop's second
    return isinstance(x, list) and set(map(type, x)) <= {int}


def parse_embeddings_request(body: bytes, *, max_inputs: int, max_tokens: int | None = None) -> EmbeddingsRequest:
    """max_tokens: the most any served model takes; longer token-id lists are cut to one more
    than that before they are parsed (api/json_bounds.py), so they still read as too long."""
    body = bound_body(body, Bounds.for_inputs(max_inputs), None if max_tokens is None else max_tokens + 1)
    doc, replaced = _loads(body)
    if not isinstance(doc, dict):
        raise InvalidInput("the request body must be a JSON object", code="invalid_json")

    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("'model' is required and must be a string", param="model", code="missing_required_parameter")
    if not isinstance(doc.get("user"), str | None):  # OpenAI's end-user id: accepted, unused
        raise InvalidInput("'user' must be a string", param="user")
    return EmbeddingsRequest(
        model=model,
        inputs=_parse_input(doc.get("input"), max_inputs),
        encoding_format=_parse_choice(doc, "encoding_format", ENCODING_FORMATS),
        dimensions=_parse_dimensions(doc.get("dimensions")),
        input_type=_parse_choice(doc, "input_type", INPUT_TYPES),
        replaced_surrogates=replaced,
    )


def embeddings_response(
    req: EmbeddingsRequest, vectors: np.ndarray, prompt_tokens: int, native_dimension: int
) -> dict[str, Any]:
    """OpenAI's embeddings list: one row per input in order, cut to the requested dimensions and
    encoded as the request asked (orjson serialises the float rows, OPT_SERIALIZE_NUMPY)."""
    if req.dimensions is not None and req.dimensions < native_dimension:  # Matryoshka
        vectors = vectors[:, : req.dimensions]
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    if req.encoding_format == "base64":
        little = vectors.astype("<f4", copy=False)
        rows = [base64.b64encode(little[i].tobytes()).decode() for i in range(len(little))]
    else:
        rows = list(vectors)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
        "model": req.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _loads(body: bytes) -> tuple[object, int]:
    """The parsed body and how many lone surrogates its strings held (each now U+FFFD).

    orjson refuses a `\\ud83d` escape without its pair; Python's json keeps it, as other
    OpenAI-compatible servers do. Roo Code sends one whenever its 1,000-unit line cut splits an
    emoji, so that one case is parsed again by json, and everything else orjson refuses stays a 400.
    """
    try:
        return orjson.loads(body), 0
    except orjson.JSONDecodeError as exc:
        if "surrogate in string" not in str(exc):  # an escape; raw surrogate bytes are not UTF-8
            raise InvalidInput(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    try:
        doc = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, huge ints
        raise InvalidInput(f"the request body is not valid JSON: {excerpt(str(exc))}", code="invalid_json") from None
    if not isinstance(doc, dict):
        return doc, 0
    replaced = 0
    for name, value in doc.items():
        if isinstance(value, str):
            doc[name], n = _LONE_SURROGATE.subn("\ufffd", value)
            replaced += n if name == "input" else 0
        elif name == "input" and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    value[i], n = _LONE_SURROGATE.subn("\ufffd", item)
                    replaced += n
    return doc, replaced


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse_input(raw: object, max_inputs: int) -> list[str | list[int]]:
    if raw is None:
        raise InvalidInput("'input' is required", param="input", code="missing_required_parameter")
    if isinstance(raw, str):
        items: list = [raw]
    elif isinstance(raw, list):
        if not raw:
            raise InvalidInput("'input' must not be an empty list", param="input", code="empty_input")
        items = [raw] if _token_list(raw) else raw  # one list of token ids
    else:
        raise InvalidInput(
            "'input' must be a string, a list of strings, a list of token ids or a list of token-id lists",
            param="input",
        )
    if len(items) > max_inputs:
        raise InvalidInput(
            f"'input' has {len(items)} items; the maximum is {max_inputs} per request",
            param="input",
            code="too_many_inputs",
        )
    for i, item in enumerate(items):
        if isinstance(item, str):  # "" too: embedded as the model embeds it (README "The API" says why)
            continue
        if _token_list(item):
            if not item:
                raise InvalidInput(f"input[{i}] is an empty token list", param="input", code="empty_input")
            if min(item) < 0 or max(item) >= MAX_TOKEN_ID:  # C speed; the engine checks its own vocabulary
                raise InvalidInput(
                    f"input[{i}] contains token id {min(item) if min(item) < 0 else max(item)}, outside any vocabulary",
                    param="input",
                    code="invalid_token_id",
                )
            continue
        raise InvalidInput(
            f"input[{i}] must be a string or a list of integer token ids, got {type(item).__name__}",
            param="input",
        )
    return items


def _parse_choice(doc: dict, name: str, allowed: tuple[str, ...]) -> str:
    value = doc.get(name)
    if value is None:
        return allowed[0]
    if value not in allowed:
        raise InvalidInput(f"'{name}' must be one of {', '.join(allowed)}; got {excerpt(value)}", param=name)
    return value


def _parse_dimensions(value: object) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise InvalidInput(f"'dimensions' must be a positive integer, got {excerpt(value)}", param="dimensions")
    return value
