"""Settings and models-file validation: every mistake names the variable and what is allowed."""

from __future__ import annotations

import pytest
from embedstack.config import load_models, load_settings
from embedstack.errors import ConfigError

pytestmark = pytest.mark.fast


def write(tmp_path, text: str):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_defaults_serve_the_bundled_model_with_roo_alias():
    settings = load_settings(env={})
    (model,) = settings.models
    assert model.id == "all-minilm-l6-v2"
    assert "sentence-transformers/all-MiniLM-L6-v2" in model.aliases
    assert (model.dimension, model.max_tokens, model.pooling) == (384, 256, "mean")
    assert (settings.host, settings.port, settings.max_inputs_per_request) == ("127.0.0.1", 8080, 2048)
    assert settings.api_keys == frozenset()


def test_env_and_flags_layer_in_order(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# rotated 2026-11\nalpha\n\n  beta  \n")
    env = {"EMBEDSTACK_PORT": "9000", "EMBEDSTACK_API_KEYS": "gamma, ", "EMBEDSTACK_TRUNCATE": "no"}
    settings = load_settings({"port": 9100, "api_keys_file": keys}, env=env)
    assert settings.port == 9100
    assert settings.truncate is False
    assert settings.api_keys == {"alpha", "beta", "gamma"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: []", "non-empty 'models:' list"),
        ("models:\n  - id: m\n    dimension: 8\n", "'max_tokens' is required"),
        (
            "models:\n  - {id: m, dimension: 8, max_tokens: 8, source: x, pooling: max}",
            "'pooling' must be one of mean, cls, last",
        ),
        ("models:\n  - {id: m, dimension: 8, max_tokens: 8, engine: tei}", "'engine' must be one of local, upstream"),
        ("models:\n  - {id: m, dimension: 0, max_tokens: 8, source: x}", "'dimension' must be a positive integer"),
        ("models:\n  - {id: m, dimension: 8, max_tokens: 8, source: x, colour: red}", "unknown keys ['colour']"),
        ("models:\n  - {id: m, dimension: 8, max_tokens: 8, engine: upstream}", "at least one entry in 'upstreams'"),
        (
            "models:\n  - {id: m, dimension: 8, max_tokens: 8, engine: upstream, upstreams: [ftp://x]}",
            "upstreams[0]: needs 'url'",
        ),
        (
            "models:\n  - {id: a, dimension: 8, max_tokens: 8, source: x}\n"
            "  - {id: b, aliases: [a], dimension: 8, max_tokens: 8, source: x}",
            "name 'a' is used by both 'a' and 'b'",
        ),
        ("models: [", "not valid YAML"),
    ],
)
def test_bad_models_file_names_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError) as exc:
        load_models(write(tmp_path, text))
    assert message in exc.value.message


def test_upstream_key_comes_from_the_environment(tmp_path, monkeypatch):
    upstream = "{url: 'http://127.0.0.1:8001', api_key_env: VLLM_KEY}"
    text = f"models:\n  - {{id: m, dimension: 8, max_tokens: 8, engine: upstream, upstreams: [{upstream}]}}"
    with pytest.raises(ConfigError, match="VLLM_KEY is not set"):
        load_models(write(tmp_path, text))
    monkeypatch.setenv("VLLM_KEY", "s3cret")
    (model,) = load_models(write(tmp_path, text))
    assert model.upstreams[0].api_key == "s3cret"
    monkeypatch.setenv("VLLM_KEY", "")  # the role writes VLLM_API_KEY= for a vLLM that takes no key
    (model,) = load_models(write(tmp_path, text))
    assert model.upstreams[0].api_key is None


def test_missing_files_are_reported_by_path(tmp_path):
    with pytest.raises(ConfigError, match="cannot read models file"):
        load_models(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="cannot read API keys file"):
        load_settings({"api_keys_file": tmp_path / "absent"}, env={})


def test_tls_needs_a_readable_certificate_and_its_own_key(tmp_path):
    from standins.base import self_signed_certificate

    cert, key, other_cert, other_key = (tmp_path / n for n in ("c.pem", "k.pem", "oc.pem", "ok.pem"))
    self_signed_certificate(cert, key, "gateway")
    self_signed_certificate(other_cert, other_key, "another")
    settings = load_settings({"tls_cert": cert, "tls_key": key}, env={})
    assert (settings.tls_cert, settings.tls_key) == (cert, key)
    with pytest.raises(ConfigError, match="EMBEDSTACK_TLS_CERT and EMBEDSTACK_TLS_KEY go together"):
        load_settings({}, env={"EMBEDSTACK_TLS_CERT": str(cert)})
    with pytest.raises(ConfigError, match=f"cannot read EMBEDSTACK_TLS_KEY {tmp_path}/absent.pem"):
        load_settings({"tls_cert": cert, "tls_key": tmp_path / "absent.pem"}, env={})
    with pytest.raises(ConfigError, match="are not a PEM certificate and its private key"):
        load_settings({"tls_cert": cert, "tls_key": other_key}, env={})
