"""embedding_service's tenant options (issue 21): the cache kept per tenant and /metrics behind a key reach the
gateway's environment, and the preflight refuses a keyed /metrics that no key could open."""

from __future__ import annotations

import pytest
from ansible_play import ROLES, assert_outcome, render_task, run_cases, run_play

ROLE = ROLES / "embedding_service"
KEY = "gateway-key-0123456789abcdef"
METRICS_KEY = "metrics-key-0123456789abcdef"
PREFLIGHT = {"name": "embedding_service", "tasks_from": "preflight.yml"}
CASES = {
    "metrics_key_without_keys": (
        {"embedding_service_api_keys": [KEY], "embedding_service_metrics_auth": "metrics-key"},
        ("embedding_service_metrics_auth is metrics-key", "embedding_service_metrics_keys"),
    ),
    "api_key_on_an_open_gateway": (
        {
            "embedding_service_api_keys": [],
            "embedding_service_allow_open": True,
            "embedding_service_metrics_auth": "api-key",
        },
        ("embedding_service_metrics_keys (ansible-vault) or embedding_service_api_keys",),
    ),
    "short_metrics_key": (
        {"embedding_service_api_keys": [KEY], "embedding_service_metrics_keys": ["short-mkey"]},
        ("embedding_service_metrics_keys holds a key shorter than 16 characters",),
    ),
    "metrics_behind_the_api_keys": (
        {"embedding_service_api_keys": [KEY], "embedding_service_metrics_auth": "api-key"},
        (),
    ),
    "metrics_behind_their_own_key": (
        {
            "embedding_service_api_keys": [KEY],
            "embedding_service_metrics_auth": "metrics-key",
            "embedding_service_metrics_keys": [METRICS_KEY],
        },
        (),
    ),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cases = {name: {"include": PREFLIGHT, "vars": variables} for name, (variables, _) in CASES.items()}
    found, _ = run_cases(cases, tmp_path_factory.mktemp("embedding-service-tenants"))
    return found


@pytest.mark.parametrize("case", list(CASES))
def test_the_preflight_refuses_a_keyed_metrics_no_key_opens(outcomes: dict[str, str], case: str) -> None:
    assert_outcome(outcomes, case, CASES[case][1])
    assert "short-mkey" not in outcomes[case]  # a key never appears in a message


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, ["EMBEDSTACK_CACHE_PER_TENANT=false", "EMBEDSTACK_METRICS_AUTH=open"]),
        (
            {"embedding_service_cache_per_tenant": True, "embedding_service_metrics_auth": "metrics-key"},
            ["EMBEDSTACK_CACHE_PER_TENANT=true", "EMBEDSTACK_METRICS_AUTH=metrics-key"],
        ),
    ],
    ids=["defaults", "tenants"],
)
def test_the_gateway_is_told_the_tenant_options(tmp_path, variables, expected) -> None:
    task = render_task(ROLE / "templates" / "gateway.env.j2", tmp_path / "gateway.env", variables)
    play = {"hosts": "localhost", "gather_facts": False, "vars_files": [str(ROLE / "defaults" / "main.yml")]}
    run_play([{**play, "tasks": [task]}], tmp_path)
    env = (tmp_path / "gateway.env").read_text().splitlines()
    for line in [*expected, "EMBEDSTACK_METRICS_KEYS_FILE=/etc/embedstack/metrics-keys"]:
        assert line in env
