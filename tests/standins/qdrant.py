"""Stand-ins for the parts of Qdrant's REST API that embedstack calls, for tests only.

They are NOT Qdrant: no Qdrant binary can run on the test machine. They follow Qdrant's documented
REST API (https://api.qdrant.tech/api-reference, the OpenAPI schema of qdrant/qdrant
`docs/redoc/master/openapi.json`) and its API-key check (https://qdrant.tech/documentation/guides/security/:
the `api-key` header): answers are `{"result": ..., "status": "ok", "time": <seconds>}`.

- `QdrantSnapshotStandin`: the full-storage snapshots the qdrant_snapshots role's upload script
  uses (.../snapshots/create-full-snapshot and its list, download and delete siblings):

    POST   /snapshots          → {"result": {"name", "creation_time", "size"}, "status": "ok", "time"}
    GET    /snapshots          → {"result": [{"name", "size"}, ...], ...}
    GET    /snapshots/<name>   → the snapshot's bytes (application/octet-stream)
    DELETE /snapshots/<name>   → {"result": true, "status": "ok", "time"}

  Every call needs the `api-key` header: missing or wrong, it answers 401 with
  `{"status": {"error": ...}, "time"}`; an unknown snapshot is 404.

- `QdrantCollectionsStandin`: the five calls of the health check's canary (GET /readyz;
  PUT /collections/{name}; PUT /collections/{name}/points?wait=true;
  GET /collections/{name}/points/{id}; DELETE /collections/{name}). /readyz needs no key; the
  others answer a missing or wrong key with 401 and a plain-text body. It returns only what the
  request itself determines.
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


class _QdrantHandler(StandinHandler):
    def answer(self, status: int, payload: dict[str, Any]) -> None:
        self.send_json(status, {**payload, "time": self.standin.took})


class _SnapshotHandler(_QdrantHandler):
    routes = (
        ("POST", "/snapshots", "create"),
        ("GET", "/snapshots", "listing"),
        ("GET", "/snapshots/(?P<name>.*)", "download"),
        ("DELETE", "/snapshots/(?P<name>.*)", "delete"),
        ("POST", "/snapshots/(?P<name>.*)", "not_allowed"),
        ("DELETE", "/snapshots", "not_allowed"),
    )

    def guard(self) -> bool:
        key = self.headers.get("api-key")
        if key != self.standin.api_key:
            error = "Must provide an API key or an Authorization bearer token" if key is None else "Invalid api-key"
            self.answer(401, {"status": {"error": error}})
            return False
        return True

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
        ("GET", r"/collections/(?P<name>[\w-]+)/points/(?P<point>\d+)", "get_point"),
        ("PUT", r"/collections/(?P<name>[\w-]+)", "create_collection"),
        ("PUT", r"/collections/(?P<name>[\w-]+)/points", "upsert_points"),
        ("DELETE", "/collections/(?P<name>.*)", "delete_collection"),
    )

    def guard(self) -> bool:
        if self.url.path == "/readyz" or self.headers.get("api-key") == self.standin.api_key:
            return True
        self.send(401, b"Must provide an API key or an Authorization bearer token", None)
        return False

    def no_route(self) -> None:
        self.answer(404, {"result": None, "status": "ok"})

    def readyz(self) -> None:
        self.answer(200, {"result": "all shards are ready", "status": "ok"})

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
