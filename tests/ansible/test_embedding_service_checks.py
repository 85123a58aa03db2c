"""embedding_service refuses keys and exposures a careful operator would not deploy, and keeps vLLM's
secrets file away from the gateway; each case through the role's own preflight and templates."""

from __future__ import annotations

import json

import pytest
from ansible_play import ROLES, assert_outcome, render_task, run_cases, run_play

ROLE = ROLES / "embedding_service"
KEY = "gateway-key-0123456789abcdef"
PREFLIGHT = {"name": "embedding_service", "tasks_from": "preflight.yml"}
CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"
# Each case's variables, and what the refusal must say (nothing: the preflight must accept it).
CASES = {
    "short_key": ({"embedding_service_api_keys": [KEY, "short-key"]}, ("shorter than 16 characters",)),
    "open_on_the_network": (
        {"embedding_service_api_keys": [], "embedding_service_host": "0.0.0.0"},
        ("embedding_service_api_keys is empty", "0.0.0.0", "embedding_service_allow_open"),
    ),
    "open_on_loopback": ({"embedding_service_api_keys": [], "embedding_service_host": "127.0.0.1"}, ()),
    "open_when_asked": ({"embedding_service_api_keys": [], "embedding_service_allow_open": True}, ()),
    "long_keys": ({"embedding_service_api_keys": [KEY]}, ()),
    "horizon_not_a_number": (
        {"embedding_service_api_keys": [KEY], "embedding_service_max_queue_seconds": "soon"},
        ("embedding_service_max_queue_seconds",),
    ),
    "horizon_negative": (
        {"embedding_service_api_keys": [KEY], "embedding_service_max_queue_seconds": -5},
        ("0 or more",),
    ),
    "hold_not_a_number": (
        {"embedding_service_api_keys": [KEY], "embedding_service_max_hold_seconds": "long"},
        ("embedding_service_max_hold_seconds", "0 or more"),
    ),
    "horizon_set": ({"embedding_service_api_keys": [KEY], "embedding_service_max_queue_seconds": 12.5}, ()),
    "cache_size_negative": (
        {"embedding_service_api_keys": [KEY], "embedding_service_cache_bytes": -1},
        ("embedding_service_cache_bytes", "0 or"),
    ),
    "disk_cache_too_small": (
        {"embedding_service_api_keys": [KEY], "embedding_service_cache_disk_bytes": 1000},
        ("1048576 (1 MiB) or more",),
    ),
    "cache_off": (
        {
            "embedding_service_api_keys": [KEY],
            "embedding_service_cache_bytes": 0,
            "embedding_service_cache_disk_bytes": 0,
        },
        (),
    ),
    "tls_cert_without_key": (
        {"embedding_service_api_keys": [KEY], "embedding_service_tls_cert": CERT},
        ("embedding_service_tls_cert and embedding_service_tls_key go together",),
    ),
    "tls_key_not_pem": (
        {"embedding_service_api_keys": [KEY], "embedding_service_tls_cert": CERT, "embedding_service_tls_key": "k"},
        ("PEM private key",),
    ),
    "tls_pair": (
        {"embedding_service_api_keys": [KEY], "embedding_service_tls_cert": CERT, "embedding_service_tls_key": PEM_KEY},
        (),
    ),
    "memory_max_not_systemd": (
        {"embedding_service_api_keys": [KEY], "embedding_service_memory_max": "3 GB"},
        ("embedding_service_memory_max", "infinity"),
    ),
    "memory_max_set": ({"embedding_service_api_keys": [KEY], "embedding_service_memory_max": "6G"}, ()),
    "connections_below_requests": (
        {"embedding_service_api_keys": [KEY], "embedding_service_max_connections": 64},
        ("embedding_service_max_connections (64)", "embedding_service_max_concurrent_requests (128)"),
    ),
    "per_client_above_all": (
        {"embedding_service_api_keys": [KEY], "embedding_service_max_connections_per_client": 5000},
        ("embedding_service_max_connections_per_client (5000)",),
    ),
    "connections_set": (
        {
            "embedding_service_api_keys": [KEY],
            "embedding_service_max_connections": 4096,
            "embedding_service_max_connections_per_client": 64,
        },
        (),
    ),
    "cache_on_disk_not_a_boolean": (
        {"embedding_service_api_keys": [KEY], "embedding_service_cache_on_disk": "maybe"},
        ("embedding_service_cache_on_disk",),
    ),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cases = {name: {"include": PREFLIGHT, "vars": variables} for name, (variables, _) in CASES.items()}
    found, _ = run_cases(cases, tmp_path_factory.mktemp("embedding-service-checks"))
    return found


@pytest.mark.parametrize("case", list(CASES))
def test_the_preflight_refuses_what_it_should_and_only_that(outcomes: dict[str, str], case: str) -> None:
    assert_outcome(outcomes, case, CASES[case][1])
    assert "short-key" not in outcomes[case]  # a key never appears in a message
    assert "MIIE" not in outcomes[case]


def test_with_a_certificate_the_gateway_is_told_to_serve_https(tmp_path) -> None:
    variables = {"embedding_service_tls_cert": CERT, "embedding_service_tls_key": PEM_KEY}
    task = render_task(ROLE / "templates" / "gateway.env.j2", tmp_path / "gateway.env", variables)
    play = {"hosts": "localhost", "gather_facts": False, "vars_files": [str(ROLE / "defaults" / "main.yml")]}
    run_play([{**play, "tasks": [task]}], tmp_path)
    env = (tmp_path / "gateway.env").read_text().splitlines()
    assert "EMBEDSTACK_TLS_CERT=/etc/embedstack/tls-cert.pem" in env
    assert "EMBEDSTACK_TLS_KEY=/etc/embedstack/tls-key.pem" in env


def test_the_gateway_gets_vllms_key_but_not_its_env_file(tmp_path) -> None:
    variables = {"embedding_service_engine": "upstream", "vllm_api_key": "vllm-key-0123456789abcdef"}
    tasks = [
        render_task(ROLE / "templates" / name, tmp_path / name, variables)
        for name in ("gateway.env.j2", "embedstack-gateway.service.j2")
    ]
    play = {"hosts": "localhost", "gather_facts": False, "vars_files": [str(ROLE / "defaults" / "main.yml")]}
    run_play([{**play, "tasks": tasks}], tmp_path)
    assert "VLLM_API_KEY=vllm-key-0123456789abcdef" in (tmp_path / "gateway.env.j2").read_text().splitlines()
    unit = (tmp_path / "embedstack-gateway.service.j2").read_text()
    assert "/etc/vllm" not in unit
    assert "After=network-online.target vllm.service" in unit


@pytest.mark.parametrize(
    ("vllm_vars", "weights"),
    [
        ({}, "Qwen/Qwen3-Embedding-0.6B@97b0c614be4d77ee51c0cef4e5f07c00f9eb65b3"),
        ({"vllm_model": "/opt/models/all-minilm-l6-v2", "vllm_model_revision": ""}, ""),
    ],
    ids=["pinned_revision", "local_path"],
)
def test_the_upstream_model_names_vllms_weights_only_when_pinned(tmp_path, vllm_vars, weights) -> None:
    """Named weights turn the gateway's cache on for vLLM's answers; an unpinned path must not."""
    defaults = [str(ROLES / role / "defaults" / "main.yml") for role in ("vllm", "embedding_service")]
    task = {
        "name": "Write the upstream model entry",
        "ansible.builtin.copy": {
            "content": "{{ embedding_service_upstream_model | to_json }}",
            "dest": str(tmp_path / "m"),
        },
        "vars": vllm_vars,  # task vars rank above the roles' defaults
    }
    play = {"hosts": "localhost", "gather_facts": False, "vars_files": defaults, "tasks": [task]}
    run_play([play], tmp_path)
    assert json.loads((tmp_path / "m").read_text())["weights"] == weights
