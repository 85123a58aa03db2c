"""A stand-in for the Cloud Storage JSON API, for tests only.

It is NOT Google's service: it follows Google's documented JSON API
(https://cloud.google.com/storage/docs/json_api/v1/objects/get and
.../storage/docs/json_api/v1/status-codes) for the one call a VM bootstrap makes, reading an
object:

  GET /storage/v1/b/<bucket>/o/<url-encoded object>?alt=media            the object's bytes
  GET /storage/v1/b/<bucket>/o/<url-encoded object>                       its metadata (storage#object)
  GET /download/storage/v1/b/<bucket>/o/<url-encoded object>?alt=media   the mediaLink form

and the one call the Qdrant snapshot upload makes (.../storage/docs/json_api/v1/objects/insert):

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
import json
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (a watcher stopped mid-wait) is normal here, not a traceback."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "UploadServer"
    sys_version = ""
    standin: GcsStandin

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _json(self, status: int, payload: object, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, indent=2).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, reason: str, **detail: str) -> None:
        error = {"message": message, "domain": "global", "reason": reason, **detail}
        extra = {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'} if status == 401 else None
        self._json(status, {"error": {"code": status, "message": message, "errors": [error]}}, extra)

    def do_GET(self) -> None:
        standin = self.standin
        with standin.lock:
            standin.requests += 1
        url = urllib.parse.urlsplit(self.path)
        raw = url.path
        if raw.startswith("/download/"):
            raw = raw[len("/download") :]
        parts = raw.split("/")
        # ['', 'storage', 'v1', 'b', <bucket>, 'o', <object>]: the object is ONE encoded segment.
        if len(parts) != 7 or parts[1:4] != ["storage", "v1", "b"] or parts[5] != "o" or not parts[6]:
            self._error(404, "Not Found", "notFound")
            return
        bucket = urllib.parse.unquote(parts[4])
        name = urllib.parse.unquote(parts[6])
        query = dict(urllib.parse.parse_qsl(url.query))

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
            self.send_response(200)
            self.send_header("Content-Type", obj.content_type)
            self.send_header("Content-Length", str(len(obj.data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(obj.data)
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

    def do_POST(self) -> None:
        """Simple (media) upload: POST /upload/storage/v1/b/<bucket>/o?uploadType=media&name=<name>
        (https://cloud.google.com/storage/docs/uploading-objects#uploading-an-object, JSON API)."""
        standin = self.standin
        with standin.lock:
            standin.requests += 1
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.split("/")
        length = self.headers.get("Content-Length")
        # The body is read first, so an error answer never leaves the client blocked mid-send.
        body = self.rfile.read(int(length)) if length and length.isdigit() else b""
        # ['', 'upload', 'storage', 'v1', 'b', <bucket>, 'o']
        if len(parts) != 7 or parts[1:5] != ["upload", "storage", "v1", "b"] or parts[6] != "o":
            self._error(405, "Method not allowed by the stand-in", "methodNotAllowed")
            return
        if length is None or not length.isdigit():
            self._error(411, "Length Required", "required", locationType="header", location="Content-Length")
            return
        bucket = urllib.parse.unquote(parts[5])
        query = dict(urllib.parse.parse_qsl(url.query))
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
                    body,
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

    def do_PUT(self) -> None:
        self._error(405, "Method not allowed by the stand-in", "methodNotAllowed")

    do_DELETE = do_PUT


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
        self.requests = 0
        self._generation = 1700000000000000
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = _QuietServer((bind, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

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
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> GcsStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
