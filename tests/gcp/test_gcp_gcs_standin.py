"""The Cloud Storage stand-in follows the documented JSON API: alt=media, Bearer tokens from the
metadata server, URL-encoded object names, Google's error shapes."""

from __future__ import annotations

import base64
import hashlib
import urllib.parse

import httpx

GOOGLE = {"Metadata-Flavor": "Google"}


def token(metadata) -> str:
    url = metadata.url + "/computeMetadata/v1/instance/service-accounts/default/token"
    return httpx.get(url, headers=GOOGLE).json()["access_token"]


def object_url(gcs, bucket: str, name: str) -> str:
    return f"{gcs.url}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}"


def assert_google_error(response: httpx.Response, code: int, reason: str) -> None:
    assert response.status_code == code
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert error["errors"][0]["reason"] == reason and error["errors"][0]["domain"] == "global"


def test_alt_media_returns_the_bytes_with_a_metadata_token(metadata, gcs):
    data = b"\x1f\x8b bundle bytes"
    gcs.put_object("es-bundles", "bundles/bundle-abc.tar.gz", data)
    headers = {"Authorization": f"Bearer {token(metadata)}"}
    response = httpx.get(
        object_url(gcs, "es-bundles", "bundles/bundle-abc.tar.gz"), params={"alt": "media"}, headers=headers
    )
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["x-goog-hash"] == "md5=" + base64.b64encode(hashlib.md5(data).digest()).decode()
    assert gcs.downloads == ["bundles/bundle-abc.tar.gz"]


def test_without_alt_media_the_object_resource_is_returned(metadata, gcs):
    gcs.put_object("es-bundles", "bundles/b.tar.gz", b"12345")
    headers = {"Authorization": f"Bearer {token(metadata)}"}
    resource = httpx.get(object_url(gcs, "es-bundles", "bundles/b.tar.gz"), headers=headers).json()
    assert resource["kind"] == "storage#object"
    assert resource["name"] == "bundles/b.tar.gz" and resource["bucket"] == "es-bundles"
    assert resource["size"] == "5"
    media = httpx.get(resource["mediaLink"], headers=headers)
    assert media.content == b"12345"


def test_credentials_are_required_and_checked(metadata, gcs):
    gcs.put_object("es-bundles", "o", b"x")
    url = object_url(gcs, "es-bundles", "o")
    assert_google_error(httpx.get(url, params={"alt": "media"}), 401, "required")
    forged = httpx.get(url, params={"alt": "media"}, headers={"Authorization": "Bearer ya29.forged"})
    assert_google_error(forged, 401, "authError")
    assert forged.headers["WWW-Authenticate"].startswith("Bearer")


def test_missing_bucket_object_and_unencoded_names_are_404(metadata, gcs):
    gcs.put_object("es-bundles", "dir/o.tar.gz", b"x")
    headers = {"Authorization": f"Bearer {token(metadata)}"}
    assert_google_error(httpx.get(object_url(gcs, "nope", "o"), headers=headers), 404, "notFound")
    missing = httpx.get(object_url(gcs, "es-bundles", "dir/other"), params={"alt": "media"}, headers=headers)
    assert_google_error(missing, 404, "notFound")
    assert missing.json()["error"]["message"] == "No such object: es-bundles/dir/other"
    unencoded = httpx.get(f"{gcs.url}/storage/v1/b/es-bundles/o/dir/o.tar.gz", params={"alt": "media"}, headers=headers)
    assert unencoded.status_code == 404


def test_a_bucket_the_service_account_may_not_read_is_403(metadata, gcs):
    gcs.readable_buckets = {"es-bundles"}
    gcs.put_object("someone-else", "o", b"x")
    headers = {"Authorization": f"Bearer {token(metadata)}"}
    assert_google_error(httpx.get(object_url(gcs, "someone-else", "o"), headers=headers), 403, "forbidden")
