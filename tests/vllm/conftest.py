"""One real vLLM for the module, and gateways in front of it, all on loopback and always stopped."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "payload"))

from gateway_process import MODEL, GatewayProcess, free_port
from upstream_bench import models_file
from vllm_cpu import VllmServer


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    server = VllmServer(free_port(), tmp_path_factory.mktemp("vllm") / "vllm.log", MODEL)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateways(vllm: VllmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GatewayProcess]]:
    """Gateways in front of the same vLLM: truncation on (the default) and off, and one that names
    the weights vLLM serves, so it caches vLLM's answers."""
    tmp = tmp_path_factory.mktemp("gateways")
    models = str(models_file(tmp, vllm.url))
    named = str(models_file(tmp, vllm.url, weights="all-MiniLM-L6-v2@bundled"))
    started = {
        "truncating": GatewayProcess(tmp, env={"EMBEDSTACK_MODELS": models}),
        "strict": GatewayProcess(tmp, env={"EMBEDSTACK_MODELS": models, "EMBEDSTACK_TRUNCATE": "false"}),
        "caching": GatewayProcess(tmp, env={"EMBEDSTACK_MODELS": named}),
    }
    try:
        yield {name: gw.wait_ready() for name, gw in started.items()}
    finally:
        for gw in started.values():
            gw.stop()
