"""The `index` extra's pins complete the gateway's closure, and never reach a gateway host."""

from __future__ import annotations

import pytest
from test_pins import NOT_ON_HOSTS, REPO, missing_dependencies, pins

pytestmark = pytest.mark.fast

INDEX_ONLY = {"qdrant-edge-py", "qdrant-client", "semantic-text-splitter", "openai", "portalocker"}


def test_the_index_pins_are_a_whole_closure_with_the_gateways():
    assert missing_dependencies(pins(REPO / "payload" / "requirements-index.txt")) <= NOT_ON_HOSTS


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-upstream.txt"])
def test_gateway_hosts_do_not_get_the_index_tools(name):
    assert not INDEX_ONLY & set(pins(REPO / "payload" / name))
