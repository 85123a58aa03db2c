"""The GCE metadata stand-in behaves as Google documents the metadata server (what the bootstrap
and the preemption watcher rely on)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from standins.gce_metadata import GceMetadataStandin

GOOGLE = {"Metadata-Flavor": "Google"}
V1 = "/computeMetadata/v1/"


def get(standin: GceMetadataStandin, path: str, headers: dict | None = None, **params) -> httpx.Response:
    return httpx.get(standin.url + V1 + path, headers=GOOGLE if headers is None else headers, params=params, timeout=10)


def test_requests_without_the_flavor_header_or_with_x_forwarded_for_are_refused(metadata):
    metadata.set_attribute("embedstack-tier", "embedding")
    assert get(metadata, "instance/attributes/embedstack-tier", headers={}).status_code == 403
    wrong = get(metadata, "instance/attributes/embedstack-tier", headers={"Metadata-Flavor": "google-ish"})
    assert wrong.status_code == 403
    assert "Missing Metadata-Flavor:Google header" in wrong.text
    forwarded = get(metadata, "instance/attributes/embedstack-tier", headers={**GOOGLE, "X-Forwarded-For": "10.0.0.1"})
    assert forwarded.status_code == 403
    ok = get(metadata, "instance/attributes/embedstack-tier")
    assert ok.status_code == 200
    assert ok.text == "embedding"
    assert ok.headers["Metadata-Flavor"] == "Google"
    assert ok.headers["ETag"]
    assert forwarded.headers["Metadata-Flavor"] == "Google"


def test_instance_and_project_values_and_404s(metadata):
    assert get(metadata, "instance/preempted").text == "FALSE"
    assert (
        get(metadata, "instance/zone").text.startswith("projects/") and "/zones/" in get(metadata, "instance/zone").text
    )
    assert get(metadata, "instance/id").text.isdigit()
    assert get(metadata, "instance/hostname").text.endswith(".internal")
    assert get(metadata, "project/project-id").text == "embedstack-test"
    assert get(metadata, "instance/attributes/absent").status_code == 404
    assert get(metadata, "instance/no-such-thing").status_code == 404


def test_attributes_directory_listing_and_recursive_json(metadata):
    metadata.set_attribute("embedstack-bundle", "gs://b/o.tar.gz")
    metadata.set_attribute("embedstack-secrets", '{"qdrant_api_key": "k"}')
    listing = get(metadata, "instance/attributes/")
    assert listing.text.splitlines() == ["embedstack-bundle", "embedstack-secrets"]
    as_json = get(metadata, "instance/attributes/", recursive="true", alt="json")
    assert as_json.headers["Content-Type"] == "application/json"
    assert as_json.json() == {"embedstack-bundle": "gs://b/o.tar.gz", "embedstack-secrets": '{"qdrant_api_key": "k"}'}
    redirect = httpx.get(metadata.url + V1 + "instance/attributes", headers=GOOGLE)
    assert redirect.status_code == 301


def test_token_has_the_documented_shape(metadata):
    token = get(metadata, "instance/service-accounts/default/token").json()
    assert set(token) == {"access_token", "expires_in", "token_type"}
    assert token["token_type"] == "Bearer" and token["expires_in"] > 0
    assert metadata.token_valid(token["access_token"])
    assert not metadata.token_valid("ya29.forged")


def test_wait_for_change_blocks_until_preempted_flips(metadata):
    first = get(metadata, "instance/preempted")
    threading.Timer(0.6, metadata.preempt).start()
    started = time.monotonic()
    changed = get(metadata, "instance/preempted", wait_for_change="true", last_etag=first.headers["ETag"])
    assert time.monotonic() - started >= 0.5
    assert changed.text == "TRUE"
    assert changed.headers["ETag"] != first.headers["ETag"]


def test_wait_for_change_with_a_stale_etag_answers_at_once(metadata):
    stale = get(metadata, "instance/preempted").headers["ETag"]
    metadata.preempt()
    started = time.monotonic()
    now = get(metadata, "instance/preempted", wait_for_change="true", last_etag=stale, timeout_sec="30")
    assert time.monotonic() - started < 1
    assert now.text == "TRUE"


def test_wait_for_change_returns_the_current_value_after_timeout_sec(metadata):
    etag = get(metadata, "instance/preempted").headers["ETag"]
    started = time.monotonic()
    same = get(metadata, "instance/preempted", wait_for_change="true", last_etag=etag, timeout_sec="1")
    assert 0.9 <= time.monotonic() - started < 3
    assert same.text == "FALSE" and same.headers["ETag"] == etag


def test_control_port_flips_preempted_and_injects_failures(metadata):
    assert httpx.post(metadata.control_url + "/preempt").status_code == 200
    assert get(metadata, "instance/preempted").text == "TRUE"
    httpx.post(metadata.control_url + "/fail", params={"count": 2, "status": 500})
    assert [get(metadata, "instance/preempted").status_code for _ in range(3)] == [500, 500, 200]
    httpx.post(metadata.control_url + "/attributes/embedstack-tier", content="index")
    assert get(metadata, "instance/attributes/embedstack-tier").text == "index"
    # The control API is not reachable through the metadata port.
    assert httpx.post(metadata.url + "/preempt").status_code == 405


@pytest.mark.timeout(20)
def test_close_releases_a_hanging_wait():
    standin = GceMetadataStandin().start()
    etag = get(standin, "instance/preempted").headers["ETag"]
    results: list[int] = []

    def wait() -> None:
        try:
            results.append(get(standin, "instance/preempted", wait_for_change="true", last_etag=etag).status_code)
        except httpx.HTTPError:
            results.append(-1)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    standin.close()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 5


def test_guest_attributes_need_enabling_then_round_trip(metadata):
    """Google's "Set and query guest attributes": PUT/GET/DELETE instance/guest-attributes/<ns>/<key> from the VM,
    403 while enable-guest-attributes is not TRUE in the instance metadata."""
    url = metadata.url + V1 + "instance/guest-attributes/embedstack/boot-failure"
    refused = httpx.put(url, content="driver", headers=GOOGLE)
    assert refused.status_code == 403 and "Guest attributes endpoint access is disabled" in refused.text
    metadata.set_attribute("enable-guest-attributes", "TRUE")
    assert httpx.put(url, content="driver did not load", headers={}).status_code == 403  # the flavor header
    assert httpx.get(url, headers=GOOGLE).status_code == 404
    assert httpx.put(url, content="driver did not load", headers=GOOGLE).status_code == 200
    assert httpx.get(url, headers=GOOGLE).text == "driver did not load"
    assert metadata.guest_attributes == {"embedstack/boot-failure": "driver did not load"}
    assert httpx.delete(url, headers=GOOGLE).status_code == 200 and metadata.guest_attributes == {}
