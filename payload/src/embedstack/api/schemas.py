"""Parse and validate request bodies into plain dataclasses; every failure names its field."""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from embedstack.errors import InvalidInput

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


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _token_list(x: object) -> bool:
    # map/set run in C: a million ids take milliseconds, not the event loop's second
    return isinstance(x, list) and set(map(type, x)) <= {int}


# Where a list of integers may start: "[" then a digit, after optional whitespace and sign.
_INT_LIST_START = re.compile(rb"\[\s*-?\d")
_INT_LIST_CHARS = b"0123456789,- \t\r\n"


def cap_token_lists(body: bytes, keep: int) -> bytes:
    """The body with every JSON array of more than `keep` integers cut to its first `keep`.

    A token-id list longer than any served model takes is truncated, or refused, anyway: cut in the
    raw bytes, its tail never becomes Python ints (8 MiB of ids would be 1.4 million objects and a
    second of the event loop). Brackets inside JSON strings are left alone, since a code chunk may
    hold a long numeric literal: unescaped quotes are counted from one candidate to the next.
    """
    if len(body) <= 2 * keep:  # more than `keep` integers take at least 2 * keep bytes
        return body
    parts: list[bytes] = []
    copied = counted = 0
    in_string = False
    for match in _INT_LIST_START.finditer(body):
        start = match.start()
        end = body.find(b"]", start)
        if start < copied or end < 0 or end - start <= 2 * keep:
            continue
        inner = body[start + 1 : end]
        if inner.translate(None, _INT_LIST_CHARS) or inner.count(b",") < keep:
            continue  # not a list of integers, or not a long one
        # "[" is never inside an escape, so no run of backslashes spans two segments
        segment = body[counted:start].replace(b"\\\\", b"")
        in_string ^= (segment.count(b'"') - segment.count(b'\\"')) % 2 == 1
        counted = start
        if in_string:
            continue
        parts += [body[copied : start + 1], b",".join(inner.split(b",", keep)[:keep]), b"]"]
        copied = end + 1
    if not parts:
        return body
    parts.append(body[copied:])
    return b"".join(parts)


def parse_embeddings_request(body: bytes, *, max_inputs: int, max_tokens: int | None = None) -> EmbeddingsRequest:
    """max_tokens: the most any served model takes; longer token-id lists are cut to one more
    than that before they are parsed (see cap_token_lists), so they still read as too long."""
    if max_tokens is not None:
        body = cap_token_lists(body, max_tokens + 1)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
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
    )


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
        if isinstance(item, str):
            if not item:
                raise InvalidInput(f"input[{i}] is an empty string", param="input", code="empty_input")
        elif _token_list(item):
            if not item:
                raise InvalidInput(f"input[{i}] is an empty token list", param="input", code="empty_input")
            if min(item) < 0 or max(item) >= MAX_TOKEN_ID:  # C speed; the engine checks its own vocabulary
                raise InvalidInput(
                    f"input[{i}] contains token id {min(item) if min(item) < 0 else max(item)}, outside any vocabulary",
                    param="input",
                    code="invalid_token_id",
                )
        else:
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
        raise InvalidInput(f"'{name}' must be one of {', '.join(allowed)}; got {value!r}", param=name)
    return value


def _parse_dimensions(value: object) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise InvalidInput(f"'dimensions' must be a positive integer, got {value!r}", param="dimensions")
    return value
