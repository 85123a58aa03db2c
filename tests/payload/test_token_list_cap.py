"""Token-id lists longer than any served model takes are cut in the raw body, before they become
Python objects, and nothing else in the body changes: strings (which may hold numeric literals,
quotes and backslashes) stay byte for byte."""

from __future__ import annotations

import orjson
import pytest
from embedstack.api.json_bounds import cut_int_arrays
from hypothesis import given, settings
from hypothesis import strategies as st
from test_app_in_process import AUTH, MODEL, start

pytestmark = pytest.mark.fast

KEEP = 5


def cut_lists(doc, keep: int):
    """What cut_int_arrays must be equivalent to, on the parsed document."""
    if isinstance(doc, list):
        if len(doc) > keep and all(type(x) is int for x in doc):
            return doc[:keep]
        return [cut_lists(x, keep) for x in doc]
    if isinstance(doc, dict):
        return {k: cut_lists(v, keep) for k, v in doc.items()}
    return doc


ints = st.integers(min_value=-(2**40), max_value=2**40)
# Strings built from the characters that could fool a byte scanner, and long integer lists as text.
list_literal = st.lists(ints, min_size=KEEP + 1, max_size=12).map(lambda xs: "[" + ",".join(map(str, xs)) + "]")
tricky_text = st.builds(
    lambda *parts: "".join(parts),
    st.text(alphabet='[]0123456789,-" \\\nab', max_size=20),
    st.one_of(st.just(""), list_literal),
    st.text(alphabet='"\\] ', max_size=4),
)
documents = st.recursive(
    st.one_of(tricky_text, ints, st.booleans(), st.none()),
    lambda inner: st.one_of(
        st.lists(ints, max_size=12), st.lists(inner, max_size=4), st.dictionaries(tricky_text, inner, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(documents, st.sampled_from([None, 0, 2]))
def test_the_cut_body_parses_to_the_document_with_long_int_lists_cut(doc, indent):
    body = orjson.dumps(doc, option=orjson.OPT_INDENT_2 if indent else 0)
    assert orjson.loads(cut_int_arrays(body, KEEP)[0]) == cut_lists(doc, KEEP)


def test_a_numeric_literal_inside_a_string_is_left_whole():
    code = 'TABLE = "\\\\" + "[' + ", ".join(map(str, range(40))) + ']"'
    body = orjson.dumps({"input": [code, list(range(40))]})
    assert orjson.loads(cut_int_arrays(body, KEEP)[0])["input"] == [code, [0, 1, 2, 3, 4]]


def test_a_list_longer_than_any_model_takes_is_truncated_or_named():
    from fake_engine import FakeEngines

    ids = list(range(1, 200_001))  # 1.3 MB of ids: parsed on a worker thread, cut to 257 first
    with start(FakeEngines(), EMBEDSTACK_MAX_BODY_BYTES=str(8 << 20)) as client:
        answer = client.post("/v1/embeddings", json={"model": MODEL, "input": ids}, headers=AUTH)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["prompt_tokens"] == 256
    with start(FakeEngines(), EMBEDSTACK_MAX_BODY_BYTES=str(8 << 20), EMBEDSTACK_TRUNCATE="false") as client:
        refused = client.post("/v1/embeddings", json={"model": MODEL, "input": ["ok", ids]}, headers=AUTH)
        assert refused.status_code == 400
        assert refused.json()["error"]["message"].startswith("input[1] has more than 256 tokens")
