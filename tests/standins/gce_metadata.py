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
  /computeMetadata/v1/instance/guest-attributes/<namespace>/<key>   PUT (body = value), GET, DELETE

Guest attributes follow Google's "Set and query guest attributes"
(https://cloud.google.com/compute/docs/metadata/manage-guest-attributes): any process on the VM may PUT, GET and
DELETE `instance/guest-attributes/<namespace>/<key>` with `Metadata-Flavor: Google` and no IAM permission; outside the
VM they are read with `gcloud compute instances get-guest-attributes --query-path=<namespace>/<key>` (what
`guest_attributes` exposes here); they exist only while the instance metadata enables them (`enable-guest-attributes`
TRUE), otherwise every such request answers 403 "Guest attributes endpoint access is disabled." (the text public
metadata clients test for); namespace and key are `[A-Za-z0-9_-]+` (gcloud's `--query-path` pattern
`^([\\w\\-]+/[\\w\\-]*)?$`); Google advises small, rare writes (at most 10 queries a minute), which the stand-in does
not enforce.

As documented: a request without `Metadata-Flavor: Google` is refused with 403, and so is one
carrying `X-Forwarded-For`; every answer carries `Metadata-Flavor: Google`; values carry an
`ETag`; `?wait_for_change=true` blocks until the value changes (with `last_etag`, it answers at
once when the current ETag differs), and `timeout_sec` bounds the wait, after which the current
value is returned; `?alt=json` returns the value as JSON.

Test control: the methods set_attribute(), preempt(), fail_next(); optionally also a control
HTTP API on a separate port (POST /preempt, POST /attributes/<key> with the value as body,
POST /fail?count=N&status=S, GET /tokens) so a process in a container can be driven from outside.
Usable as a context manager, or standalone (from tests/, or with PYTHONPATH=tests):

  python -m standins.gce_metadata --bind 10.213.0.1 --port 80 --control-port 8099 \\
      --attribute embedstack-tier=embedding --attribute-file embedstack-secrets=secrets.yml \\
      --storage-port 8091 --object gs://bucket/bundle-abc.tar.gz=bundle.tar.gz
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from pathlib import Path

from standins.base import StandinHandler, StandinServer, stop_on_signal
from standins.gcs import GcsStandin

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
        self.guest_attributes: dict[str, str] = {}  # "<namespace>/<key>" -> value
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


class _Handler(StandinHandler):
    server_version = "Metadata Server for VM"
    routes = (
        *((m, PREFIX + "instance/attributes", "redirect") for m in ("GET", "HEAD")),
        *((m, PREFIX + "instance/service-accounts/default/token", "token") for m in ("GET", "HEAD")),
        *(
            (m, PREFIX + r"instance/guest-attributes/(?P<namespace>[A-Za-z0-9_-]+)/(?P<key>[A-Za-z0-9_-]+)", "guest")
            for m in ("GET", "PUT", "DELETE")
        ),
        *((m, PREFIX + "(?P<path>.*)", "value") for m in ("GET", "HEAD")),
        *((m, ".*", "not_allowed") for m in ("POST", "PUT", "DELETE")),
    )

    @property
    def state(self) -> MetadataState:
        return self.standin.state

    def _send(self, status: int, body: str, content_type: str = "application/text", etag: str | None = None) -> None:
        headers = {"Metadata-Flavor": "Google", **({"ETag": etag} if etag else {})}
        headers.update({"X-XSS-Protection": "0", "X-Frame-Options": "SAMEORIGIN"})
        self.send(status, body.encode(), content_type, headers)

    def _error(self, status: int, text: str) -> None:
        self._send(status, f"<!DOCTYPE html>\n<html><title>Error {status}</title><p>{text}</p></html>\n", "text/html")

    def guard(self) -> bool:
        guest = self.path.startswith(PREFIX + "instance/guest-attributes/")
        if self.command not in ("GET", "HEAD") and not guest:
            return True
        state = self.state
        with state.cond:
            state.requests += 1
            failure = state.failures.pop(0) if state.failures else None
        if failure is not None:
            self._error(failure, "Injected failure (stand-in test control).")
            return False
        if self.headers.get("X-Forwarded-For") is not None:
            self._error(403, "Your client does not have permission to get URL from this server.")
            return False
        if self.headers.get("Metadata-Flavor") != "Google":
            self._error(
                403,
                f"Your client does not have permission to get URL <code>{self.path}</code> from this server. "
                "Missing Metadata-Flavor:Google header.",
            )
            return False
        return True

    def no_route(self) -> None:
        self._error(404, "The requested URL was not found on this server.")

    def not_allowed(self) -> None:
        self._error(405, "Method Not Allowed")

    def redirect(self) -> None:
        # Like the real server: a directory without its slash redirects.
        self.send(301, b"", None, {"Location": PREFIX + "instance/attributes/", "Metadata-Flavor": "Google"})

    def value(self, path: str) -> None:
        state, query = self.state, self.query
        if path != "instance/attributes/" and path not in state.values:
            self.no_route()
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
            self.no_route()
        elif query.get("alt") == "json":
            self._send(200, json.dumps(value), "application/json", etag)
        else:
            self._send(200, value, "application/text", etag)

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

    def guest(self, namespace: str, key: str) -> None:
        state, name = self.state, f"{namespace}/{key}"
        body = self.read_body() if self.command == "PUT" else b""
        with state.cond:
            enabled = state.values.get("instance/attributes/enable-guest-attributes", "").upper() == "TRUE"
            if not enabled:
                value, status = None, 403
            elif self.command == "PUT":
                state.guest_attributes[name] = body.decode("utf-8", "replace")
                value, status = "", 200
            elif self.command == "DELETE":
                state.guest_attributes.pop(name, None)
                value, status = "", 200
            else:
                value = state.guest_attributes.get(name)
                status = 200 if value is not None else 404
        if status == 403:
            self._send(403, "Guest attributes endpoint access is disabled.\n")
        elif status == 404:
            self.no_route()
        else:
            self._send(200, value or "")

    def token(self) -> None:
        token = "ya29.standin-" + secrets.token_urlsafe(24)
        with self.state.cond:
            self.state.tokens[token] = time.monotonic() + TOKEN_LIFETIME
        body = json.dumps({"access_token": token, "expires_in": TOKEN_LIFETIME, "token_type": "Bearer"})
        self._send(200, body, "application/json")


class _ControlHandler(StandinHandler):
    """Test control on its own port: never reachable through the metadata paths."""

    routes = (
        ("POST", "/preempt", "preempt"),
        ("POST", "/attributes/(?P<key>.*)", "set_attribute"),
        ("POST", "/fail", "fail"),
        ("GET", "/tokens", "tokens"),
    )

    def guard(self) -> bool:
        self.body = self.read_body().decode() if self.command == "POST" else ""
        return True

    def no_route(self) -> None:
        self.send_json(404, {"error": "unknown control path"})

    def preempt(self) -> None:
        self.standin.preempt()
        self.send_json(200, {"preempted": "TRUE", "at": time.time()})

    def set_attribute(self, key: str) -> None:
        self.standin.set_attribute(urllib.parse.unquote(key), self.body)
        self.send_json(200, {"ok": True})

    def fail(self) -> None:
        self.standin.fail_next(int(self.query.get("count", "1")), int(self.query.get("status", "503")))
        self.send_json(200, {"ok": True})

    def tokens(self) -> None:
        self.send_json(200, {"issued": len(self.standin.state.tokens), "requests": self.standin.state.requests})


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
        self._server = StandinServer(_Handler, self, bind=bind, port=port)
        self._control = None
        if control_port is not None:
            self._control = StandinServer(_ControlHandler, self, bind=bind, port=control_port)

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def control_url(self) -> str | None:
        return None if self._control is None else self._control.url

    def start(self) -> GceMetadataStandin:
        for server in (self._server, self._control):
            if server is not None:
                server.start()
        return self

    def close(self) -> None:
        with self.state.cond:
            self.state.closing = True
            self.state.cond.notify_all()
        for server in (self._server, self._control):
            if server is not None:
                server.close()

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

    @property
    def guest_attributes(self) -> dict[str, str]:
        """What `gcloud compute instances get-guest-attributes` would show: "<namespace>/<key>" -> value."""
        with self.state.cond:
            return dict(self.state.guest_attributes)

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
    stop = stop_on_signal()
    with contextlib.ExitStack() as stack:
        standin = stack.enter_context(
            GceMetadataStandin(attributes, bind=args.bind, port=args.port, control_port=args.control_port)
        )
        print(f"metadata stand-in on {standin.url}, control on {standin.control_url}", flush=True)
        if args.storage_port is not None:
            gcs = GcsStandin(standin.token_valid, bind=args.bind, port=args.storage_port)
            for item in args.object:
                url, path = item.split("=", 1)
                bucket, name = url.removeprefix("gs://").split("/", 1)
                gcs.put_object(bucket, name, Path(path).read_bytes())
            stack.enter_context(gcs)
            print(f"storage stand-in on {gcs.url}", flush=True)
        while not stop.wait(1):
            pass


if __name__ == "__main__":
    main()
