"""Real gateway processes on loopback, started and always stopped by the fixtures."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

API_KEY = "test-key-0123456789"
MODEL = "all-minilm-l6-v2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """One `embedstack serve` subprocess on 127.0.0.1."""

    def __init__(
        self, tmp: Path, env: dict[str, str] | None = None, args: list[str] | None = None, python: str = sys.executable
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
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

    def wait_ready(self, timeout: float = 120) -> Gateway:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
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


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator:
    """Start gateways inside a test; every one is stopped when the test ends, pass or fail."""
    started: list[Gateway] = []

    def start(
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        ready: bool = True,
        python: str = sys.executable,
    ) -> Gateway:
        gw = Gateway(tmp_path, env, args, python)
        started.append(gw)
        return gw.wait_ready() if ready else gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A shared gateway with an API key and the default bundled model."""
    gw = Gateway(
        tmp_path_factory.mktemp("gw"),
        env={"EMBEDSTACK_API_KEYS": API_KEY, "EMBEDSTACK_MAX_BODY_BYTES": str(256 * 1024)},
    )
    try:
        yield gw.wait_ready()
    finally:
        gw.stop()
