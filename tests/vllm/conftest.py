"""One real vLLM for the module, and gateways in front of it, all on loopback and always stopped."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "payload"))

from embedstack.bench_upstream import models_file
from embedstack.vllm_cpu import VllmServer
from gateway_process import MODEL, Gateway, free_port


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    server = VllmServer(free_port(), tmp_path_factory.mktemp("vllm") / "vllm.log", MODEL)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateways(vllm: VllmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Gateway]]:
    """Two gateways in front of the same vLLM: truncation on (the default) and off."""
    tmp = tmp_path_factory.mktemp("gateways")
    models = str(models_file(tmp, vllm.url))
    started = {
        "truncating": Gateway(tmp, env={"EMBEDSTACK_MODELS": models}),
        "strict": Gateway(tmp, env={"EMBEDSTACK_MODELS": models, "EMBEDSTACK_TRUNCATE": "false"}),
    }
    try:
        yield {name: gw.wait_ready() for name, gw in started.items()}
    finally:
        for gw in started.values():
            gw.stop()
