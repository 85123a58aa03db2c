"""The embedded store before Qdrant Edge was qdrant-client's local mode: such a store is moved over on its first
open with nothing lost, and one process at a time holds a store. The local-mode stores here are written by
embedstack's own Indexer through `QdrantClient(path=...)`, the client the default store used before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from embedstack.asgi_app import create_app
from embedstack.config import load_settings
from embedstack.errors import ConfigError
from embedstack.indexing.edge import EdgeCollections, to_filter
from embedstack.indexing.endpoint import Endpoint
from embedstack.indexing.indexer import Indexer
from embedstack.indexing.search import search
from embedstack.indexing.store import open_embedded
from fake_engine import FakeEngines
from qdrant_client import QdrantClient, models
from starlette.testclient import TestClient
from test_index_in_process import KEY, fixture_tree, index, points, run, summary_of

pytestmark = pytest.mark.fast

QUERIES = ["firewall ports", "retry with back-off", "read a yaml configuration"]


@pytest.fixture
def tree(tmp_path) -> Path:
    return fixture_tree(tmp_path / "project")


@pytest.fixture
def http():
    settings = load_settings({}, env={"EMBEDSTACK_API_KEYS": KEY})
    with TestClient(create_app(settings, engine_factory=FakeEngines())) as client:
        yield client


def write_local_mode_store(http, tree: Path, qpath: Path) -> dict[str, list[tuple[str, int, float]]]:
    """A store as `embedstack index` wrote it before (hybrid collection `embedstack`) plus one in Roo Code's layout
    (dense only); returns each query's hits from it, searched as `embedstack search` searched it."""
    endpoint = Endpoint("http://testserver/v1", KEY, None, http_client=http)
    endpoint.resolve()
    client = QdrantClient(path=str(qpath))
    try:
        Indexer(endpoint, client, "embedstack", where="local mode", progress=False).run([tree])
        client.create_collection("ws-0123456789abcdef", models.VectorParams(size=384, distance=models.Distance.COSINE))
        roo_payload = {"filePath": "a.ts", "codeChunk": "x", "startLine": 1, "endLine": 2}
        client.upsert("ws-0123456789abcdef", [models.PointStruct(id=7, vector=[0.5] * 384, payload=roo_payload)])
        return {q: [_hit(h) for h in search(endpoint, client, "embedstack", q)]
                for q in QUERIES}  # fmt: skip
    finally:
        client.close()


def _hit(h) -> dict:
    return {"file": h.file, "start_line": h.start_line, "score": h.score}


def unit(vector: list[float]) -> list[float]:
    norm = sum(v * v for v in vector) ** 0.5
    return [v / norm for v in vector]


def ranked(hits: list[dict]) -> list[tuple[float, str, int]]:
    """Hits by score, then path (chunks of equal score, such as a copied file's, come in either order)."""
    return sorted((-round(h["score"], 4), h["file"], h["start_line"]) for h in hits)


def test_a_local_mode_store_is_moved_to_qdrant_edge_with_nothing_lost(http, tree, tmp_path, capsys):
    qpath = tmp_path / "qdrant"
    before = write_local_mode_store(http, tree, qpath)
    old = QdrantClient(path=str(qpath))
    old_points = {
        name: {str(p.id): (p.payload, p.vector) for p in old.scroll(name, limit=10_000, with_vectors=True)[0]}
        for name in ("embedstack", "ws-0123456789abcdef")
    }
    old.close()
    assert (qpath / "meta.json").is_file() and len(old_points["embedstack"]) > 5

    # the first command after the upgrade moves the store over, and says so on stderr
    assert run(http, "search", QUERIES[0], "--qdrant-path", str(qpath), "--json") == 0
    captured = capsys.readouterr()
    assert "moving collection 'embedstack'" in captured.err and "local-mode-backup" in captured.err
    assert ranked(json.loads(captured.out)) == ranked(before[QUERIES[0]])

    # every point, vector and payload is there; the old files are kept aside, not deleted
    with_vectors = EdgeCollections(qpath / "edge")
    try:
        for name, expected in old_points.items():
            records = with_vectors.scroll(name, limit=10_000, with_vectors=True)[0]
            moved = {str(r.id): (r.payload, r.vector) for r in records}
            assert moved.keys() == expected.keys()
            for pid, (payload, vector) in expected.items():
                assert moved[pid][0] == payload
                # Qdrant stores Cosine vectors normalised (local mode keeps them as given): same direction
                if isinstance(vector, dict):
                    assert unit(moved[pid][1][""]) == pytest.approx(unit(vector[""]), abs=1e-6)
                    sparse = moved[pid][1]["text"]
                    assert dict(zip(sparse.indices, sparse.values, strict=True)) == pytest.approx(
                        dict(zip(vector["text"].indices, vector["text"].values, strict=True))
                    )
                else:
                    assert unit(moved[pid][1]) == pytest.approx(unit(vector), abs=1e-6)
    finally:
        with_vectors.close()
    assert not (qpath / "meta.json").exists()
    assert (qpath / "local-mode-backup" / "meta.json").is_file()
    assert (qpath / "local-mode-backup" / "collection" / "embedstack" / "storage.sqlite").is_file()

    # the moved index is complete: nothing is embedded again, and the other queries find what they found
    assert index(http, tree, qpath) == 0
    assert summary_of(capsys.readouterr().out)["embedded"] == 0
    for query in QUERIES[1:]:
        assert run(http, "search", query, "--qdrant-path", str(qpath), "--json") == 0
        assert ranked(json.loads(capsys.readouterr().out)) == ranked(before[query])


def test_an_interrupted_move_leaves_the_local_mode_store_and_the_next_open_finishes(http, tree, tmp_path, monkeypatch):
    qpath = tmp_path / "qdrant"
    write_local_mode_store(http, tree, qpath)
    old = QdrantClient(path=str(qpath))
    written = sorted(str(p.id) for p in old.scroll("embedstack", limit=10_000)[0])
    old.close()
    original = EdgeCollections.upsert
    calls = {"n": 0}

    def interrupted(self, name, points, wait=True):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, name, points, wait)

    monkeypatch.setattr(EdgeCollections, "upsert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        open_embedded(qpath)
    assert (qpath / "meta.json").is_file() and not (qpath / "edge").exists()
    monkeypatch.setattr(EdgeCollections, "upsert", original)
    store = open_embedded(qpath)  # the lock was let go; the half copy is started over
    store.close()
    assert not (qpath / "edge.migrating").exists()
    assert sorted(str(p.id) for p in points(qpath)) == written


HOLDER = """
import sys
from pathlib import Path
from embedstack.indexing.store import open_embedded
store = open_embedded(Path(sys.argv[1]))
print("open", flush=True)
sys.stdin.read()
store.close()
"""


def test_a_second_process_gets_one_line_naming_the_first(http, tree, tmp_path, capsys):
    qpath = tmp_path / "qdrant"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(qpath)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "open\n"
        assert index(http, tree, qpath) == 2
        err = capsys.readouterr().err
        assert err == (
            f"embedstack: the embedded Qdrant in {qpath} is in use by another process (pid {holder.pid}): "
            "wait for it, or use another --qdrant-path\n"
        )
        assert run(http, "search", "x", "--qdrant-path", str(qpath)) == 2
        assert f"(pid {holder.pid})" in capsys.readouterr().err
    finally:
        holder.communicate("", timeout=30)
    assert index(http, tree, qpath) == 0  # free again once the first has closed


def test_an_older_embedstack_holding_the_store_is_named_too(tmp_path):
    """qdrant-client's local mode, open in another process (an embedstack before Qdrant Edge)."""
    qpath = tmp_path / "qdrant"
    code = "import sys; from qdrant_client import QdrantClient; c = QdrantClient(path=sys.argv[1]); "
    code += "print('open', flush=True); sys.stdin.read()"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(qpath)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "open\n"
        with pytest.raises(ConfigError, match=rf"^the embedded Qdrant in {qpath} is in use by another process"):
            open_embedded(qpath)
    finally:
        holder.communicate("", timeout=30)
    assert (qpath / "meta.json").is_file()  # left as it was


def test_collection_names_that_are_not_directory_names_are_refused(http, tree, tmp_path, capsys):
    qpath = tmp_path / "qdrant"
    assert index(http, tree, qpath, "--collection", "../elsewhere") == 2
    err = capsys.readouterr().err
    assert "collection name '../elsewhere'" in err and err.count("\n") == 1
    assert not (tmp_path / "elsewhere").exists()


def test_what_the_embedded_store_cannot_translate_is_named():
    with pytest.raises(TypeError, match="MatchText"):
        to_filter(models.Filter(must=[models.FieldCondition(key="codeChunk", match=models.MatchText(text="x"))]))
