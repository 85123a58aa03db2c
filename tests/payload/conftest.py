"""Real gateway processes on loopback, started and always stopped by the fixtures."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_process import API_KEY, GatewayProcess


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator:
    """Start gateways inside a test; every one is stopped when the test ends, pass or fail."""
    started: list[GatewayProcess] = []

    def start(
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        ready: bool = True,
        python: str = sys.executable,
    ) -> GatewayProcess:
        gw = GatewayProcess(tmp_path, env, args, python)
        started.append(gw)
        return gw.wait_ready() if ready else gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A shared gateway with an API key and the default bundled model."""
    gw = GatewayProcess(
        tmp_path_factory.mktemp("gw"),
        # A long admission horizon: these tests are about answers, and the machine may be busy.
        env={
            "EMBEDSTACK_API_KEYS": API_KEY,
            "EMBEDSTACK_MAX_BODY_BYTES": str(256 * 1024),
            "EMBEDSTACK_MAX_QUEUE_SECONDS": "300",
        },
    )
    try:
        yield gw.wait_ready()
    finally:
        gw.stop()
