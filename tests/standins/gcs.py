"""A stand-in for the Cloud Storage JSON API, for tests only.

It is NOT Google's service: it follows Google's documented JSON API
(https://cloud.google.com/storage/docs/json_api/v1/objects/get and
.../storage/docs/json_api/v1/status-codes) for the one call a VM bootstrap makes, reading an
object:

  GET /storage/v1/b/<bucket>/o/<url-encoded object>?alt=media            the object's bytes
  GET /storage/v1/b/<bucket>/o/<url-encoded object>                       its metadata (storage#object)
  GET /download/storage/v1/b/<bucket>/o/<url-encoded object>?alt=media   the mediaLink form

and the one call the Qdrant snapshot upload makes (.../storage/docs/json_api/v1/objects/insert,
.../storage/docs/uploading-objects "JSON API" simple upload):

  POST /upload/storage/v1/b/<bucket>/o?uploadType=media&name=<url-encoded object>
       body: the object's bytes; answers the new object's resource (storage#object)

As documented: the object name is one URL-encoded path segment (`a/b.tar.gz` is `a%2Fb.tar.gz`);
a request needs `Authorization: Bearer <token>`; errors are JSON
`{"error": {"code", "message", "errors": [{"message", "domain", "reason", ...}]}}`: 401 without
valid credentials, 403 when the caller may not read the bucket, 404 for a missing bucket or
object. Tokens are checked with a callable, normally GceMetadataStandin.token_valid, so only a
token the metadata stand-in issued works. Threaded, clean shutdown, a context manager.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from standins.base import StandinHandler, StandinServer


@dataclass
class StoredObject:
    data: bytes
    content_type: str
    generation: int
    created: float

    @property
    def md5(self) -> str:
        return base64.b64encode(hashlib.md5(self.data).digest()).decode()


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


class _Handler(StandinHandler):
    server_version = "UploadServer"
    # the object is ONE encoded path segment; the bucket may even be empty (then it does not exist)
    routes = (
        ("GET", r"(?:/download)?/storage/v1/b/(?P<bucket>[^/]*)/o/(?P<name>[^/]+)", "get_object"),
        ("POST", r"/upload/storage/v1/b/(?P<bucket>[^/]*)/o", "insert_object"),
        ("PUT", ".*", "not_allowed"),
        ("DELETE", ".*", "not_allowed"),
    )
    standin: GcsStandin

    def _json(self, status: int, payload: object, extra: dict[str, str] | None = None) -> None:
        self.send_json(status, payload, extra, "application/json; charset=UTF-8", indent=2)

    def _error(self, status: int, message: str, reason: str, **detail: str) -> None:
        error = {"message": message, "domain": "global", "reason": reason, **detail}
        extra = {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'} if status == 401 else None
        self._json(status, {"error": {"code": status, "message": message, "errors": [error]}}, extra)

    def guard(self) -> bool:
        if self.command == "POST":
            # The body is read first, so an error answer never leaves the client blocked mid-send.
            length = self.headers.get("Content-Length")
            self.body = self.rfile.read(int(length)) if length and length.isdigit() else b""
        return True

    def no_route(self) -> None:
        if self.command == "GET":
            self._error(404, "Not Found", "notFound")
        else:
            self.not_allowed()

    def not_allowed(self) -> None:
        self._error(405, "Method not allowed by the stand-in", "methodNotAllowed")

    def get_object(self, bucket: str, name: str) -> None:
        standin, query = self.standin, self.query
        bucket, name = urllib.parse.unquote(bucket), urllib.parse.unquote(name)
        if not self._authorized("storage.objects.get", bucket, standin.readable_buckets):
            return
        with standin.lock:
            objects = standin.buckets.get(bucket)
            obj = None if objects is None else objects.get(name)
        if objects is None:
            self._error(404, "The specified bucket does not exist.", "notFound")
            return
        if obj is None:
            self._error(404, f"No such object: {bucket}/{name}", "notFound")
            return
        headers = {
            "ETag": f'"{obj.md5}"' if query.get("alt") == "media" else f"CK{obj.generation}=",
            "x-goog-generation": str(obj.generation),
            "x-goog-metageneration": "1",
            "x-goog-hash": f"md5={obj.md5}",
            "x-goog-stored-content-length": str(len(obj.data)),
        }
        if query.get("alt") == "media":
            with standin.lock:
                standin.downloads.append(name)
            self.send(200, obj.data, obj.content_type, headers)
            return
        if query.get("alt", "json") != "json":
            self._error(400, f"Invalid value for alt: {query['alt']}", "invalidParameter", location="alt")
            return
        self._json(200, standin.resource(bucket, name, obj), {"ETag": headers["ETag"]})

    def _authorized(self, permission: str, bucket: str, allowed: set[str] | None) -> bool:
        """Google's 401/403 answers; True when the Bearer token is valid for `bucket`."""
        auth = self.headers.get("Authorization", "")
        if not auth:
            self._error(
                401,
                f"Anonymous caller does not have {permission} access to the Google Cloud Storage object. "
                f"Permission '{permission}' denied on resource (or it may not exist).",
                "required",
                locationType="header",
                location="Authorization",
            )
            return False
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not self.standin.token_check(token.strip()):
            self._error(401, "Invalid Credentials", "authError", locationType="header", location="Authorization")
            return False
        if allowed is not None and bucket not in allowed:
            self._error(
                403,
                f"{self.standin.service_account} does not have {permission} access to the Google Cloud Storage "
                f"object. Permission '{permission}' denied on resource (or it may not exist).",
                "forbidden",
            )
            return False
        return True

    def insert_object(self, bucket: str) -> None:
        """Simple (media) upload: POST /upload/storage/v1/b/<bucket>/o?uploadType=media&name=<name>."""
        standin, query = self.standin, self.query
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._error(411, "Length Required", "required", locationType="header", location="Content-Length")
            return
        bucket = urllib.parse.unquote(bucket)
        if query.get("uploadType") != "media":
            self._error(400, f"Invalid upload type: {query.get('uploadType')!r}", "invalidParameter")
            return
        name = query.get("name", "")
        if not name:
            self._error(400, "Required parameter: name", "required", locationType="parameter", location="name")
            return
        if not self._authorized("storage.objects.create", bucket, standin.writable_buckets):
            return
        with standin.lock:
            if bucket not in standin.buckets:
                missing = True
            else:
                missing = False
                standin._generation += 1
                obj = StoredObject(
                    self.body,
                    self.headers.get("Content-Type", "application/octet-stream"),
                    standin._generation,
                    time.time(),
                )
                standin.buckets[bucket][name] = obj
                standin.uploads.append(name)
        if missing:
            self._error(404, "The specified bucket does not exist.", "notFound")
            return
        self._json(200, standin.resource(bucket, name, obj))


class GcsStandin:
    """The storage stand-in: put_object() fills buckets, the server serves them."""

    def __init__(
        self,
        token_check: Callable[[str], bool],
        *,
        bind: str = "127.0.0.1",
        port: int = 0,
        readable_buckets: set[str] | None = None,
        writable_buckets: set[str] | None = None,
        service_account: str = "embedstack-vm@embedstack-test.iam.gserviceaccount.com",
    ):
        self.token_check = token_check
        self.readable_buckets = readable_buckets
        self.writable_buckets = writable_buckets
        self.service_account = service_account
        self.lock = threading.Lock()
        self.buckets: dict[str, dict[str, StoredObject]] = {}
        self.downloads: list[str] = []
        self.uploads: list[str] = []
        self._generation = 1700000000000000
        self._server = StandinServer(_Handler, self, bind=bind, port=port)

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def requests(self) -> int:
        """How many reads and uploads were asked for, answered or refused."""
        return sum(1 for entry in self._server.log if entry["method"] in ("GET", "POST"))

    def resource(self, bucket: str, name: str, obj: StoredObject) -> dict[str, str]:
        """The storage#object resource, as objects.get and the uploads answer it."""
        quoted_bucket, quoted_name = urllib.parse.quote(bucket, safe=""), urllib.parse.quote(name, safe="")
        return {
            "kind": "storage#object",
            "id": f"{bucket}/{name}/{obj.generation}",
            "selfLink": f"{self.url}/storage/v1/b/{quoted_bucket}/o/{quoted_name}",
            "mediaLink": f"{self.url}/download/storage/v1/b/{quoted_bucket}/o/{quoted_name}"
            f"?generation={obj.generation}&alt=media",
            "name": name,
            "bucket": bucket,
            "generation": str(obj.generation),
            "metageneration": "1",
            "contentType": obj.content_type,
            "storageClass": "STANDARD",
            "size": str(len(obj.data)),
            "md5Hash": obj.md5,
            "etag": f"CK{obj.generation}=",
            "timeCreated": _rfc3339(obj.created),
            "updated": _rfc3339(obj.created),
        }

    def create_bucket(self, bucket: str) -> None:
        with self.lock:
            self.buckets.setdefault(bucket, {})

    def put_object(self, bucket: str, name: str, data: bytes, content_type: str = "application/gzip") -> None:
        with self.lock:
            self._generation += 1
            self.buckets.setdefault(bucket, {})[name] = StoredObject(data, content_type, self._generation, time.time())

    def start(self) -> GcsStandin:
        self._server.start()
        return self

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> GcsStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
