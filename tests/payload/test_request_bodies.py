"""What odd but honest clients send is embedded, and what hostile ones send costs little.

Honest: Roo Code cuts long lines at 1,000 UTF-16 units, which can split an emoji; Node's
JSON.stringify then sends the half as a lone `\\ud83d` escape (well-formed JSON). A chunk may also
be empty. Neither may cost the other inputs of the batch.

Hostile: a body built to make parsing slow (quadratic scans, millions of tiny JSON values) is
refused in time linear in its size, before it becomes Python objects.
"""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest
from embedstack.api.schemas import parse_embeddings_request
from embedstack.errors import InvalidInput
from fake_engine import FakeEngines, token_ids, vector_of
from test_app_in_process import AUTH, MODEL, start

pytestmark = pytest.mark.fast

MIB = 1 << 20


def post_raw(client, body: bytes):
    return client.post("/v1/embeddings", content=body, headers={**AUTH, "Content-Type": "application/json"})


def test_a_lone_surrogate_is_embedded_as_the_replacement_character_and_counted():
    texts = [f"chunk {i}" for i in range(60)]
    body = orjson.dumps({"model": MODEL, "input": texts, "encoding_format": "float"})
    # what Node's JSON.stringify sends for a string cut inside a surrogate pair: a lone high surrogate escape
    body = body.replace(b"chunk 17", b"chunk 17 \\ud83d").replace(b"chunk 40", b"\\ude00 chunk 40")
    with start(FakeEngines(), EMBEDSTACK_MAX_BODY_BYTES=str(MIB)) as client:
        answer = post_raw(client, body)
        assert answer.status_code == 200, answer.text
        rows = answer.json()["data"]
        assert len(rows) == 60
        np.testing.assert_allclose(rows[17]["embedding"], vector_of(token_ids("chunk 17 \ufffd"), 384)[0], rtol=1e-6)
        np.testing.assert_allclose(rows[40]["embedding"], vector_of(token_ids("\ufffd chunk 40"), 384)[0], rtol=1e-6)
        metrics = client.get("/metrics").text
        assert "embedstack_lone_surrogates_replaced_total 2.0" in metrics


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model": "m", "input": ["a", "b"', "not valid JSON"),
        (b'{"model": "m", "input": ["\\ud83d", NaN]}', "not valid JSON"),
        (b'{"model": "m", "input": ["\\ud83d", "\\x"]}', "not valid JSON"),
        (b'{"model": "m", "input": ["\xed\xa0\xbd"]}', "not valid JSON"),  # a raw UTF-8 surrogate is not UTF-8
    ],
)
def test_every_other_invalid_json_stays_a_400(body, message):
    with pytest.raises(InvalidInput, match=message):
        parse_embeddings_request(body, max_inputs=2048)


def test_an_empty_string_is_embedded_and_the_batch_is_kept():
    texts = [f"chunk {i}" for i in range(60)]
    texts[17] = ""
    with start(FakeEngines()) as client:
        answer = client.post(
            "/v1/embeddings", json={"model": MODEL, "input": texts, "encoding_format": "float"}, headers=AUTH
        )
        assert answer.status_code == 200, answer.text
        rows = answer.json()["data"]
        assert len(rows) == 60
        np.testing.assert_allclose(rows[17]["embedding"], vector_of([], 384)[0], rtol=1e-6)


def parse_seconds(body: bytes, **kwargs) -> tuple[float, Exception | None]:
    started = time.perf_counter()
    try:
        parse_embeddings_request(body, max_inputs=2048, max_tokens=256, **kwargs)
    except InvalidInput as exc:
        return time.perf_counter() - started, exc
    return time.perf_counter() - started, None


# Each was seconds to minutes of the event loop (issue 21): a bound an order of magnitude above what the
# linear scan takes on a busy 2-core machine, and far below what the old code took.
HOSTILE = {
    "open int lists": b'{"model": "m", "input": "x", "pad": ' + b"[0" * (MIB // 2) + b"}",
    "nested empty lists": b'{"model": "m", "input": "x", "pad": [' + b"[]," * (8 * MIB // 3) + b"[]]}",
    "empty objects": b'{"model": "m", "input": "x", "pad": [' + b"{}," * (8 * MIB // 3) + b"{}]}",
    "tiny strings": b'{"model": "m", "input": "x", "pad": [' + b'"",' * (8 * MIB // 3) + b'""]}',
    "unterminated string of escapes": b'{"model": "m", "input": "' + b'\\"' * (4 * MIB),
    # every escaped quote opened a new string that scanned to the lone backslash at the end, and failed
    "escaped quotes ending in a lone backslash": b'{"model": "m", "input": "x", "pad": "' + b'\\"' * (MIB // 2) + b"\\",
    "millions of numbers": b'{"model": "m", "input": "x", "pad": [' + b"1.5," * (2 * MIB) + b"1]}",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_body_is_refused_in_linear_time(name):
    seconds, refused = parse_seconds(HOSTILE[name])
    assert refused is not None, f"{name}: accepted"
    assert seconds < 0.5, f"{name}: {seconds:.2f} s to refuse: {refused}"
    assert len(str(refused)) < 400


def test_millions_of_token_ids_are_cut_before_they_are_parsed():
    body = b'{"model": "m", "input": [' + b"1," * (4 * MIB) + b'1], "pad": [' + b"2," * MIB + b"2]}"
    seconds, refused = parse_seconds(body)
    assert refused is None
    assert seconds < 0.5, f"{seconds:.2f} s"
    assert parse_embeddings_request(body, max_inputs=2048, max_tokens=256).inputs == [[1] * 257]


def test_the_largest_honest_bodies_still_parse():
    # 2,048 token-id lists of 300 ids (cut to 257) and 2,048 strings of code with brackets and escapes
    ids = orjson.dumps({"model": "m", "input": [list(range(300))] * 2048})
    request = parse_embeddings_request(ids, max_inputs=2048, max_tokens=256)
    assert len(request.inputs) == 2048 and all(len(x) == 257 for x in request.inputs)
    code = 'x = [a[0], {"k": "\\\\"}]  # ' * 150
    texts = orjson.dumps({"model": "m", "input": [code] * 2048, "user": "u", "extra": {"a": [1.5, 2]}})
    assert len(texts) > 8 * MIB // 2
    assert parse_embeddings_request(texts, max_inputs=2048, max_tokens=256).inputs[5] == code


@pytest.mark.parametrize(
    "field",
    [{"encoding_format": "x" * 100_000}, {"input_type": "y" * 100_000}, {"dimensions": "9" * 100_000}],
)
def test_an_error_echoes_only_a_short_prefix_of_what_was_sent(field):
    with pytest.raises(InvalidInput) as refused:
        parse_embeddings_request(orjson.dumps({"model": "m", "input": "x", **field}), max_inputs=2048)
    assert len(str(refused.value)) < 300


def test_an_unknown_model_name_is_echoed_short():
    with start(FakeEngines(), EMBEDSTACK_MAX_BODY_BYTES=str(MIB)) as client:
        answer = client.post("/v1/embeddings", json={"model": "m" * 500_000, "input": "x"}, headers=AUTH)
        assert answer.status_code == 404
        assert len(answer.json()["error"]["message"]) < 300
