"""A stand-in for the GCE metadata server, for tests only.

It is NOT Google's server: it follows Google's documented behaviour of the metadata server
(https://cloud.google.com/compute/docs/metadata/querying-metadata and
.../metadata/overview, "Waiting for changes"; .../instances/spot "Detect preemption") for the
paths embedstack uses:

  /computeMetadata/v1/instance/attributes/            keys, one a line; ?recursive=true&alt=json: a JSON object
  /computeMetadata/v1/instance/attributes/<key>       the value (404 when absent)
  /computeMetadata/v1/instance/preempted              FALSE, TRUE after preempt()
  /computeMetadata/v1/instance/service-accounts/default/token   {access_token, expires_in, token_type}
  /computeMetadata/v1/instance/hostname | zone | id
  /computeMetadata/v1/project/project-id

As documented: a request without `Metadata-Flavor: Google` is refused with 403, and so is one
carrying `X-Forwarded-For`; every answer carries `Metadata-Flavor: Google`; values carry an
`ETag`; `?wait_for_change=true` blocks until the value changes (with `last_etag`, it answers at
once when the current ETag differs), and `timeout_sec` bounds the wait, after which the current
value is returned; `?alt=json` returns the value as JSON.

Test control: the methods set_attribute(), preempt(), fail_next(); optionally also a control
HTTP API on a separate port (POST /preempt, POST /attributes/<key> with the value as body,
POST /fail?count=N&status=S, GET /tokens) so a process in a container can be driven from outside.
Usable as a context manager, or standalone:

  python tests/gcp/gce_metadata_standin.py --bind 10.213.0.1 --port 80 --control-port 8099 \\
      --attribute embedstack-tier=embedding --attribute-file embedstack-secrets=secrets.yml \\
      --storage-port 8091 --object gs://bucket/bundle-abc.tar.gz=bundle.tar.gz
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (a watcher stopped mid-wait) is normal here, not a traceback."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


PREFIX = "/computeMetadata/v1/"
# Google's server caps a hanging GET; so does the stand-in, to keep tests and shutdown bounded.
MAX_WAIT_SECONDS = 3600.0
TOKEN_LIFETIME = 3599


def _etag(value: str, version: int) -> str:
    return hashlib.sha256(f"{version}\0{value}".encode()).hexdigest()[:16]


class MetadataState:
    """Values, their versions (for ETags) and the condition that wakes waiting requests."""

    def __init__(self, attributes: dict[str, str], instance: dict[str, str], project_id: str):
        self.cond = threading.Condition()
        self.values: dict[str, str] = {}
        self.versions: dict[str, int] = {}
        self.attributes: set[str] = set()
        self.tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self.failures: list[int] = []  # statuses the next requests answer with
        self.closing = False
        self.requests = 0
        for key, value in instance.items():
            self._put(f"instance/{key}", value)
        self._put("project/project-id", project_id)
        self._put("instance/preempted", "FALSE")
        for key, value in attributes.items():
            self._put(f"instance/attributes/{key}", value)
            self.attributes.add(key)

    def _put(self, path: str, value: str) -> None:
        self.values[path] = value
        self.versions[path] = self.versions.get(path, 0) + 1

    def put(self, path: str, value: str) -> None:
        with self.cond:
            self._put(path, value)
            self.cond.notify_all()

    def etag(self, path: str) -> str:
        if path == "instance/attributes/":
            joined = "\0".join(f"{k}={self.values['instance/attributes/' + k]}" for k in sorted(self.attributes))
            return _etag(joined, sum(self.versions.get("instance/attributes/" + k, 0) for k in self.attributes))
        return _etag(self.values.get(path, ""), self.versions.get(path, 0))


class _Handler(BaseHTTPRequestHandler):
    server_version = "Metadata Server for VM"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    state: MetadataState

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: str, content_type: str = "application/text", etag: str | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if etag:
            self.send_header("ETag", etag)
        self.send_header("X-XSS-Protection", "0")
        self.send_header("X-Frame-Options", "SAMEORIGIN")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, text: str) -> None:
        self._send(status, f"<!DOCTYPE html>\n<html><title>Error {status}</title><p>{text}</p></html>\n", "text/html")

    def do_GET(self) -> None:
        state = self.state
        with state.cond:
            state.requests += 1
            failure = state.failures.pop(0) if state.failures else None
        if failure is not None:
            self._error(failure, "Injected failure (stand-in test control).")
            return
        if self.headers.get("X-Forwarded-For") is not None:
            self._error(403, "Your client does not have permission to get URL from this server.")
            return
        if self.headers.get("Metadata-Flavor") != "Google":
            self._error(
                403,
                f"Your client does not have permission to get URL <code>{self.path}</code> from this server. "
                "Missing Metadata-Flavor:Google header.",
            )
            return
        url = urllib.parse.urlsplit(self.path)
        if not url.path.startswith(PREFIX):
            self._error(404, "The requested URL was not found on this server.")
            return
        path = url.path[len(PREFIX) :]
        query = dict(urllib.parse.parse_qsl(url.query))
        if path == "instance/attributes":
            # Like the real server: a directory without its slash redirects.
            self.send_response(301)
            self.send_header("Location", PREFIX + "instance/attributes/")
            self.send_header("Metadata-Flavor", "Google")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "instance/service-accounts/default/token":
            self._token()
            return
        if path != "instance/attributes/" and path not in state.values:
            self._error(404, "The requested URL was not found on this server.")
            return
        if query.get("wait_for_change", "").lower() == "true":
            try:
                timeout = min(float(query.get("timeout_sec", MAX_WAIT_SECONDS)), MAX_WAIT_SECONDS)
            except ValueError:
                self._error(400, "Invalid timeout_sec.")
                return
            self._wait(path, query.get("last_etag"), timeout)
        with state.cond:
            etag = state.etag(path)
            if path == "instance/attributes/":
                attrs = {k: state.values["instance/attributes/" + k] for k in sorted(state.attributes)}
            else:
                value = state.values.get(path)
        if path == "instance/attributes/":
            if query.get("recursive", "").lower() == "true" and query.get("alt") == "json":
                self._send(200, json.dumps(attrs), "application/json", etag)
            else:
                self._send(200, "".join(f"{k}\n" for k in attrs), "application/text", etag)
            return
        if value is None:  # removed while waiting
            self._error(404, "The requested URL was not found on this server.")
        elif query.get("alt") == "json":
            self._send(200, json.dumps(value), "application/json", etag)
        else:
            self._send(200, value, "application/text", etag)

    do_HEAD = do_GET

    def _wait(self, path: str, last_etag: str | None, timeout: float) -> None:
        state = self.state
        deadline = time.monotonic() + timeout
        with state.cond:
            start_etag = state.etag(path)
            if last_etag is not None and last_etag != start_etag:
                return  # changed since the caller's copy: answer at once
            while not state.closing and state.etag(path) == start_etag:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                state.cond.wait(min(left, 0.5))

    def _token(self) -> None:
        token = "ya29.standin-" + secrets.token_urlsafe(24)
        with self.state.cond:
            self.state.tokens[token] = time.monotonic() + TOKEN_LIFETIME
        body = json.dumps({"access_token": token, "expires_in": TOKEN_LIFETIME, "token_type": "Bearer"})
        self._send(200, body, "application/json")

    def do_POST(self) -> None:
        self._error(405, "Method Not Allowed")

    do_PUT = do_DELETE = do_POST


class _ControlHandler(BaseHTTPRequestHandler):
    """Test control on its own port: never reachable through the metadata paths."""

    protocol_version = "HTTP/1.1"
    standin: GceMetadataStandin

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/preempt":
            self.standin.preempt()
            self._reply(200, {"preempted": "TRUE", "at": time.time()})
        elif url.path.startswith("/attributes/"):
            self.standin.set_attribute(urllib.parse.unquote(url.path[len("/attributes/") :]), body)
            self._reply(200, {"ok": True})
        elif url.path == "/fail":
            self.standin.fail_next(int(query.get("count", "1")), int(query.get("status", "503")))
            self._reply(200, {"ok": True})
        else:
            self._reply(404, {"error": "unknown control path"})

    def do_GET(self) -> None:
        if self.path == "/tokens":
            self._reply(200, {"issued": len(self.standin.state.tokens), "requests": self.standin.state.requests})
        else:
            self._reply(404, {"error": "unknown control path"})


class GceMetadataStandin:
    """The metadata stand-in: threaded server, clean shutdown, a context manager."""

    def __init__(
        self,
        attributes: dict[str, str] | None = None,
        *,
        bind: str = "127.0.0.1",
        port: int = 0,
        control_port: int | None = None,
        hostname: str = "es-embed-0.us-central1-a.c.embedstack-test.internal",
        zone: str = "us-central1-a",
        project_id: str = "embedstack-test",
        project_number: str = "123456789012",
        instance_id: str = "4520031799277581759",
    ):
        self.state = MetadataState(
            attributes or {},
            {"hostname": hostname, "zone": f"projects/{project_number}/zones/{zone}", "id": instance_id},
            project_id,
        )
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = _QuietServer((bind, port), handler)
        self._server.daemon_threads = True
        self._control: ThreadingHTTPServer | None = None
        if control_port is not None:
            control = type("Control", (_ControlHandler,), {"standin": self})
            self._control = _QuietServer((bind, control_port), control)
            self._control.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def control_url(self) -> str | None:
        if self._control is None:
            return None
        host, port = self._control.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> GceMetadataStandin:
        for server in (self._server, self._control):
            if server is not None:
                thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def close(self) -> None:
        with self.state.cond:
            self.state.closing = True
            self.state.cond.notify_all()
        for server in (self._server, self._control):
            if server is not None:
                server.shutdown()
                server.server_close()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> GceMetadataStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- test control ----------------------------------------------------------------------------

    def set_attribute(self, key: str, value: str) -> None:
        with self.state.cond:
            self.state.attributes.add(key)
        self.state.put(f"instance/attributes/{key}", value)

    def preempt(self) -> None:
        """Flip instance/preempted to TRUE, waking every wait_for_change on it."""
        self.state.put("instance/preempted", "TRUE")

    def fail_next(self, count: int, status: int = 503) -> None:
        """The next `count` metadata requests answer `status` (a flaky server)."""
        with self.state.cond:
            self.state.failures.extend([status] * count)

    def token_valid(self, token: str) -> bool:
        """Whether the token was issued by this stand-in and has not expired (for the GCS stand-in)."""
        with self.state.cond:
            expiry = self.state.tokens.get(token)
        return expiry is not None and expiry > time.monotonic()


def main() -> None:
    """Serve the metadata stand-in (and, with --storage-port, the GCS stand-in) until interrupted."""
    parser = argparse.ArgumentParser(description="GCE metadata server stand-in (tests only)")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--control-port", type=int, default=None)
    parser.add_argument("--attribute", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--attribute-file", action="append", default=[], metavar="KEY=PATH")
    parser.add_argument("--storage-port", type=int, default=None, help="also serve the GCS stand-in on this port")
    parser.add_argument("--object", action="append", default=[], metavar="gs://BUCKET/OBJECT=PATH")
    args = parser.parse_args()
    attributes = dict(a.split("=", 1) for a in args.attribute)
    for item in args.attribute_file:
        key, path = item.split("=", 1)
        attributes[key] = Path(path).read_text()
    with contextlib.ExitStack() as stack:
        standin = stack.enter_context(
            GceMetadataStandin(attributes, bind=args.bind, port=args.port, control_port=args.control_port)
        )
        print(f"metadata stand-in on {standin.url}, control on {standin.control_url}", flush=True)
        if args.storage_port is not None:
            from gcs_standin import GcsStandin

            gcs = GcsStandin(standin.token_valid, bind=args.bind, port=args.storage_port)
            for item in args.object:
                url, path = item.split("=", 1)
                bucket, name = url.removeprefix("gs://").split("/", 1)
                gcs.put_object(bucket, name, Path(path).read_bytes())
            stack.enter_context(gcs)
            print(f"storage stand-in on {gcs.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
