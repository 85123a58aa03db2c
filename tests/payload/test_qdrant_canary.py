"""The health check's Qdrant canary against a Qdrant stand-in.

No Qdrant binary can run on this machine, so this is a STAND-IN: a small HTTP server on loopback
that follows the documented Qdrant REST schema for the five calls the canary makes
(GET /readyz; PUT /collections/{name}; PUT /collections/{name}/points?wait=true;
GET /collections/{name}/points/{id}; DELETE /collections/{name}), including the `api-key` header
check and its 401. It returns only what the request itself determines; it is not product code.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import ClassVar

import pytest

KEY = "canary-test-key-0123456789"


class QdrantStandIn(BaseHTTPRequestHandler):
    collections: ClassVar[dict[str, dict]] = {}

    def log_message(self, *args) -> None:
        pass

    def answer(self, status: int, result) -> None:
        body = json.dumps({"result": result, "status": "ok", "time": 0.0001}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def authorised(self) -> bool:
        if self.headers.get("api-key") == KEY:
            return True
        body = b"Must provide an API key or an Authorization bearer token"
        self.send_response(401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return False

    def body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

    def do_GET(self) -> None:
        if self.path == "/readyz":
            self.answer(200, "all shards are ready")
            return
        if not self.authorised():
            return
        m = re.fullmatch(r"/collections/([\w-]+)/points/(\d+)", self.path)
        point = m and self.collections.get(m.group(1), {}).get(int(m.group(2)))
        self.answer(200, point) if point else self.answer(404, None)

    def do_PUT(self) -> None:
        if not self.authorised():
            return
        body = self.body()
        if m := re.fullmatch(r"/collections/([\w-]+)", self.path):
            if body.get("vectors", {}).get("distance") not in ("Cosine", "Dot", "Euclid", "Manhattan"):
                self.answer(400, None)
                return
            self.collections[m.group(1)] = {}
            self.answer(200, True)
        elif m := re.fullmatch(r"/collections/([\w-]+)/points\?wait=true", self.path):
            for p in body["points"]:
                self.collections[m.group(1)][p["id"]] = p
            self.answer(200, {"operation_id": 0, "status": "completed"})
        else:
            self.answer(404, None)

    def do_DELETE(self) -> None:
        if not self.authorised():
            return
        name = self.path.removeprefix("/collections/")
        self.answer(200, self.collections.pop(name, None) is not None)


@pytest.fixture
def qdrant():
    QdrantStandIn.collections = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), QdrantStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def run_checks(params: dict) -> dict[str, dict]:
    script = f"PARAMS = {params!r}\n" + resources.files("embedstack").joinpath("remote_checks.py").read_text()
    proc = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=60, check=True)
    return {row["check"]: row for row in json.loads(proc.stdout)}


def params(port: int, key: str) -> dict:
    return {"units": [], "qdrant": {"port": port, "scheme": "http", "api_key": key, "installed": True}}


def test_canary_writes_reads_and_deletes_a_scratch_collection(qdrant):
    rows = run_checks(params(qdrant, KEY))
    assert rows["qdrant /readyz"]["ok"]
    assert rows["qdrant canary"]["ok"], rows["qdrant canary"]
    assert QdrantStandIn.collections == {}  # nothing left behind


def test_canary_fails_on_a_wrong_key_and_names_the_step(qdrant):
    rows = run_checks(params(qdrant, "wrong-key"))
    assert rows["qdrant /readyz"]["ok"]  # health routes need no key
    assert not rows["qdrant canary"]["ok"]
    assert rows["qdrant canary"]["detail"].startswith("create: HTTP 401")
