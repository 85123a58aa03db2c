"""Stand-ins for the parts of Qdrant's REST API that embedstack calls, for tests only.

They are NOT Qdrant: no Qdrant binary can run on the test machine. Their behaviour follows qdrant/qdrant at tag
v1.19.0, the release the qdrant role pins (roles/qdrant/defaults/main.yml `qdrant_version`):

- Answers are `{"result": ..., "status": "ok", "time": <seconds>}`; an error is `{"status": {"error": ...}, "time"}`
  (`ApiResponse`/`ApiStatus` in lib/api/src/rest/models.rs, built in src/actix/helpers.rs).
- Authentication (src/actix/auth.rs, src/common/auth/mod.rs `validate_request`): the key comes from the `api-key`
  header, else from `Authorization: Bearer <key>`. No key at all is a 401 with the plain-text body "Must provide an
  API key or an Authorization bearer token"; a wrong key (no JWT configured) a 401 "Invalid API key or JWT". Both are
  `HttpResponse::Unauthorized().body(...)`: plain text, not JSON.
- `/`, `/healthz`, `/readyz` and `/livez` need no key (the whitelist in src/actix/mod.rs). `/readyz` answers 200 with
  the plain text "all shards are ready", `/healthz` and `/livez` "healthz check passed" (src/actix/api/service_api.rs).
- TLS (`service.enable_tls` with `tls.cert`/`tls.key`, config/config.yaml) serves HTTPS only, on the same ports.

- `QdrantSnapshotStandin`: the full-storage snapshots the qdrant_snapshots role's upload script
  uses (src/actix/api/snapshot_api.rs: `create_full_snapshot`, `list_full_snapshots`, `get_full_snapshot`,
  `delete_full_snapshot`):

    POST   /snapshots          → {"result": {"name", "creation_time", "size"}, "status": "ok", "time"}
    GET    /snapshots          → {"result": [{"name", "size"}, ...], ...}
    GET    /snapshots/<name>   → the snapshot's bytes (application/octet-stream)
    DELETE /snapshots/<name>   → {"result": true, "status": "ok", "time"}

  An unknown snapshot is 404.

- `QdrantCollectionsStandin`: the calls of the health check's canary (GET /readyz; PUT /collections/{name};
  PUT /collections/{name}/points?wait=true; GET /collections/{name}/points/{id}; DELETE /collections/{name}). It
  returns only what the request itself determines.

Left out: JWT RBAC, the read-only key, every other route.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import threading
import time
import urllib.parse
from typing import Any

from standins.base import StandinHandler, StandinServer

# src/actix/mod.rs at v1.19.0: the routes the API key does not cover (exact, or by prefix)
OPEN_EXACT = ("/", "/healthz")
OPEN_PREFIX = ("/readyz", "/livez")


class _QdrantHandler(StandinHandler):
    def answer(self, status: int, payload: dict[str, Any]) -> None:
        self.send_json(status, {**payload, "time": self.standin.took})

    def guard(self) -> bool:
        """Qdrant's auth middleware: open routes pass; otherwise the key must match, else a plain-text 401."""
        if self.url.path in OPEN_EXACT or self.url.path.startswith(OPEN_PREFIX):
            return True
        key = self.headers.get("api-key")
        if key is None and (self.headers.get("authorization") or "").startswith("Bearer "):
            key = self.headers["authorization"].removeprefix("Bearer ")
        if key == self.standin.api_key:
            return True
        missing = "Must provide an API key or an Authorization bearer token"
        message = missing if key is None else "Invalid API key or JWT"
        self.send(401, message.encode(), "text/plain; charset=utf-8")
        return False


class _SnapshotHandler(_QdrantHandler):
    routes = (
        ("POST", "/snapshots", "create"),
        ("GET", "/snapshots", "listing"),
        ("GET", "/snapshots/(?P<name>.*)", "download"),
        ("DELETE", "/snapshots/(?P<name>.*)", "delete"),
        ("POST", "/snapshots/(?P<name>.*)", "not_allowed"),
        ("DELETE", "/snapshots", "not_allowed"),
    )

    def no_route(self) -> None:
        self.answer(404, {"status": {"error": f"Not found: {self.url.path}"}})

    def _known(self, name: str) -> str | None:
        """The snapshot's name; None once a 404 for an unknown snapshot is answered."""
        name = urllib.parse.unquote(name)
        with self.standin.lock:
            if name in self.standin.snapshots:
                return name
        self.answer(404, {"status": {"error": f"Not found: Snapshot {name} not found"}})
        return None

    def not_allowed(self, name: str | None = None) -> None:
        if name is None or self._known(name) is not None:
            self.answer(405, {"status": {"error": "Method Not Allowed"}})

    def create(self) -> None:
        name = f"full-snapshot-{time.strftime('%Y-%m-%d-%H-%M-%S')}-{secrets.token_hex(3)}.snapshot"
        data = os.urandom(self.standin.size)
        with self.standin.lock:
            self.standin.snapshots[name] = data
        result = {"name": name, "creation_time": time.strftime("%Y-%m-%dT%H:%M:%S"), "size": len(data)}
        self.answer(200, {"result": result, "status": "ok"})

    def listing(self) -> None:
        with self.standin.lock:
            listed = [{"name": n, "size": len(d)} for n, d in self.standin.snapshots.items()]
        self.answer(200, {"result": listed, "status": "ok"})

    def download(self, name: str) -> None:
        if (known := self._known(name)) is not None:
            self.send(200, self.standin.snapshots[known], "application/octet-stream")

    def delete(self, name: str) -> None:
        if (known := self._known(name)) is not None:
            with self.standin.lock:
                self.standin.deleted[known] = self.standin.snapshots.pop(known)
            self.answer(200, {"result": True, "status": "ok"})


class QdrantSnapshotStandin:
    """The snapshot API on a free loopback port; a context manager."""

    took = 0.001

    def __init__(self, api_key: str, size: int, tls: ssl.SSLContext | None = None) -> None:
        """tls: serve HTTPS with that context, as Qdrant does with `service.enable_tls` and the `tls.cert`/`tls.key`
        it names: the same port, HTTPS only (https://qdrant.tech/documentation/guides/security/, "TLS";
        qdrant/qdrant config/config.yaml, `service.enable_tls` and the `tls` section)."""
        self.api_key, self.size = api_key, size
        self.snapshots: dict[str, bytes] = {}
        self.deleted: dict[str, bytes] = {}  # name → bytes of each deleted snapshot, for the tests
        self.lock = threading.Lock()
        self.server = StandinServer(_SnapshotHandler, self, tls=tls)

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> QdrantSnapshotStandin:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()


class _CollectionsHandler(_QdrantHandler):
    protocol_version = "HTTP/1.0"  # one request a connection, as the canary's client expects nothing else
    routes = (
        ("GET", "/readyz", "readyz"),
        ("GET", "/(healthz|livez)", "healthz"),
        ("GET", r"/collections/(?P<name>[\w-]+)/points/(?P<point>\d+)", "get_point"),
        ("PUT", r"/collections/(?P<name>[\w-]+)", "create_collection"),
        ("PUT", r"/collections/(?P<name>[\w-]+)/points", "upsert_points"),
        ("DELETE", "/collections/(?P<name>.*)", "delete_collection"),
    )

    def no_route(self) -> None:
        self.answer(404, {"result": None, "status": "ok"})

    def readyz(self) -> None:
        self.send(200, b"all shards are ready", "text/plain; charset=utf-8")

    def healthz(self, *_: str) -> None:
        self.send(200, b"healthz check passed", "text/plain; charset=utf-8")

    def get_point(self, name: str, point: str) -> None:
        found = self.standin.collections.get(name, {}).get(int(point))
        self.answer(200 if found else 404, {"result": found or None, "status": "ok"})

    def create_collection(self, name: str) -> None:
        body = json.loads(self.read_body() or b"{}")
        if body.get("vectors", {}).get("distance") not in ("Cosine", "Dot", "Euclid", "Manhattan"):
            self.answer(400, {"result": None, "status": "ok"})
            return
        self.standin.collections[name] = {}
        self.answer(200, {"result": True, "status": "ok"})

    def upsert_points(self, name: str) -> None:
        body = json.loads(self.read_body() or b"{}")
        if self.url.query != "wait=true":
            self.no_route()
            return
        for p in body["points"]:
            self.standin.collections[name][p["id"]] = p
        self.answer(200, {"result": {"operation_id": 0, "status": "completed"}, "status": "ok"})

    def delete_collection(self, name: str) -> None:
        self.answer(200, {"result": self.standin.collections.pop(name, None) is not None, "status": "ok"})


class QdrantCollectionsStandin:
    """The canary's collections API on a free loopback port; a context manager."""

    took = 0.0001

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.collections: dict[str, dict[int, dict]] = {}  # name → point id → point
        self.server = StandinServer(_CollectionsHandler, self)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def __enter__(self) -> QdrantCollectionsStandin:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()
