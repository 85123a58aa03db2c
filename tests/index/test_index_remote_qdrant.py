"""A deployed Qdrant's refusals, against the Qdrant stand-in (tests/standins/qdrant.py: no Qdrant binary
runs on this machine; it answers a wrong `api-key` with 401 as Qdrant does). The index and search paths
themselves run against qdrant-client's real embedded Qdrant in test_index_in_process.py."""

from __future__ import annotations

import pytest
from embedstack.cli import main
from embedstack.errors import ConfigError
from embedstack.indexing.store import QdrantTarget, open_qdrant
from standins.qdrant import QdrantCollectionsStandin

KEY = "remote-qdrant-key-0123456789"


def test_a_wrong_qdrant_key_is_named_before_anything_is_written():
    with QdrantCollectionsStandin(KEY) as standin:
        url = f"http://127.0.0.1:{standin.port}"
        with pytest.raises(ConfigError, match=r"^Qdrant at http://127\.0\.0\.1:\d+ refused the API key \(401\)$"):
            open_qdrant(QdrantTarget(url=url, api_key="wrong"))
        with pytest.raises(ConfigError, match="refused the API key"):
            open_qdrant(QdrantTarget(url=url))
        assert standin.collections == {}


def test_search_against_an_unreachable_qdrant_exits_2(capsys, monkeypatch):
    from embedstack.indexing.endpoint import Endpoint, ModelInfo

    monkeypatch.setattr(Endpoint, "resolve", lambda self: ModelInfo("m", 384, 256, True))
    assert main(["search", "x", "--qdrant-url", "http://127.0.0.1:9", "--qdrant-api-key", "k"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("embedstack: cannot reach Qdrant at http://127.0.0.1:9") and err.count("\n") == 1
