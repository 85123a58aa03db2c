"""One real `embedstack serve` process on loopback, and the constants the payload tests share.

A module of its own, not conftest.py: other test folders have a conftest too, and
`from conftest import ...` would pick whichever was imported first."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

API_KEY = "test-key-0123456789"
MODEL = "all-minilm-l6-v2"
# Request fields the bundled model's gateway refuses with 400, and what the message must name.
BAD_INPUTS = [
    ({"input": [[101, 102], []]}, "input[1] is an empty token list"),
    ({"input": []}, "empty"),
    ({"input": [[101, 999999]]}, "input[0]"),
    ({"input": ["x"] * 2049}, "2048"),
    ({"input": "x", "dimensions": 385}, "384"),
    ({"input": "x", "dimensions": 0}, "dimensions"),
    ({"input": "x", "encoding_format": "int8"}, "float, base64"),
    ({"input": [[5, -3]]}, "input[0] contains token id -3"),
    ({"input": ["x", [2**63 + 1]]}, "input[1] contains token id"),  # found by schemathesis: was a 500
    ({"input": "x", "user": {"id": 1}}, "'user' must be a string"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    """One `embedstack serve` subprocess on 127.0.0.1."""

    def __init__(
        self, tmp: Path, env: dict[str, str] | None = None, args: list[str] | None = None, python: str = sys.executable
    ):
        self.port = free_port()
        # With EMBEDSTACK_TLS_CERT (a self-signed certificate is its own CA) the gateway serves HTTPS
        cert = (env or {}).get("EMBEDSTACK_TLS_CERT")
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=cert) if cert else True
        self.url = f"{'https' if cert else 'http'}://127.0.0.1:{self.port}"
        self.log_path = tmp / f"gateway-{self.port}.log"
        full_env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            # Tests start many gateways: skip torch.compile's warm-up; `make bench` measures it.
            "EMBEDSTACK_COMPILE": "off",
            "EMBEDSTACK_PORT": str(self.port),
            **(env or {}),
        }
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [python, "-m", "embedstack.cli", "serve", *(args or [])],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 120) -> GatewayProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log}")
            try:
                if httpx.get(self.url + "/ready", timeout=1, verify=self.verify).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"gateway not ready after {timeout}s:\n{self.log}")

    def wait_exit(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
