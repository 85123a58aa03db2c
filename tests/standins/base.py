"""The one HTTP server base every stand-in in this folder is built on (tests only).

A stand-in is a `StandinHandler` subclass (its routing table and its own error bodies) served by a
`StandinServer`: a threading HTTP server with optional TLS, a request log, quiet handling of
clients that hang up, and start/stop as a background thread or a context manager.

Upstream: Python's `http.server` (ThreadingHTTPServer, BaseHTTPRequestHandler; what a method
without a route answers is its 501 `Unsupported method`), `ssl` for TLS, and `cryptography` for
the self-signed certificate (the way pveproxy makes its own at first install).
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import re
import signal
import ssl
import sys
import threading
import urllib.parse
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

# (method, path regex matched in full against the raw URL path, name of the handler method);
# the named groups of the regex become the method's keyword arguments
Route = tuple[str, str, str]


@functools.cache
def _compiled(routes: tuple[Route, ...]) -> tuple[tuple[str, re.Pattern[str], str], ...]:
    return tuple((method, re.compile(pattern, re.S), name) for method, pattern, name in routes)


class StandinHandler(BaseHTTPRequestHandler):
    """Routes a request to a handler method; each stand-in overrides `guard`, `no_route` and its routes."""

    protocol_version = "HTTP/1.1"
    sys_version = ""
    routes: ClassVar[tuple[Route, ...]] = ()
    server: StandinServer
    url: urllib.parse.SplitResult
    query: dict[str, str]
    entry: dict[str, Any]

    @property
    def standin(self) -> Any:
        """The object the server serves (the stand-in's state)."""
        return self.server.standin

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log replaces the stderr lines

    def parse_request(self) -> bool:
        self.entry = {}  # a request refused before routing (bad request line) is not logged
        return super().parse_request()

    def send_response(self, code: int, message: str | None = None) -> None:
        if hasattr(self, "entry"):  # not set when the request line itself is refused
            self.entry["status"] = code
        super().send_response(code, message)

    def _dispatch(self) -> None:
        self.url = urllib.parse.urlsplit(self.path)
        self.query = dict(urllib.parse.parse_qsl(self.url.query))
        self.entry = {"method": self.command, "path": urllib.parse.unquote(self.url.path)}
        try:
            if self.command not in {method for method, _, _ in self.routes}:
                # what http.server answers for a method the handler does not define
                self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method ({self.command!r})")
                return
            if not self.guard():
                return
            for method, pattern, name in _compiled(self.routes):
                if method == self.command and (m := pattern.fullmatch(self.url.path)):
                    getattr(self, name)(**m.groupdict())
                    return
            self.no_route()
        finally:
            self.server.record(self.entry)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def guard(self) -> bool:
        """Checks that come before routing (auth, injected failures); False once it has answered."""
        return True

    def no_route(self) -> None:
        self.send_error(HTTPStatus.NOT_FOUND)

    # answers --------------------------------------------------------------------------------------

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send(
        self,
        status: int,
        body: bytes,
        content_type: str | None,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        """One complete answer; a HEAD request gets the headers only."""
        self.send_response(status, reason)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(
        self,
        status: int,
        payload: Any,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        indent: int | None = None,
    ) -> None:
        self.send(status, json.dumps(payload, indent=indent).encode(), content_type, headers)


class StandinServer(ThreadingHTTPServer):
    """A threading server for one handler class, with TLS, a request log and a background thread."""

    daemon_threads = True

    def __init__(
        self,
        handler: type[StandinHandler],
        standin: Any = None,
        *,
        bind: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        log_file: Path | None = None,
    ):
        super().__init__((bind, port), handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.standin = standin
        self.tls = tls is not None
        self.log: list[dict[str, Any]] = []  # every request: method, path, status and what the stand-in adds
        self.log_file = log_file  # the same as JSON lines, for a stand-in in another process
        self._log_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def record(self, entry: dict[str, Any]) -> None:
        with self._log_lock:
            self.log.append(entry)
            if self.log_file is not None:
                with self.log_file.open("a") as f:
                    f.write(json.dumps(entry) + "\n")

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that hangs up (a watcher stopped mid-wait) is normal here, not a traceback
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def start(self) -> StandinServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port; safe to call more than once, or before start()."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5)
            self._thread = None
        self.server_close()

    def __enter__(self) -> StandinServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


def write_certificate(
    cert_file: Path,
    key_file: Path,
    common_name: str,
    names: Sequence[str] = (),
    issuer: tuple[Any, Any] | None = None,
    ca: bool = False,
    days: int = 2,
) -> tuple[Any, Any]:
    """Write a PEM certificate and its key (P-256) for `names` (IP addresses or DNS names), issued by
    `issuer` (its certificate and key) or self-signed; returns (certificate, key) to issue others with."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        sans = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in names]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def self_signed_certificate(cert_file: Path, key_file: Path, common_name: str, days: int = 2) -> str:
    """Write a self-signed CA certificate for localhost/127.0.0.1; returns its SHA-256 fingerprint."""
    from cryptography.hazmat.primitives import hashes

    cert, _ = write_certificate(cert_file, key_file, common_name, ["localhost", "127.0.0.1"], ca=True, days=days)
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def stop_on_signal(signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> threading.Event:
    """An event that SIGTERM or SIGINT sets: the end of a stand-in run as its own process.

    Install it before announcing that the stand-in is ready, then `while not stop.wait(1): pass`.
    """
    stop = threading.Event()
    for sig in signals:
        signal.signal(sig, lambda *_: stop.set())
    return stop
