"""Bound what a raw JSON body can cost before it is parsed, in time linear in its size.

orjson is fast per byte but builds one Python object per JSON value while holding the GIL: 8 MiB
of `[],` is 2.8 million lists and seconds of a stalled event loop, on a worker thread too. An
embeddings request needs few values: one per input, or one per token id. So the body is measured
first with C-speed scans, each byte read a bounded number of times, and refused when it holds
more strings, arrays or values than any request the gateway serves; token-id lists longer than
any served model takes are cut in the raw bytes, so their tails never become ints.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from embedstack.errors import InvalidInput

# What an array of integers holds between its brackets.
_INT_ARRAY_BYTES = b"0123456789,- \t\r\n"

# Strings and containers beyond one per input: the object, its keys, a few fields clients add.
_SPARE = 64
# Values a body may hold, token ids included, after long lists are cut: 2,048 inputs of 256
# tokens (the bundled model's maximum, cut to 257) with room. orjson builds about ten million
# small ints a second, so the largest body stays a few tens of milliseconds of GIL.
MAX_JSON_VALUES = 600_000


@dataclass(frozen=True, slots=True)
class Bounds:
    max_strings: int
    max_containers: int
    max_values: int = MAX_JSON_VALUES

    @classmethod
    def for_inputs(cls, max_inputs: int) -> Bounds:
        return cls(max_strings=max_inputs + _SPARE, max_containers=max_inputs + _SPARE)


def bound_body(body: bytes, bounds: Bounds, keep_ids: int | None) -> bytes:
    """The body, with every integer array longer than `keep_ids` cut to its first `keep_ids`;
    InvalidInput when it holds more strings, arrays and objects, or values than `bounds` allow."""
    # Strings are emptied first, so what is left is structure only; the count stops a flood early.
    skeleton, strings = _skeleton(body, bounds.max_strings + 1)
    if len(strings) > bounds.max_strings:
        raise InvalidInput(
            f"the request body holds more than {bounds.max_strings} JSON strings; "
            "an embeddings request needs one per input",
            code="too_many_values",
        )
    brackets = {b: skeleton.count(b) for b in (b"[", b"]", b"{", b"}")}
    if max(brackets.values()) > bounds.max_containers:
        raise InvalidInput(
            f"the request body holds more than {bounds.max_containers} JSON arrays or objects; "
            "an embeddings request needs one per input",
            code="too_many_values",
        )
    values = skeleton.count(b",") + brackets[b"["] + brackets[b"{"] + 1
    if keep_ids is not None and values > keep_ids:  # else no array can be longer than keep_ids
        body, removed = _cut_int_arrays(body, keep_ids, skeleton, strings)
        values -= removed
    if values > bounds.max_values:
        raise InvalidInput(
            f"the request body holds more than {bounds.max_values:,} JSON values (token ids count one each); "
            "send fewer inputs per request",
            code="too_many_values",
        )
    return body


def cut_int_arrays(body: bytes, keep: int) -> tuple[bytes, int]:
    """The body with every integer array of more than `keep` items cut to `keep`, and how many
    items were cut; brackets inside strings are left alone."""
    return _cut_int_arrays(body, keep, *_skeleton(body))


def _skeleton(body: bytes, limit: int = 0) -> tuple[bytes, list[tuple[int, int]]]:
    """The body with its first `limit` strings (0: all) emptied to "", and their spans in the body.

    Escaped backslashes, then escaped quotes, are blanked out in a copy of the same length (pairs from the
    left, as JSON reads them), so every quote left in it opens or closes a string: a split on quotes finds
    them all at C speed (a regex over Roo Code's 60 KB took 0.8 ms of event loop, this 0.3 ms). A string
    left open runs to the end of the body (the parser then refuses it). Outside strings JSON has no
    backslash: where one stands the parser stops, so what it reads before agrees with this reading."""
    masked = body.replace(b"\\\\", b"  ").replace(b'\\"', b"  ") if b"\\" in body else body
    parts = masked.split(b'"', 2 * limit if limit else -1)
    strings: list[tuple[int, int]] = []
    pieces: list[bytes] = []
    at = 0
    for i, part in enumerate(parts):  # even: between strings; odd: a string's content
        end = at + len(part)
        if i % 2:
            strings.append((at - 1, min(end + 1, len(body))))
            pieces.append(b'""')
        else:
            pieces.append(body[at:end])
        at = end + 1
    return b"".join(pieces), strings


def _cut_int_arrays(body: bytes, keep: int, skeleton: bytes, strings: list[tuple[int, int]]) -> tuple[bytes, int]:
    """cut_int_arrays, with the arrays found in the skeleton. Each step is a bounded number of
    C-speed scans over disjoint stretches: bound_body has counted brackets and strings first."""
    opens = _positions(skeleton, b"[")
    others = sorted(_positions(skeleton, b"]") + _positions(skeleton, b"{") + _positions(skeleton, b"}"))
    parts: list[bytes] = []
    copied = removed = shift = 0  # shift: how much longer the body is than the skeleton up to here
    string = 0
    for start in opens:
        end = others[bisect.bisect(others, start)] if others and start < others[-1] else -1
        following_open = bisect.bisect(opens, start)
        if end < 0 or (following_open < len(opens) and opens[following_open] < end) or skeleton[end] != 93:
            continue  # not followed by its own "]": an array of arrays, objects or strings
        inner = skeleton[start + 1 : end]
        if inner.translate(None, _INT_ARRAY_BYTES) or inner.count(b",") < keep:
            continue  # not integers only, or not longer than keep
        while string < len(strings) and strings[string][0] < start + shift:
            shift += strings[string][1] - strings[string][0] - 2
            string += 1
        items = inner.split(b",", keep)
        parts += [body[copied : start + shift + 1], b",".join(items[:keep])]
        copied = end + shift
        removed += inner.count(b",") + 1 - keep
    if not parts:
        return body, 0
    parts.append(body[copied:])
    return b"".join(parts), removed


def _positions(text: bytes, char: bytes) -> list[int]:
    found, at = [], text.find(char)
    while at >= 0:
        found.append(at)
        at = text.find(char, at + 1)
    return found
