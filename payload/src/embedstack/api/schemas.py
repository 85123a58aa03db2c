"""Parse and validate request bodies into plain dataclasses; every failure names its field."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from embedstack.errors import InvalidInput

ENCODING_FORMATS = ("float", "base64")
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
    return isinstance(x, list) and all(_is_int(t) for t in x)


def parse_embeddings_request(body: bytes, *, max_inputs: int) -> EmbeddingsRequest:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(doc, dict):
        raise InvalidInput("the request body must be a JSON object", code="invalid_json")

    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("'model' is required and must be a string", param="model", code="missing_required_parameter")
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
        items = [raw] if all(_is_int(t) for t in raw) else raw  # one list of token ids
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
